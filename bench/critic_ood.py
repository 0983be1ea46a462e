"""Is the critic blind to answers unlike human and SFT ones? Train critics on a finished run's data and SFT samples
with and without corrupted answers and hand features, and score held-out human answers altered by hand.

The alterations here are written independently of ``polyalign_ray/critic/corruptions.py`` (other repeat counts,
separators and cut points), so a critic is not measured on its own training generator:

- ``repeated``: the answer three times, separated by a blank line;
- ``cut``: the first third of its characters;
- ``other_bucket``: the answer of a random other-bucket val record, scored in this record's bucket;
- ``other_language``: the same, from a bucket of the other language;
- ``relabeled``: the answer itself scored in another bucket of its language; ``relabeled_any``: in any other
  bucket;
- ``other_answer``: another record's answer of the same bucket (an answer to another question in the same style:
  only a critic that sees the prompt can tell).

Each critic is measured twice: every answer scored under its record's prompt (as rollouts and HDPO pairs are), and
the answers alone (``score(texts, buckets)``; a critic without ``critic.use_prompt`` gives the same either way).

The altered answers are those of the val and test records (the critic trains on train prompts only; val gates
it). For each critic variant and kind: how often the altered answer scores farther than the original (the
acceptance rule of issue 14 asks >= 90% for repeated, cut and moved answers), the exact targets' own rate, the mean
critic score and mean true distance; plus the held-out Spearman on human and SFT answers (the gate) and training
time. With ``--seeds 0,1,2`` every variant is trained once per seed (its corruptions, initialisation and batches)
and the alterations are redrawn per seed; the table shows the mean over seeds and the range.

    .venv/bin/python bench/critic_ood.py --run runs/demo --out bench/results/critic_ood --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import time
from pathlib import Path

import numpy as np

from polyalign_ray.config import load_config
from polyalign_ray.corpus.tables import load_split
from polyalign_ray.critic.corruptions import corrupt_records
from polyalign_ray.critic.scorer import CriticScorer
from polyalign_ray.critic.train import build_critic_examples, save_critic_bundle, spearman, train_critic
from polyalign_ray.features import features_matrix
from polyalign_ray.references import ReferenceSet
from polyalign_ray.schema import count_length_tokens
from polyalign_ray.stages.critic import critic_records
from polyalign_ray.stages.hdpo import load_samples

ALTERATIONS = (
    "repeated",
    "cut",
    "other_bucket",
    "other_language",
    "relabeled",
    "relabeled_any",
    "other_answer",
)


def alter(records: list[dict], seed: int) -> list[tuple[dict, str, str, str]]:
    """(record, kind, altered text, bucket it is scored in) for every val record and every alteration."""
    rng = random.Random(seed)
    out = []
    for record in records:
        language = record["bucket_id"].split("|")[0]
        same = [
            r
            for r in records
            if r["bucket_id"] != record["bucket_id"] and r["bucket_id"].startswith(language)
        ]
        other = [r for r in records if not r["bucket_id"].startswith(language)]
        text = record["response"]
        out.append((record, "repeated", "\n\n".join([text] * 3), record["bucket_id"]))
        out.append((record, "cut", text[: max(1, len(text) // 3)], record["bucket_id"]))
        if same:
            out.append((record, "other_bucket", rng.choice(same)["response"], record["bucket_id"]))
        if other:
            out.append((record, "other_language", rng.choice(other)["response"], record["bucket_id"]))
        if same:
            out.append((record, "relabeled", text, rng.choice(same)["bucket_id"]))
        if same or other:
            out.append((record, "relabeled_any", text, rng.choice(same + other)["bucket_id"]))
        twins = [r for r in records if r["bucket_id"] == record["bucket_id"] and r["response"] != text]
        if twins:
            out.append((record, "other_answer", rng.choice(twins)["response"], record["bucket_id"]))
    return out


def measure(bundle: Path, altered: list, references: ReferenceSet, *, with_prompts: bool = True) -> dict:
    """Scores of the altered answers against their originals'. ``with_prompts``: every answer is scored under its
    record's prompt (a relabeled answer under its own prompt in the other bucket; another record's answer under
    this record's prompt), as rollouts and pairs are scored; else the answers alone, as ``score(texts, buckets)``."""
    scorer = CriticScorer(bundle)
    originals = {id(r): r for r, *_ in altered}
    base_texts = [r["response"] for r in originals.values()]
    base_buckets = [r["bucket_id"] for r in originals.values()]
    base_prompts = list(originals.values()) if with_prompts else None
    base_scores = dict(
        zip(originals, scorer.score(base_texts, base_buckets, prompts=base_prompts), strict=True)
    )
    base_true = dict(
        zip(originals, references.distance(features_matrix(base_texts), base_buckets), strict=True)
    )
    texts, buckets = [a[2] for a in altered], [a[3] for a in altered]
    scores = scorer.score(texts, buckets, prompts=[a[0] for a in altered] if with_prompts else None)
    true = references.distance(features_matrix(texts), buckets)
    out = {}
    for kind in ALTERATIONS:
        idx = [i for i, a in enumerate(altered) if a[1] == kind]
        if not idx:
            continue
        out[kind] = {
            "n": len(idx),
            "critic_farther_rate": float(np.mean([scores[i] > base_scores[id(altered[i][0])] for i in idx])),
            "target_farther_rate": float(np.mean([true[i] > base_true[id(altered[i][0])] for i in idx])),
            "critic_mean": float(np.mean(scores[idx])),
            "true_mean": float(np.mean(true[idx])),
        }
    out["originals"] = {
        "critic_mean": float(np.mean(list(base_scores.values()))),
        "true_mean": float(np.mean(list(base_true.values()))),
    }
    all_scores = np.concatenate([scores, list(base_scores.values())])
    all_true = np.concatenate([true, list(base_true.values())])
    out["spearman_altered_and_originals"] = spearman(all_scores, all_true)
    out["by_case"] = breakdown(altered, scores, base_scores, true, base_true)
    return out


