"""``polyalign``: the command line.

Every subcommand takes ``--config FILE.yaml`` and any number of dotted overrides (``sampler.alpha=0.5``). The
configuration is validated before Ray starts, so a typo costs a second, not a cluster allocation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polyalign_ray.config import ConfigError, PolyAlignConfig, load_config
from polyalign_ray.corpus.readers import InputError
from polyalign_ray.corpus.recipes import RECIPES

log = logging.getLogger("polyalign")

QUIET_DEFAULTS = {
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Writing model shards" bars, on every save
}
# With the built-in model or a local model folder nothing needs a hub, so nothing may try one. A model given by
# hub name (real clusters) leaves these unset so transformers can download it.
OFFLINE_DEFAULTS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def apply_environment_defaults(config: PolyAlignConfig) -> None:
    """Quiet defaults always; offline defaults unless the model is named by a hub id or a source recipe's dataset
    is to be loaded from the hub (``data.source`` without ``data.inputs``)."""
    names = [config.model.name_or_path, config.critic.policy, config.critic.encoder_model, config.hdpo.policy]
    hub_names = [n for n in names if n and not n.startswith("package:") and not os.path.exists(n)]
    if config.data.source and not config.data.inputs:
        hub_names.append(config.data.source)
    for key, value in {**QUIET_DEFAULTS, **({} if hub_names else OFFLINE_DEFAULTS)}.items():
        os.environ.setdefault(key, value)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file mirroring polyalign_ray/configs/default.yaml")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. sampler.alpha=0.5"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polyalign", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, and Ray's own messages on the console"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    prepare = sub.add_parser("prepare", help="corpus files -> bucketed, deduplicated, split records")
    prepare.add_argument("--input", action="append", default=[], help="file or folder (repeatable)")
    prepare.add_argument("--output", help="data directory (data.output_dir)")
    prepare.add_argument(
        "--source",
        metavar="NAME",
        help="a paper-corpus recipe (data.source): the inputs are that dataset's rows, or without --input it is "
        f"loaded from the Hugging Face Hub; one of {', '.join(RECIPES)}",
    )
    prepare.add_argument(
        "--engine", choices=["ray", "local"], default="ray", help="Ray Data (default) or one local process"
    )
    _add_common(prepare)

    references = sub.add_parser("references", help="features and per-bucket human references (train only)")
    references.add_argument("--data", help="data directory written by prepare (data.output_dir)")
    _add_common(references)

    sft = sub.add_parser("sft", help="Bucket-Aware SFT on Ray Train with DeepSpeed ZeRO workers")
    sft.add_argument("--data", help="data directory written by prepare (data.output_dir)")
    sft.add_argument("--output", help="SFT output directory (sft.output_dir)")
    sft.add_argument("--resume-from", default="", help="a checkpoint folder to continue from")
    _add_common(sft)

    critic = sub.add_parser("critic", help="train the critic on human and SFT answers (with quality gates)")
    critic.add_argument("--data", help="data directory (data.output_dir)")
    critic.add_argument("--output", help="critic bundle directory (critic.output_dir)")
    _add_common(critic)

    hdpo = sub.add_parser("hdpo", help="HDPO from the SFT policy with critic distances (offline or online)")
    hdpo.add_argument("--data", help="data directory (data.output_dir)")
    hdpo.add_argument("--output", help="HDPO output directory (hdpo.output_dir)")
    hdpo.add_argument("--mode", choices=["offline", "online"], help="hdpo.mode (default offline)")
    hdpo.add_argument("--resume-from", default="", help="a checkpoint folder to continue from")
    _add_common(hdpo)

    evaluate = sub.add_parser(
        "eval", help="answers of a model on the stratified test set, every metric, report.json"
    )
    evaluate.add_argument("--model", required=True, help="HF folder (e.g. runs/demo/sft/final) or hub name")
    evaluate.add_argument("--name", help="run name in the report (default: the model folder's parent name)")
    evaluate.add_argument("--data", help="data directory (data.output_dir)")
    evaluate.add_argument("--output", help="evaluation directory (eval.output_dir)")
    _add_common(evaluate)

    compare = sub.add_parser(
        "compare", help="several evaluated runs side by side: report.md with tables and plots"
    )
    compare.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run names under eval.output_dir (with pipeline.seeds: under every seed's folder), evaluation folders, "
        "or NAME=DIR1,DIR2 (one run's seeds)",
    )
    compare.add_argument("--data", help="data directory (data.output_dir)")
    compare.add_argument("--output", help="evaluation directory (eval.output_dir)")
    compare.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    compare.add_argument("--config", help="YAML file mirroring polyalign_ray/configs/default.yaml")

    score = sub.add_parser("score", help="critic distances for a file of (response, bucket_id) rows")
    score.add_argument("--critic", required=True, help="critic bundle directory")
    score.add_argument(
        "--input", required=True, help="JSONL/JSON/Parquet rows with response (or text) and bucket_id"
    )
    score.add_argument("--output", required=True, help="JSONL to write, each row with critic_distance added")
    _add_common(score)

    pipeline = sub.add_parser("pipeline", help="the whole chain; with no arguments, the embedded default")
    pipeline.add_argument("--output", help="run directory (default runs/demo)")
    pipeline.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="train and evaluate every model with seeds 0..N-1 (pipeline.seeds); the report then has intervals "
        "over seeds and test items",
    )
    _add_common(pipeline)

    sweep = sub.add_parser(
        "sweep",
        help="Ray Tune trials over sweep.space (dotted keys); table, best.yaml and plot of the objective",
    )
    sweep.add_argument("--output", help="sweep directory (sweep.output_dir)")
    _add_common(sweep)

    submit = sub.add_parser(
        "submit", help="run a job spec (jobs/*.yaml) on a Ray cluster through its job server"
    )
    submit.add_argument(
        "spec", metavar="SPEC", help="job spec, e.g. jobs/hdpo.yaml (its first lines say what runs)"
    )
    _add_job_address(submit)
    submit.add_argument(
        "--working-dir", help="folder shipped to the cluster (default: the checkout that holds SPEC)"
    )
    submit.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass this variable from your environment to the job (repeatable), e.g. --env HF_TOKEN",
    )
    submit.add_argument(
        "--pip", action="append", default=[], metavar="REQUIREMENT", help="extra pip package for the job"
    )
    submit.add_argument("--submission-id", default="", help="job id (default: polyalign-SPEC-TIME-XXXX)")
    submit.add_argument("--follow", action="store_true", help="stream the logs until the job ends")
    submit.add_argument(
        "--dry-run", action="store_true", help="print the equivalent `ray job submit` line, submit nothing"
    )

    job = sub.add_parser("job", help="logs, status or stop of jobs submitted to a Ray cluster")
    job_sub = job.add_subparsers(dest="job_command", required=True)
    logs = job_sub.add_parser("logs", help="a job's output so far (--follow: until it ends)")
    logs.add_argument("job_id", metavar="JOB_ID")
    logs.add_argument("--follow", action="store_true", help="stream new output until the job ends")
    _add_job_address(logs)
    stop = job_sub.add_parser("stop", help="stop a running job and wait until it has stopped")
    stop.add_argument("job_id", metavar="JOB_ID")
    _add_job_address(stop)
    status = job_sub.add_parser("status", help="one job's status, or every job of the cluster")
    status.add_argument("job_id", metavar="JOB_ID", nargs="?", default="")
    _add_job_address(status)

    show = sub.add_parser("config", help="print the effective configuration as YAML")
    shown = show.add_mutually_exclusive_group()
    shown.add_argument("--explain", action="store_true", help="each key's help as a comment above it")
    shown.add_argument(
        "--markdown", action="store_true", help="the reference table of every key (docs/configuration.md)"
    )
    _add_common(show)
    return parser


def _add_job_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default="",
        help="Ray job server, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS, then the spec's ray.address)",
    )


def _config(args: argparse.Namespace, extra: Sequence[tuple[str, Any]] = ()) -> PolyAlignConfig:
    """Flags first (typed values, taken as they are), then the dotted ``KEY=VALUE`` overrides (parsed as YAML)."""
    config = load_config(args.config, [*extra, *args.overrides])
    apply_environment_defaults(config)
    return config


FLAG_KEYS = {
    "prepare": {"output": "data.output_dir", "source": "data.source"},
    "references": {"data": "data.output_dir"},
    "sft": {"data": "data.output_dir", "output": "sft.output_dir"},
    "critic": {"data": "data.output_dir", "output": "critic.output_dir"},
    "hdpo": {"data": "data.output_dir", "output": "hdpo.output_dir", "mode": "hdpo.mode"},
    "eval": {"data": "data.output_dir", "output": "eval.output_dir"},
    "compare": {"data": "data.output_dir", "output": "eval.output_dir"},
    "sweep": {"output": "sweep.output_dir"},
}
"""Which config key each command's flag sets."""
PIPELINE_FOLDERS = ("data", "sft", "critic", "hdpo", "eval")


