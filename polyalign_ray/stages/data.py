"""The data stages: ``polyalign prepare`` (inputs, or the built-in corpus, or a paper-corpus recipe -> records,
quarantine, duplicates, manifest) and ``polyalign references`` (features and per-bucket human references from the
train split), and the base model every later stage starts from.

Each stage reads the previous stage's files and writes its own under the data directory, so stages can be run one
by one or chained (``polyalign pipeline``). The Ray Data passes are in ``distributed/data.py``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from polyalign_ray.bucket_report import bucket_rows, empty_buckets, render_bucket_table
from polyalign_ray.config import PolyAlignConfig
from polyalign_ray.corpus.builtin import builtin_corpus_rows
from polyalign_ray.corpus.normalize import NormalizeSettings
from polyalign_ray.corpus.prepare import prepare_in_process, write_jsonl
from polyalign_ray.corpus.readers import discover_read_units
from polyalign_ray.corpus.recipes.loading import source_read_units
from polyalign_ray.corpus.tables import load_split
from polyalign_ray.features import features_as_matrix
from polyalign_ray.models import write_builtin_base_model
from polyalign_ray.references import build_references
from polyalign_ray.schema import SPLITS

log = logging.getLogger(__name__)


def materialize_builtin_corpus(config: PolyAlignConfig) -> Path:
    """Write the built-in bilingual corpus as an ordinary JSONL input under ``DATA_DIR/inputs/``."""
    path = Path(config.data.output_dir) / "inputs" / "builtin_corpus.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = builtin_corpus_rows(max_per_bucket=config.data.builtin_max_per_bucket, seed=config.data.seed)
    count = write_jsonl(path, rows)
    log.info("built-in bilingual corpus: %d rows -> %s", count, path)
    return path


def run_prepare(config: PolyAlignConfig, *, engine: str = "ray") -> dict[str, Any]:
    """``polyalign prepare``: inputs (or the built-in corpus) -> records, quarantine, duplicates, manifest.

    With ``data.source`` the inputs are that recipe's dataset (loaded from the Hub when ``data.inputs`` is empty)
    and every row goes through the recipe."""
    if config.data.source:
        inputs_dir = Path(config.data.output_dir) / "inputs" / config.data.source
        units = source_read_units(
            config.data.source, config.data.inputs, inputs_dir, max_row_chars=config.data.max_row_chars
        )
    else:
        inputs = list(config.data.inputs) or [str(materialize_builtin_corpus(config))]
        units = discover_read_units(inputs)
    settings = NormalizeSettings.from_data_config(config.data)
    log.info("prepare: %d input unit(s) -> %s (engine: %s)", len(units), config.data.output_dir, engine)
    if engine == "ray":
        from polyalign_ray.distributed.data import prepare_with_ray

        manifest = prepare_with_ray(
            units, settings, config.data.output_dir, max_row_chars=config.data.max_row_chars
        )
    else:
        manifest = prepare_in_process(
            units, settings, config.data.output_dir, max_row_chars=config.data.max_row_chars
        )
    log.info(
        "prepare: read %d = kept %d + quarantined %d + duplicates %d (expanded %d)",
        manifest["read"],
        manifest["kept"],
        manifest["quarantined"],
        manifest["duplicates"],
        manifest["expanded"],
    )
    return manifest


def run_references(config: PolyAlignConfig) -> str:
    """``polyalign references``: features of every record (Ray Data), per-bucket references from train only,
    and the bucket table (returned, and written to ``DATA_DIR/buckets.md``)."""
    from polyalign_ray.distributed.data import compute_features_with_ray

    data_dir = Path(config.data.output_dir)
    manifest_path = data_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: run `polyalign prepare` for {data_dir} first")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    table = compute_features_with_ray(data_dir, SPLITS)
    (data_dir / "features").mkdir(exist_ok=True)
    pq.write_table(table, data_dir / "features" / "features.parquet")
    features = features_as_matrix(table)
    buckets = table["bucket_id"].to_pylist()
    splits = table["split"].to_pylist()
    cfg = config.references
    references = build_references(
        features,
        buckets,
        splits,
        quantile_levels=cfg.quantiles,
        min_count=cfg.min_count,
        band=cfg.band,
        scale_floor=cfg.scale_floor,
    )
    references.save(data_dir / "references.json", resolutions=set(buckets))
    train = np.asarray([s == "train" for s in splits])
    train_buckets = [b for b, t in zip(buckets, train, strict=True) if t]
    distances = references.distance(features[train], train_buckets)
    mean_distance = {
        b: float(distances[[i for i, tb in enumerate(train_buckets) if tb == b]].mean())
        for b in set(train_buckets)
    }
    rows = bucket_rows(
        manifest, buckets, splits, table["length_tokens"].to_pylist(), mean_distance, references
    )
    rendered = render_bucket_table(rows, empty_buckets(manifest))
    (data_dir / "buckets.md").write_text("# Buckets\n\n" + rendered, encoding="utf-8")
    log.info("references: %d nodes -> %s", len(references.counts), data_dir / "references.json")
    return rendered


def corpus_texts(data_dir: Path) -> list[str]:
    """Every text of the train split (prompts, contexts, history turns, responses): what the built-in tokenizer is
    trained on."""
    table = load_split(data_dir, "train")
    texts = [*table["prompt"].to_pylist(), *table["response"].to_pylist(), *table["context"].to_pylist()]
    texts += [turn["content"] for history in table["history"].to_pylist() for turn in history or []]
    return [t for t in texts if t]


def ensure_base_model(config: PolyAlignConfig) -> str:
    """The policy's starting point: ``model.name_or_path`` (a ``package:NAME`` resolved to the package's folder;
    a GGUF file converted once to ``DATA_DIR/base_model_<stem>``), or the built-in model written once to
    ``DATA_DIR/base_model`` (its tokenizer is trained on the train split, so it belongs with the data)."""
    from polyalign_ray.models import convert_gguf_model, model_location

    model = config.model
    if model.name_or_path:
        location = model_location(model.name_or_path)
        if not model.gguf_file:
            return location
        out = Path(config.data.output_dir) / f"base_model_{Path(model.gguf_file).stem}"
        return str(convert_gguf_model(location, model.gguf_file, model, out))
    data_dir = Path(config.data.output_dir)
    return str(write_builtin_base_model(config.model, corpus_texts(data_dir), data_dir / "base_model"))