def alteration_case(record: dict, kind: str, text: str, bucket: str) -> str:
    """Which case of its kind an alteration is: for a relabel, which bucket parts changed (track, family, length
    bin); for a cut, the original's length bin and whether one word or character is left."""
    if kind == "relabeled":
        old, new = record["bucket_id"].split("|"), bucket.split("|")
        changed = [
            name for name, a, b in zip(("track", "family", "bin"), old[1:], new[1:], strict=False) if a != b
        ]
        return "+".join(changed) or "same"
    if kind == "cut":
        left = "one word or character left" if count_length_tokens(text) <= 1 else "more left"
        return f"{record['bucket_id'].rsplit('|', 1)[-1]}, {left}"
    return "all"


def breakdown(
    altered: list, scores: np.ndarray, base_scores: dict, true: np.ndarray, base_true: dict
) -> dict:
    """kind -> case -> n and the share the critic (and the exact target) puts farther than the original: where
    the failures are."""
    tally: dict[str, dict[str, list[int]]] = {}
    for (record, kind, text, bucket), score, target in zip(altered, scores, true, strict=True):
        if kind not in ("relabeled", "cut"):
            continue
        case = tally.setdefault(kind, {}).setdefault(alteration_case(record, kind, text, bucket), [0, 0, 0])
        case[0] += 1
        case[1] += int(score > base_scores[id(record)])
        case[2] += int(target > base_true[id(record)])
    return {
        kind: {
            case: {"n": n, "critic_farther_rate": hits / n, "target_farther_rate": exact / n}
            for case, (n, hits, exact) in sorted(cases.items())
        }
        for kind, cases in tally.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", default="runs/demo", help="a finished pipeline folder (data, critic samples)"
    )
    parser.add_argument("--out", default="bench/results/critic_ood", help="results prefix (.md and .json)")
    parser.add_argument("--work", default="/tmp/critic_ood", help="where the trained bundles go")
    parser.add_argument(
        "--seeds", default="0", help="comma-separated seeds; each variant is trained per seed"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=KEY=VALUE,...",
        help="a critic to train instead of the default four: a label and its comma-separated overrides",
    )
    parser.add_argument(
        "--analyze",
        default="",
        metavar="BUNDLE",
        help="train nothing: measure this saved critic bundle on the run's altered answers (first seed) and print "
        "where its failures are (the by_case breakdown) as JSON",
    )
    args = parser.parse_args()
    run = Path(args.run)
    if args.analyze:
        seed = int(args.seeds.split(",")[0])
        result = measure(
            Path(args.analyze),
            alter(held_records(run), seed),
            ReferenceSet.load(run / "data" / "references.json"),
        )
        print(json.dumps({"bundle": args.analyze, "seed": seed, "by_case": result["by_case"]}, indent=1))
        return
    variants = {
        "human + SFT answers only, features": ["critic.corruptions_per_prompt=0"],
        "human + SFT answers only, no features": [
            "critic.corruptions_per_prompt=0",
            "critic.use_features=false",
        ],
        "+ corrupted answers, features (default)": [],
        "+ corrupted answers, no features": ["critic.use_features=false"],
    }
    if args.variant:
        variants = {}
        for spec in args.variant:
            label, _, overrides = spec.partition("=")
            # commas inside [...] belong to a list value: critic.support_exclude=[a,b]
            variants[label] = [o for o in re.split(r",(?![^\[]*\])", overrides) if o]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    per_seed = {}
    for label, overrides in variants.items():
        for seed in seeds:
            per_seed[(label, seed)] = train_and_measure(run, label, overrides, seed, Path(args.work))
            print(label, seed, json.dumps(per_seed[(label, seed)], indent=1))
    results = {
        label: {
            "overrides": overrides,
            "seeds": {str(seed): per_seed[(label, seed)] for seed in seeds},
            **mean_over_seeds([per_seed[(label, seed)] for seed in seeds]),
        }
        for label, overrides in variants.items()
    }
    write_report(args, results, seeds)