def flag_overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The command's flags as typed (key, value) overrides: a path stays the string it is (``runs/exp #2``,
    ``off``, ``null``, ``2024``), where a ``KEY=VALUE`` string would be parsed as YAML."""
    out = [
        (key, getattr(args, flag))
        for flag, key in FLAG_KEYS.get(args.command, {}).items()
        if getattr(args, flag)
    ]
    if args.verbose:
        out.append(("ray.console", "full"))
    if args.command == "prepare" and args.input:
        out.append(("data.inputs", list(args.input)))
    if args.command == "pipeline":
        if args.output:
            out += [(f"{s}.output_dir", os.path.join(args.output, s)) for s in PIPELINE_FOLDERS]
        if args.seeds is not None:
            if args.seeds < 1:
                raise ConfigError([f"--seeds must be >= 1, got {args.seeds}"])
            out.append(("pipeline.seeds", list(range(args.seeds))))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if args.command == "submit":
            return _run_submit(args)
        if args.command == "job":
            return _run_job(args)
        config = _config(args, flag_overrides(args))
        if args.command == "prepare":
            return _run_prepare(config, args.engine)
        if args.command == "references":
            return _run_references(config)
        if args.command == "sft":
            return _run_sft(config, args.resume_from)
        if args.command == "critic":
            return _run_critic(config)
        if args.command == "hdpo":
            return _run_hdpo(config, args.resume_from)
        if args.command == "eval":
            name = args.name or Path(args.model).resolve().parent.name or "model"
            return _run_eval(config, args.model, name)
        if args.command == "compare":
            return _run_compare(config, args.runs)
        if args.command == "score":
            return _run_score(config, args.critic, args.input, args.output)
        if args.command == "pipeline":
            return _run_pipeline(config)
        if args.command == "sweep":
            return _run_sweep(config)
        if args.command == "config":
            import yaml

            from polyalign_ray.config import config_to_dict
            from polyalign_ray.config_reference import config_reference_markdown, explained_yaml

            if args.explain:
                print(explained_yaml(config), end="")
            elif args.markdown:
                print(config_reference_markdown(config), end="")
            else:
                print(yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True), end="")
            return 0
    except KeyboardInterrupt:
        print(interrupted_message(args.command), file=sys.stderr)
        return 130
    except ConfigError as exc:
        print(f"polyalign: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, InputError, ValueError) as exc:
        print(f"polyalign: error: {exc}", file=sys.stderr)
        return 2
    return 1


def interrupted_message(command: str) -> str:
    """What Ctrl-C leaves behind, and how to go on."""
    if command == "sweep":
        return (
            "\npolyalign sweep: interrupted. The shared stages that finished are kept; running the same command "
            "again runs the trials again."
        )
    if command in ("sft", "hdpo", "pipeline"):
        return (
            f"\npolyalign {command}: interrupted. Nothing interrupted is marked done: run the same command again to "
            "continue (finished stages are skipped; an interrupted training run with the same settings resumes "
            "from its latest checkpoint, other settings start it over)."
        )
    return f"\npolyalign {command}: interrupted; run the same command again to redo it."


def _run_prepare(config: PolyAlignConfig, engine: str) -> int:
    from polyalign_ray.stages.data import run_prepare

    if engine == "local":
        run_prepare(config, engine="local")
        return 0
    from polyalign_ray.distributed.runtime import ray_runtime

    with ray_runtime(config.ray, Path(config.data.output_dir) / "logs"):
        run_prepare(config, engine="ray")
    return 0


def _run_references(config: PolyAlignConfig) -> int:
    from polyalign_ray.distributed.runtime import ray_runtime
    from polyalign_ray.stages.data import run_references

    with ray_runtime(config.ray, Path(config.data.output_dir) / "logs"):
        print(run_references(config))
    return 0


def _run_sft(config: PolyAlignConfig, resume_from: str) -> int:
    from polyalign_ray.distributed.runtime import ray_runtime
    from polyalign_ray.stages.sft import run_sft_stage

    with ray_runtime(config.ray, Path(config.sft.output_dir) / "logs"):
        run_sft_stage(config, resume_from=resume_from)
    return 0


def _run_critic(config: PolyAlignConfig) -> int:
    from polyalign_ray.critic.train import CriticQualityError
    from polyalign_ray.distributed.runtime import ray_runtime
    from polyalign_ray.stages.critic import run_critic_stage

    with ray_runtime(config.ray, Path(config.critic.output_dir) / "logs"):
        try:
            run_critic_stage(config)
        except CriticQualityError as exc:
            print(f"polyalign: {exc}", file=sys.stderr)
            return 3
    return 0


def _run_hdpo(config: PolyAlignConfig, resume_from: str) -> int:
    from polyalign_ray.distributed.runtime import ray_runtime
    from polyalign_ray.stages.hdpo import run_hdpo_stage

    with ray_runtime(config.ray, Path(config.hdpo.output_dir) / "logs"):
        summary = run_hdpo_stage(config, resume_from=resume_from)
    print(hdpo_line(summary, config.hdpo.output_dir))
    return 0


def hdpo_line(summary: dict, output_dir: str) -> str:
    """One line a person reads after HDPO: what moved, and where the files are."""
    first, last = summary.get("first") or {}, summary.get("last") or {}
    return (
        f"HDPO ({summary['mode']}): {summary['steps']} steps, reward accuracy "
        f"{first.get('rewards/accuracy', float('nan')):.2f} -> {last.get('rewards/accuracy', float('nan')):.2f}, "
        f"margin {last.get('rewards/margins', float('nan')):.3f}, expected distance "
        f"{first.get('distance/expected', float('nan')):.3f} -> {last.get('distance/expected', float('nan')):.3f}; "
        f"metrics in {output_dir}/metrics.jsonl, model in {summary['final_model']}"
    )


def _run_eval(config: PolyAlignConfig, model: str, name: str) -> int:
    from polyalign_ray.distributed.runtime import ray_runtime
    from polyalign_ray.stages.evaluate import run_eval_stage

    with ray_runtime(config.ray, Path(config.eval.output_dir) / "logs"):
        report = run_eval_stage(config, model, name)
    overall = report["overall"]
    print(
        f"eval {name}: F1 {overall['f1']:.3f}, BNG {_num(overall['bng'])}, HCR {_num(overall['hcr'])}, "
        f"C-MAUVE {_num(overall['c_mauve'])}, aggregate {_num(overall['aggregate'])}; "
        f"{config.eval.output_dir}/{name}/report.json"
    )
    return 0


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _run_compare(config: PolyAlignConfig, runs: Sequence[str]) -> int:
    from polyalign_ray.stages.evaluate import run_compare

    path = run_compare(config, list(runs))
    print(f"comparison report: {path}")
    return 0


def _run_score(config: PolyAlignConfig, critic_dir: str, input_path: str, output_path: str) -> int:
    from polyalign_ray.distributed.runtime import ray_runtime
    from polyalign_ray.stages.critic import run_score

    with ray_runtime(config.ray, Path(output_path).parent / "logs"):
        count = run_score(config, critic_dir, input_path, output_path)
    print(f"scored {count} rows -> {output_path}")
    return 0


def _run_pipeline(config: PolyAlignConfig) -> int:
    from polyalign_ray.distributed.runtime import ray_runtime
    from polyalign_ray.stages.pipeline import run_pipeline

    with ray_runtime(config.ray, Path(config.data.output_dir).parent / "logs"):
        results = run_pipeline(config)
    print(pipeline_summary(config, results))
    return 0


def _run_sweep(config: PolyAlignConfig) -> int:
    from polyalign_ray.distributed.runtime import ray_runtime
    from polyalign_ray.distributed.tune_trials import run_sweep

    with ray_runtime(config.ray, Path(config.sweep.output_dir) / "logs"):
        summary = run_sweep(config)
    print(sweep_summary(summary))
    return 0 if "best" in summary else 1


def sweep_summary(summary: dict) -> str:
    """The end of ``polyalign sweep``: the trials table, the best values and where everything is."""
    table = Path(summary["table"]).read_text(encoding="utf-8")
    lines = [
        "",
        f"Sweep finished in {summary['wall_s']:.0f} s ({summary['metric']}, {summary['mode']}):",
        "",
        table,
    ]
    if "best" in summary:
        best = summary["best"]
        lines.append(f"Best: {best['params']} -> {summary['metric']} = {_num(best[summary['metric']])}")
        lines.append(
            f"Its config: {summary['best_config']}  (polyalign pipeline --config {summary['best_config']})"
        )
    else:
        lines.append("No trial produced the objective; see the table's error column.")
    lines.append(f"Table: {summary['csv']}; plot: {summary['plot']}")
    return "\n".join(lines)


def _run_submit(args: argparse.Namespace) -> int:
    """Check the spec here, then hand it to the cluster's job server (or only print the equivalent command)."""
    import secrets
    from datetime import datetime

    from polyalign_ray.job_spec import job_request, ray_job_submit_line

    request = job_request(
        Path(args.spec),
        address_flag=args.address,
        working_dir=Path(args.working_dir) if args.working_dir else None,
        env_names=args.env,
        pip=args.pip,
        environ=os.environ,
        now=datetime.now(),
        suffix=secrets.token_hex(2),
        submission_id=args.submission_id,
    )
    if args.dry_run:
        print(ray_job_submit_line(request))
        return 0
    from polyalign_ray.distributed import jobs

    try:
        client = jobs.connect(request.address)
        job_id = jobs.submit(client, request)
        print(f"submitted {request.spec} as {job_id} to {request.address}")
        if not args.follow:
            address = f" --address {request.address}" if args.address else ""
            print(f"  follow: polyalign job logs {job_id} --follow{address}")
            print(f"  stop:   polyalign job stop {job_id}{address}")
            return 0
        status = jobs.follow_logs(client, job_id, lambda chunk: print(chunk, end="", flush=True))
    except (jobs.JobServerError, TimeoutError) as exc:
        print(f"polyalign: {exc}", file=sys.stderr)
        return 1
    print(f"job {job_id}: {status.value}")
    return 0 if status.value == "SUCCEEDED" else 1


