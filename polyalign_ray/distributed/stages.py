"""The data-plane stages as the CLI and the pipeline run them: ``prepare`` and ``references``.

Each stage reads the previous stage's files and writes its own under the data directory, so stages can be run
one by one (``polyalign prepare``, ``polyalign references``) or chained (``polyalign pipeline``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polyalign_ray.bucket_report import bucket_rows, empty_buckets, render_bucket_table
from polyalign_ray.config import PolyAlignConfig, config_to_dict
from polyalign_ray.corpus.builtin import builtin_corpus_rows
from polyalign_ray.corpus.normalize import NormalizeSettings
from polyalign_ray.corpus.prepare import prepare_in_process, write_jsonl
from polyalign_ray.corpus.readers import discover_read_units
from polyalign_ray.corpus.recipes.loading import source_read_units
from polyalign_ray.corpus.tables import RECORD_SCHEMA, load_split
from polyalign_ray.features import features_as_matrix
from polyalign_ray.models import write_builtin_base_model
from polyalign_ray.references import build_references
from polyalign_ray.schema import SPLITS, stable_fraction
from polyalign_ray.training_runs import (
    TrainingRun,
    finish_training_run,
    folder_identity,
    open_training_run,
    training_fingerprint,
)

log = logging.getLogger(__name__)

SFT_SECTIONS = ("data", "references", "model", "sampler", "sft")
"""Config sections that decide an SFT run (with the base model and the data manifest as inputs)."""
HDPO_SECTIONS = ("data", "references", "model", "generation", "hdpo")
"""Config sections that decide an HDPO run (with the policy, the critic bundle and the SFT samples as inputs)."""


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


def open_stage_run(
    config: PolyAlignConfig, section: str, sections: tuple[str, ...], inputs: dict[str, str], **kwargs: Any
) -> TrainingRun:
    """The training run of stage ``section`` in its output folder: continued when an interrupted run of the same
    fingerprint is there, else a new one (``training_runs``); says which on the log."""
    data = config_to_dict(config)
    fingerprint = training_fingerprint({name: data[name] for name in sections}, section, inputs)
    output_dir = Path(getattr(config, section).output_dir)
    run = open_training_run(output_dir, section, fingerprint, **kwargs)
    log.info("%s: %s (run %s)", section, run.reason, run.name)
    return run


def run_sft_stage(config: PolyAlignConfig, *, resume_from: str = "", fresh: bool = False) -> dict[str, Any]:
    """``polyalign sft``: Bucket-Aware SFT on Ray Train + DeepSpeed; returns the summary. An interrupted run with
    the same settings is continued; anything else (``fresh``, changed settings or inputs, a finished run) trains
    from the start."""
    from polyalign_ray.distributed.train import run_sft_with_ray

    model_path = ensure_base_model(config)
    run = open_stage_run(
        config,
        "sft",
        SFT_SECTIONS,
        {
            "base_model": folder_identity(model_path),
            "manifest": folder_identity(Path(config.data.output_dir) / "manifest.json"),
        },
        fresh=fresh,
        resume_from=resume_from,
    )
    summary = run_sft_with_ray(config, model_path, run_name=run.name, resume_from=run.resume_from)
    finish_training_run(config.sft.output_dir, run)
    log.info(
        "sft: %d steps, loss %.3f -> %.3f, %.0f tokens/s; model in %s",
        summary["steps"],
        summary["first_loss"] or float("nan"),
        summary["final_loss"] or float("nan"),
        summary["tokens_per_s"],
        summary["final_model"],
    )
    return summary


def critic_records(config: PolyAlignConfig) -> pa.Table:
    """The prompts the critic learns from: train records (at most ``critic.max_prompts``, a seeded choice) and
    every val record (held out for the quality gates)."""
    data_dir = Path(config.data.output_dir)
    train = load_split(data_dir, "train")
    if config.critic.max_prompts and train.num_rows > config.critic.max_prompts:
        order = sorted(
            range(train.num_rows), key=lambda i: stable_fraction(train["id"][i].as_py(), config.critic.seed)
        )
        train = train.take(sorted(order[: config.critic.max_prompts]))
    return pa.concat_tables([train, load_split(data_dir, "val")])


def run_critic_stage(config: PolyAlignConfig) -> dict[str, Any]:
    """``polyalign critic``: sample the SFT policy for the critic's prompts (Ray Data), compute distance targets,
    train, check the gates, save the bundle. Returns the summary; raises CriticQualityError if a gate fails."""
    from polyalign_ray.critic.corruptions import corrupt_records
    from polyalign_ray.critic.encoders import FrozenLMEncoder
    from polyalign_ray.critic.train import (
        CriticQualityError,
        build_critic_examples,
        save_critic_bundle,
        train_critic,
    )
    from polyalign_ray.distributed.generate import sample_answers_with_ray
    from polyalign_ray.models import load_causal_lm, load_tokenizer
    from polyalign_ray.references import ReferenceSet

    cfg = config.critic
    data_dir = Path(config.data.output_dir)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    policy = cfg.policy or str(Path(config.sft.output_dir) / "final")
    if not Path(policy).exists() and not cfg.policy:
        raise FileNotFoundError(f"no SFT model at {policy}: run `polyalign sft` first or set critic.policy")
    references = ReferenceSet.load(data_dir / "references.json")
    records = critic_records(config)
    log.info(
        "critic: sampling %d answer(s) for %d prompts from %s",
        cfg.samples_per_prompt,
        records.num_rows,
        policy,
    )
    samples = sample_answers_with_ray(
        records, policy, config.generation, config.model, samples_per_record=cfg.samples_per_prompt
    )
    write_jsonl(
        out / "samples.jsonl",
        ({"id": key, "samples": values} for key, values in sorted(samples.items())),
    )
    rows = records.to_pylist()
    corrupted = corrupt_records(
        rows, kinds=cfg.corruptions, per_record=cfg.corruptions_per_prompt, seed=cfg.seed
    )
    write_jsonl(out / "corrupted.jsonl", (dataclasses.asdict(c) for c in corrupted))
    examples = build_critic_examples(rows, samples, references, corrupted)
    encoder, encoder_model = None, ""
    if cfg.encoder == "frozen_lm":
        encoder_model = cfg.encoder_model or policy
        encoder = FrozenLMEncoder(load_causal_lm(encoder_model, config.model), load_tokenizer(encoder_model))
    log.info("critic: training on %d examples (%s encoder)", len(examples), cfg.encoder)
    model, meta, summary = train_critic(examples, cfg, encoder=encoder, encoder_model=encoder_model)
    summary["policy"] = policy
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    if not summary["gates_passed"]:
        raise CriticQualityError(
            "critic failed its quality gates (nothing saved but summary.json): "
            + "; ".join(summary["gate_failures"])
        )
    save_critic_bundle(out, model, meta, summary, references)
    log.info(
        "critic: held-out Spearman %.3f, human<model ranking accuracy %.3f, spread ratio %.2f -> %s",
        summary["heldout_spearman"],
        summary["heldout_ranking_accuracy_human_below_model"],
        summary["heldout_spread_ratio"],
        out,
    )
    return summary


def run_hdpo_stage(config: PolyAlignConfig, *, resume_from: str = "", fresh: bool = False) -> dict[str, Any]:
    """``polyalign hdpo``: HDPO from the SFT policy (the frozen reference too) with the critic's distances,
    offline or online (``hdpo.mode``); returns the summary. Continued or started over as SFT is."""
    from polyalign_ray.distributed.hdpo import run_hdpo_with_ray

    hdpo = config.hdpo
    policy = hdpo.policy or str(Path(config.sft.output_dir) / "final")
    if not hdpo.policy and not Path(policy).exists():
        raise FileNotFoundError(f"no SFT model at {policy}: run `polyalign sft` first or set hdpo.policy")
    critic_dir = hdpo.critic or config.critic.output_dir
    if not (Path(critic_dir) / "critic.json").is_file():
        raise FileNotFoundError(
            f"no critic bundle in {critic_dir}: run `polyalign critic` first or set hdpo.critic"
        )
    samples = hdpo.samples or str(Path(config.critic.output_dir) / "samples.jsonl")
    run = open_stage_run(
        config,
        "hdpo",
        HDPO_SECTIONS,
        {
            "policy": folder_identity(policy),
            "critic": folder_identity(critic_dir),
            "samples": folder_identity(samples) if hdpo.mode == "offline" else "",
            "manifest": folder_identity(Path(config.data.output_dir) / "manifest.json"),
        },
        fresh=fresh,
        resume_from=resume_from,
    )
    summary = run_hdpo_with_ray(config, policy, critic_dir, run_name=run.name, resume_from=run.resume_from)
    finish_training_run(hdpo.output_dir, run)
    last = summary.get("last") or {}
    log.info(
        "hdpo (%s): %d steps, reward accuracy %.2f, margin %.3f, expected distance %.3f; model in %s",
        hdpo.mode,
        summary["steps"],
        last.get("rewards/accuracy", float("nan")),
        last.get("rewards/margins", float("nan")),
        last.get("distance/expected", float("nan")),
        summary["final_model"],
    )
    return summary


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
    references stage when present)."""
    from polyalign_ray.evaluation.scoring import human_references

    data_dir = Path(config.data.output_dir)
    train = load_split(data_dir, "train").to_pylist()
    features = None
    path = data_dir / "features" / "features.parquet"
    if path.is_file():
        table = pq.read_table(path)
        matrix = features_as_matrix(table)
        row_of = {key: i for i, key in enumerate(table["id"].to_pylist())}
        if all(r["id"] in row_of for r in train):
            features = matrix[[row_of[r["id"]] for r in train]]
    return human_references(
        train, max_per_bucket=config.eval.human_per_bucket, seed=config.eval.seed, features=features
    )


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

    from polyalign_ray.distributed.generate import sample_answers_with_ray
    from polyalign_ray.evaluation.scoring import score_predictions
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
    report = score_predictions(records, predictions, human, settings)
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
    under each seed's evaluation folder), a folder (one seed), or ``NAME=DIR1,DIR2,...`` (a run's seeds by hand)."""
    from polyalign_ray.distributed.pipeline import seed_config

    out: dict[str, list[Path]] = {}
    for run in runs:
        if "=" in run:
            name, folders = run.split("=", 1)
            out[name] = [Path(f) for f in folders.split(",") if f]
        elif Path(run).is_dir() and (Path(run) / "report.json").is_file():
            out[Path(run).name] = [Path(run)]
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


def run_compare(config: PolyAlignConfig, runs: list[str]) -> Path:
    """``polyalign compare``: the runs side by side over their seeds (same evaluation set required), every metric
    with a 95% interval and the method's claims as paired differences: report.md, plots and comparison.json in
    ``eval.output_dir/report/``; returns the path of report.md."""
    from polyalign_ray.evaluation.comparison import compare_runs
    from polyalign_ray.evaluation.report import plot_comparison, render_comparison
    from polyalign_ray.evaluation.scoring import prepare_run
    from polyalign_ray.schema import count_length_tokens

    folders = run_folders(config, runs)
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
            prepared[name].append(prepare_run(records, [answers[key] for key in item_order], human, settings))
    comparison = compare_runs(
        prepared,
        samples=config.eval.bootstrap_samples,
        level=config.eval.interval_level,
        seed=config.eval.seed,
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
    return out / "report.md"


def read_rows(path: Path) -> pa.Table:
    """Rows to score: a JSONL/JSON file or a Parquet file/folder with ``bucket_id`` and ``response`` (or ``text``)."""
    if path.is_dir() or path.suffix == ".parquet":
        return pa.concat_tables(
            [pq.read_table(p) for p in ([path] if path.is_file() else sorted(path.glob("*.parquet")))]
        )
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return pa.Table.from_pylist(rows)


def run_score(config: PolyAlignConfig, critic_dir: str, input_path: str, output_path: str) -> int:
    """``polyalign score``: critic distances for every row of a file, through the actor pool; returns the count."""
    from polyalign_ray.critic.scorer import SCORE_COLUMN
    from polyalign_ray.distributed.critic_pool import CriticPool

    table = read_rows(Path(input_path))
    text_column = "response" if "response" in table.column_names else "text"
    missing = {text_column, "bucket_id"} - set(table.column_names)
    if missing:
        raise ValueError(
            f"{input_path}: rows need 'bucket_id' and 'response' (or 'text'); missing {sorted(missing)}"
        )
    cfg = config.critic
    with CriticPool(
        critic_dir,
        num_actors=cfg.num_actors,
        max_in_flight=cfg.max_in_flight,
        num_cpus=cfg.actor_num_cpus,
        num_gpus=cfg.actor_num_gpus,
    ) as pool:
        scores = pool.score(table[text_column].to_pylist(), table["bucket_id"].to_pylist())
    rows = table.append_column(SCORE_COLUMN, pa.array(scores)).to_pylist()
    write_jsonl(Path(output_path), rows)
    return len(rows)