def mean_over_seeds(runs: list[dict]) -> dict:
    """The mean (and min, max) over seeds of each figure the report shows."""

    def stats(values: list[float]) -> dict:
        return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}

    out = {
        "train_seconds": stats([r["train_seconds"] for r in runs]),
        "heldout_spearman": stats([r["heldout_spearman"] for r in runs]),
        **{
            key: stats([r[key] for r in runs])
            for key in ("heldout_spearman_models", "heldout_spearman_humans")
            if all(key in r for r in runs)
        },
        "hand_altered": {},
    }
    for field in ("hand_altered", "hand_altered_no_prompt"):
        out[field] = {}
        for kind in (*ALTERATIONS, "originals"):
            present = [r[field][kind] for r in runs if kind in r.get(field, {})]
            if present:
                out[field][kind] = {
                    key: stats([m[key] for m in present]) for key in present[0] if key != "n"
                } | {"n": sum(m.get("n", 0) for m in present)}
    return out


def train_and_measure(run: Path, label: str, overrides: list[str], seed: int, work: Path) -> dict:
    """Train one critic variant with one seed on the run's data; measure it on hand-altered val + test answers."""
    config = load_config(
        None,
        [
            f"data.output_dir={run / 'data'}",
            f"critic.output_dir={run / 'critic'}",
            f"critic.seed={seed}",
            "critic.min_corruption_farther_rate=0",
            *overrides,
        ],
    )
    cfg = config.critic
    references = ReferenceSet.load(run / "data" / "references.json")
    rows = critic_records(config).to_pylist()
    samples = load_samples(run / "critic" / "samples.jsonl")
    corrupted = corrupt_records(
        rows, kinds=cfg.corruptions, per_record=cfg.corruptions_per_prompt, seed=cfg.seed
    )
    examples = build_critic_examples(
        rows, samples, references, corrupted, corruption_gap=cfg.corruption_target_gap
    )
    began = time.perf_counter()
    model, meta, summary = train_critic(examples, cfg)
    seconds = time.perf_counter() - began
    name = "".join(c if c.isalnum() else "_" for c in label)
    bundle = work / f"{name}_seed{seed}"
    save_critic_bundle(bundle, model, meta, summary, references)
    altered = alter(held_records(run, rows), seed)
    return {
        "train_seconds": seconds,
        "heldout_spearman": summary["heldout_spearman"],
        **spearman_by_author(bundle, examples),
        "heldout_ranking_accuracy_human_below_model": summary["heldout_ranking_accuracy_human_below_model"],
        "heldout_corrupted_farther_rate": summary.get("heldout_corrupted_farther_rate"),
        "hand_altered": measure(bundle, altered, references),
        "hand_altered_no_prompt": measure(bundle, altered, references, with_prompts=False),
    }