def _run_job(args: argparse.Namespace) -> int:
    """``polyalign job logs|stop|status``: the jobs of the cluster at --address (else RAY_ADDRESS)."""
    from polyalign_ray.distributed import jobs

    try:
        client = jobs.connect(args.address or None)
        if args.job_command == "logs":
            if not args.follow:
                print(jobs.logs_of(client, args.job_id), end="")
                return 0
            status = jobs.follow_logs(client, args.job_id, lambda chunk: print(chunk, end="", flush=True))
            print(f"job {args.job_id}: {status.value}")
            return 0 if status.value == "SUCCEEDED" else 1
        if args.job_command == "stop":
            print(f"job {args.job_id}: {jobs.stop(client, args.job_id).value}")
            return 0
        if args.job_id:
            print(f"job {args.job_id}: {jobs.status_of(client, args.job_id).value}")
        else:
            print(jobs.jobs_table(jobs.list_jobs(client)))
        return 0
    except (jobs.JobServerError, TimeoutError) as exc:
        print(f"polyalign: {exc}", file=sys.stderr)
        return 1


def _summary_file(folder: str) -> dict:
    path = Path(folder) / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def pipeline_summary(config: PolyAlignConfig, results: dict) -> str:
    """What a person reads at the end of the pipeline: each stage's outcome and where the report is."""
    lines = [
        "",
        "Pipeline finished in {:.0f} s; stage times (s): {}".format(results["wall_s"], results["timings"]),
    ]
    lines.append(f"Records, quarantine, manifest, references, bucket table: {config.data.output_dir}/")
    if not config.pipeline.seeds:
        sft = _summary_file(config.sft.output_dir)
        if sft:
            lines.append(
                f"Bucket-Aware SFT: {sft['steps']} steps, loss {sft['first_loss']:.3f} -> "
                f"{sft['final_loss']:.3f}; model in {sft['final_model']}"
            )
        critic = _summary_file(config.critic.output_dir)
        if critic:
            lines.append(
                f"Critic: held-out Spearman {critic['heldout_spearman']:.3f}, human<SFT ranking accuracy "
                f"{critic['heldout_ranking_accuracy_human_below_model']:.3f}; bundle in {config.critic.output_dir}/"
            )
        hdpo = _summary_file(config.hdpo.output_dir)
        if hdpo:
            lines.append(hdpo_line(hdpo, config.hdpo.output_dir))
    else:
        from polyalign_ray.stages.pipeline import seed_root

        lines.append(
            f"Per seed (models, metrics, evaluations): {seed_root(config, config.pipeline.seeds[0]).parent}/"
        )
    report = Path(config.eval.output_dir) / "report"
    comparison_path = report / "comparison.json"
    if comparison_path.is_file():
        lines += ["", *comparison_headline(json.loads(comparison_path.read_text(encoding="utf-8")))]
        lines += [
            "",
            f"Comparison report (claims with intervals, tables per language, track and bucket; plots): "
            f"{report / 'report.md'}",
        ]
    return "\n".join(lines)


