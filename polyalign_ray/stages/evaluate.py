"""Evaluation as stages: ``polyalign eval`` (one model answers the stratified evaluation set; every metric) and
``polyalign compare`` (runs side by side over their seeds, with intervals and the method's claims). The metrics are
pure code in ``evaluation/``; generation runs on Ray Data actors (``distributed/batch_generation.py``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from polyalign_ray.config import PolyAlignConfig
from polyalign_ray.corpus.prepare import write_jsonl
from polyalign_ray.corpus.tables import RECORD_SCHEMA, load_split
from polyalign_ray.features import features_as_matrix
from polyalign_ray.tracking import record_stage

log = logging.getLogger(__name__)


def evaluation_records(config: PolyAlignConfig) -> list[dict[str, Any]]:
    """The stratified evaluation set of ``eval.split`` (every bucket, at most ``eval.per_bucket`` items each)."""
    from polyalign_ray.evaluation.eval_set import stratified_eval_set

    data_dir = Path(config.data.output_dir)
    records = load_split(data_dir, config.eval.split).to_pylist()
    if not records:
        raise FileNotFoundError(
            f"no {config.eval.split} records under {data_dir}: run `polyalign prepare` first"
        )
    return stratified_eval_set(records, per_bucket=config.eval.per_bucket, seed=config.eval.seed)


def train_human_references(config: PolyAlignConfig) -> dict[str, Any]:
    """Per-bucket human side of the distribution metrics, from the train split (features reused from the
    references stage when present). The same for every model evaluated on this data, so it is computed once per
    process (the pipeline evaluates up to five models in a row; 1.8 s each on the demo): the cache key holds the
    size and modification time of every file read, so rewritten data is read again."""
    data_dir = Path(config.data.output_dir).resolve()
    read = sorted(p for p in (data_dir / "train").rglob("*") if p.is_file())
    features = data_dir / "features" / "features.parquet"
    if features.is_file():
        read.append(features)
    stats = [(str(p), p.stat()) for p in read]
    signature = tuple((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats)
    return _human_references_of(data_dir, signature, config.eval.human_per_bucket, config.eval.seed)


@functools.lru_cache(maxsize=2)
def _human_references_of(
    data_dir: Path, signature: tuple[tuple[str, int, int], ...], max_per_bucket: int, seed: int
) -> dict[str, Any]:
    """:func:`train_human_references`, uncached; ``signature`` is only the cache key. Its arrays are made
    read-only, as they are shared by every evaluation of the process."""
    from polyalign_ray.evaluation.scoring import human_references

    train = load_split(data_dir, "train").to_pylist()
    features = None
    path = data_dir / "features" / "features.parquet"
    if path.is_file():
        table = pq.read_table(path)
        matrix = features_as_matrix(table)
        row_of = {key: i for i, key in enumerate(table["id"].to_pylist())}
        if all(r["id"] in row_of for r in train):
            features = matrix[[row_of[r["id"]] for r in train]]
    references = human_references(train, max_per_bucket=max_per_bucket, seed=seed, features=features)
    for bucket in references.values():
        for field in dataclasses.fields(bucket):
            value = getattr(bucket, field.name)
            if value is not None:
                value.flags.writeable = False
    return references


PREPARED_RUNS_KEPT = 8
"""Prepared runs kept per process (the pipeline's five evaluations, then its comparison of the same answers)."""
_prepared_runs: collections.OrderedDict[tuple[Any, ...], tuple[Any, Any]] = collections.OrderedDict()


def prepared_run(records: list[dict[str, Any]], predictions: list[str], human: Any, settings: Any) -> Any:
    """``scoring.prepare_run``, remembered for the last few runs of this process: the comparison prepares the
    answers each evaluation has just prepared (about 1 s per model on the demo). The key holds the items, the
    answers, the human side (by identity: it is kept alive with the entry, so its id cannot be reused) and the
    settings."""
    from polyalign_ray.evaluation.scoring import prepare_run

    key = (tuple(r["id"] for r in records), tuple(predictions), id(human), settings)
    if key not in _prepared_runs:
        _prepared_runs[key] = (human, prepare_run(records, predictions, human, settings))
        while len(_prepared_runs) > PREPARED_RUNS_KEPT:
            _prepared_runs.popitem(last=False)
    _prepared_runs.move_to_end(key)
    return _prepared_runs[key][1]


def scoring_settings(config: PolyAlignConfig) -> Any:
    """The ``eval`` section's knobs of the distribution metrics."""
    from polyalign_ray.evaluation.scoring import ScoringSettings

    cfg = config.eval
    return ScoringSettings(
        min_bucket_items=cfg.min_bucket_items,
        bng_cap=cfg.bng_cap,
        scale_floor=cfg.scale_floor,
        self_bleu_sample=cfg.self_bleu_sample,
        mauve_scaling=cfg.mauve_scaling,
        mauve_human_ratio=cfg.mauve_human_ratio,
        seed=cfg.seed,
    )


def run_eval_stage(config: PolyAlignConfig, model: str, name: str) -> dict[str, Any]:
    """``polyalign eval``: answers of ``model`` for the evaluation set (Ray Data generation actors), every metric,
    ``eval.output_dir/NAME/{predictions.jsonl, report.json}``; returns the report.

    With ``model.profile_conditioning`` the gold length bin is unknown at deployment (METHOD.md section 3), so both
    profiles are evaluated: the report's metrics use ``eval.profile_length`` (default: without the length bin) and
    ``report["other_profile"]`` holds the other one's metrics (its answers in ``predictions_other_profile.jsonl``)."""

    from polyalign_ray.distributed.batch_generation import sample_answers_with_ray
    from polyalign_ray.evaluation.scoring import score_predictions, score_prepared_run
    from polyalign_ray.schema import count_length_tokens

    cfg = config.eval
    out = Path(cfg.output_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    records = evaluation_records(config)
    table = pa.Table.from_pylist(records, schema=RECORD_SCHEMA)
    log.info(
        "eval %s: %d items in %d buckets from %s",
        name,
        len(records),
        len({r["bucket_id"] for r in records}),
        model,
    )

    def answers(include_length: bool, generation: Any = config.generation) -> list[str]:
        sampled = sample_answers_with_ray(
            table, model, generation, config.model, include_length=include_length
        )
        return [sampled[r["id"]][0] for r in records]

    predictions = answers(cfg.profile_length)
    settings = scoring_settings(config)
    human = train_human_references(config)
    report = score_prepared_run(records, prepared_run(records, predictions, human, settings))
    if config.model.profile_conditioning:
        other = answers(not cfg.profile_length)
        other_report = score_predictions(records, other, human, settings)
        report["profile"] = "oracle_length" if cfg.profile_length else "without_length"
        report["other_profile"] = {
            "profile": "without_length" if cfg.profile_length else "oracle_length",
            **{k: other_report[k] for k in ("overall", "by_language", "by_track", "by_bucket")},
        }
        write_predictions(out / "predictions_other_profile.jsonl", records, other)
    if cfg.greedy_utility:
        greedy = answers(cfg.profile_length, dataclasses.replace(config.generation, do_sample=False))
        greedy_report = score_predictions(records, greedy, {}, settings)
        report["greedy_utility"] = {k: greedy_report["overall"][k] for k in ("em", "f1", "rouge_l")}
    lengths: dict[str, list[int]] = {}
    for record, prediction in zip(records, predictions, strict=True):
        lengths.setdefault(record["bucket_id"], []).append(count_length_tokens(prediction))
    report.update({"name": name, "model": model, "split": cfg.split, "lengths": lengths})
    write_predictions(out / "predictions.jsonl", records, predictions)
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    record_stage(
        config,
        out,
        "eval",
        {key: report[key] for key in ("overall", "by_language", "by_track") if key in report},
        [out / "report.json"],
    )
    overall = report["overall"]
    log.info(
        "eval %s: F1 %.3f, BNG %s, HCR %s, C-MAUVE %s -> %s",
        name,
        overall["f1"],
        overall["bng"],
        overall["hcr"],
        overall["c_mauve"],
        out,
    )
    return report


def write_predictions(path: Path, records: list[dict[str, Any]], predictions: list[str]) -> None:
    write_jsonl(
        path,
        (
            {"id": r["id"], "bucket_id": r["bucket_id"], "prediction": p, "reference": r["response"]}
            for r, p in zip(records, predictions, strict=True)
        ),
    )


def read_predictions(folder: Path) -> dict[str, str]:
    path = folder / "predictions.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row["id"]: row["prediction"] for row in rows}


def run_folders(config: PolyAlignConfig, runs: list[str]) -> dict[str, list[Path]]:
    """Each run's evaluation folder per seed. A run is a name under ``eval.output_dir`` (with ``pipeline.seeds``:
        under each seed's evaluation folder), a folder (one seed), or ``NAME=DIR1,DIR2,...`` (a run's seeds by hand; for
    folders whose names hold a comma, call :func:`run_compare` with a mapping)."""
    from polyalign_ray.stages.pipeline import seed_config

    out: dict[str, list[Path]] = {}
    for run in runs:
        if Path(run).is_dir() and (Path(run) / "report.json").is_file():
            out[Path(run).name] = [Path(run)]
        elif "=" in run:
            name, folders = run.split("=", 1)
            out[name] = [Path(f) for f in folders.split(",") if f]
        elif config.pipeline.seeds:
            out[run] = [Path(seed_config(config, s).eval.output_dir) / run for s in config.pipeline.seeds]
        else:
            out[run] = [Path(config.eval.output_dir) / run]
    for name, folders in out.items():
        for folder in folders:
            if not (folder / "report.json").is_file():
                raise FileNotFoundError(
                    f"no report for {name!r} at {folder / 'report.json'}: run `polyalign eval --name {name}` "
                    "(or the pipeline) first"
                )
    return out


def run_compare(
    config: PolyAlignConfig,
    runs: list[str] | dict[str, list[Path]],
    *,
    claims: Sequence[tuple[str, str, str]] | None = None,
) -> Path:
    """``polyalign compare``: the runs side by side over their seeds (same evaluation set required), every metric
    with a 95% interval and the method's claims as paired differences: report.md, plots and comparison.json in
    ``eval.output_dir/report/``; returns the path of report.md. ``runs``: names or folders (:func:`run_folders`), or
    a mapping of run name to its evaluation folders per seed. ``claims``: other (A, B, label) pairs than the
    method's (``comparison.CLAIMS``)."""
    from polyalign_ray.evaluation.comparison import compare_runs
    from polyalign_ray.evaluation.report import plot_comparison, render_comparison
    from polyalign_ray.schema import count_length_tokens

    folders = (
        run_folders(config, runs)
        if isinstance(runs, list)
        else {k: [Path(f) for f in v] for k, v in runs.items()}
    )
    reports = {
        name: [json.loads((f / "report.json").read_text(encoding="utf-8")) for f in paths]
        for name, paths in folders.items()
    }
    item_order = [item["id"] for item in next(iter(reports.values()))[0]["items"]]
    for name, seeds in reports.items():
        for report in seeds:
            if sorted(item["id"] for item in report["items"]) != sorted(item_order):
                raise ValueError(
                    f"{name} was evaluated on other items than the other runs; evaluate them with the same data "
                    "and eval.*"
                )
    by_id = {r["id"]: r for r in evaluation_records(config)}
    missing = [key for key in item_order if key not in by_id]
    if missing:
        raise ValueError(
            f"{len(missing)} evaluated item(s) are not in the evaluation set of {config.data.output_dir}"
        )
    records = [by_id[key] for key in item_order]
    human = train_human_references(config)
    settings = scoring_settings(config)
    prepared = {}
    for name, paths in folders.items():
        prepared[name] = []
        for folder in paths:
            answers = read_predictions(folder)
            prepared[name].append(
                prepared_run(records, [answers[key] for key in item_order], human, settings)
            )
    comparison = compare_runs(
        prepared,
        samples=config.eval.bootstrap_samples,
        level=config.eval.interval_level,
        seed=config.eval.seed,
        **({"claims": claims} if claims is not None else {}),
    )
    comparison["models"] = {name: [r["model"] for r in seeds] for name, seeds in reports.items()}
    comparison["other_profile"] = {
        name: [r["other_profile"] for r in seeds if "other_profile" in r] for name, seeds in reports.items()
    }
    out = Path(config.eval.output_dir) / "report"
    lengths = {
        name: {
            bucket: [x for report in seeds for x in report.get("lengths", {}).get(bucket, [])]
            for bucket in seeds[0].get("lengths", {})
        }
        for name, seeds in reports.items()
    }
    human_lengths: dict[str, list[int]] = {}
    for record in records:
        human_lengths.setdefault(record["bucket_id"], []).append(count_length_tokens(record["response"]))
    plots = plot_comparison(comparison, lengths, human_lengths, out / "plots")
    (out / "report.md").write_text(render_comparison(comparison, plots), encoding="utf-8")
    (out / "comparison.json").write_text(
        json.dumps(comparison, indent=1, ensure_ascii=False), encoding="utf-8"
    )
    record_stage(config, out, "compare", {}, [out / "report.md", out / "comparison.json", out / "plots"])
    return out / "report.md"