def held_records(run: Path, rows: list[dict] | None = None) -> list[dict]:
    """The run's val records (among the critic's records) and test records: the answers that are altered."""
    if rows is None:
        config = load_config(None, [f"data.output_dir={run / 'data'}", f"critic.output_dir={run / 'critic'}"])
        rows = critic_records(config).to_pylist()
    return [r for r in rows if r["split"] != "train"] + load_split(run / "data", "test").to_pylist()


def spearman_by_author(bundle: Path, examples: list) -> dict:
    """Held-out Spearman within model answers (what ranking rollouts needs) and within human answers (all near
    support, their targets a narrow range): the gate's one figure mixes the two."""
    plain = [e for e in examples if e.heldout and e.kind in ("human", "model", "")]
    scores = CriticScorer(bundle).score(
        [e.text for e in plain], [e.bucket for e in plain], prompts=[e.prompt for e in plain]
    )
    out = {}
    for name, human in (("heldout_spearman_models", False), ("heldout_spearman_humans", True)):
        idx = [i for i, e in enumerate(plain) if e.is_human == human]
        out[name] = spearman(scores[idx], [plain[i].target for i in idx])
    return out


def write_report(args: argparse.Namespace, results: dict, seeds: list[int]) -> None:
    machine = {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0], "python": platform.python_version()}
    command = f"python bench/critic_ood.py --run {args.run} --out {args.out} --seeds {args.seeds}" + "".join(
        f" --variant '{v}'" for v in args.variant
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(
        json.dumps({"command": command, "machine": machine, "seeds": seeds, "results": results}, indent=1),
        encoding="utf-8",
    )
    some = next(iter(results.values()))["hand_altered"]
    counts = ", ".join(f"{k} {some[k]['n']}" for k in ALTERATIONS if k in some)
    lines = [
        "# Critic out of distribution: hand-altered held-out answers",
        "",
        f"`{command}` on {machine['cpus']} CPUs (1-min load {machine['load_1min']:.1f}); the run's val and test",
        f"records, {len(seeds)} seed(s) per critic (altered answers over all seeds: {counts}).",
        "Rate = share of altered answers the critic scores farther from human support than the original answer,",
        "mean over seeds with the range in brackets; the exact targets' own rate on the last line of each cell.",
        "Spearman: held-out human + SFT answers (the quality gate), then within the SFT answers and within the human",
        "answers alone.",
        "",
        "| critic | held-out Spearman (SFT / human) | " + " | ".join(ALTERATIONS) + " | train s |",
        "|---|---:|" + "---:|" * len(ALTERATIONS) + "---:|",
    ]
    rows = [(label, r, "hand_altered", "") for label, r in results.items()]
    rows += [(label, r, "hand_altered_no_prompt", ", answers alone") for label, r in results.items()]
    for label, r, field, how in rows:
        cells = []
        for kind in ALTERATIONS:
            m = r[field].get(kind)
            if not m:
                cells.append("—")
                continue
            rate, target = m["critic_farther_rate"], m["target_farther_rate"]
            spread = f" ({rate['min']:.0%}-{rate['max']:.0%})" if len(seeds) > 1 else ""
            cells.append(f"{rate['mean']:.1%}{spread}<br>exact {target['mean']:.0%}")
        within = ""
        if "heldout_spearman_models" in r:
            within = (
                f" ({r['heldout_spearman_models']['mean']:.3f} / {r['heldout_spearman_humans']['mean']:.3f})"
            )
        lines.append(
            f"| {label}{how} | {r['heldout_spearman']['mean']:.3f}{within} | "
            + " | ".join(cells)
            + f" | {r['train_seconds']['mean']:.0f} |"
        )
    lines += ["", "Mean scores (critic / exact distance), mean over seeds:", ""]
    for label, r in results.items():
        altered = r["hand_altered"]
        parts = [
            f"{k} {altered[k]['critic_mean']['mean']:.2f} / {altered[k]['true_mean']['mean']:.2f}"
            for k in ("originals", *ALTERATIONS)
            if k in altered
        ]
        lines.append(f"- {label}: " + "; ".join(parts))
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