HEADLINE_METRICS = ("f1", "bng", "hcr", "c_mauve", "mauve", "aggregate")


def comparison_headline(comparison: dict) -> list[str]:
    """The headline table (mean ± half-width of the 95% interval) and one line per claim."""
    seeds = comparison["seeds"]
    over = "seeds and test items" if seeds > 1 else "test items only (one seed)"
    lines = [
        f"Mean ± 95% interval half-width, {seeds} seed(s), intervals over {over}:",
        "",
        "| run | F1 | BNG (lower better) | HCR | C-MAUVE | MAUVE | aggregate |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in comparison["runs"]:
        overall = comparison["estimates"][name]["overall"]["all"]
        cells = []
        for metric in HEADLINE_METRICS:
            entry = overall.get(metric)
            if not entry:
                cells.append("n/a")
            elif entry.get("half_width") is None:
                cells.append(f"{entry['mean']:.3f}")
            else:
                cells.append(f"{entry['mean']:.3f} ± {entry['half_width']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, claim in comparison.get("differences", {}).items():
        overall = claim["groups"]["overall"]["all"]
        said = []
        for metric in ("f1", "bng", "c_mauve", "aggregate"):
            entry = overall.get(metric)
            if entry:
                said.append(f"{metric} {entry['mean']:+.3f} ({entry['verdict']})")
        lines.append(f"{label}: " + ", ".join(said))
    return lines


if __name__ == "__main__":
    sys.exit(main())
