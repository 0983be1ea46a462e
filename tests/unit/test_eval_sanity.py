"""METHOD.md section 6's sanity properties on the built-in bilingual corpus: human test answers scored as if they
were model outputs reach the ideal values, and the same answers shuffled across buckets score clearly worse."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from polyalign_ray.config import DataConfig
from polyalign_ray.corpus.builtin import builtin_corpus_rows
from polyalign_ray.corpus.normalize import NormalizeSettings
from polyalign_ray.corpus.prepare import prepare_in_process, write_jsonl
from polyalign_ray.corpus.readers import discover_read_units
from polyalign_ray.corpus.tables import load_split
from polyalign_ray.evaluation.scoring import ScoringSettings, human_references, prepare_run, score_predictions


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("evalsanity")
    inputs = out / "builtin.jsonl"
    write_jsonl(inputs, builtin_corpus_rows(max_per_bucket=120, seed=0))
    data = DataConfig(inputs=(str(inputs),), output_dir=str(out / "data"), test_fraction=0.25)
    prepare_in_process(
        discover_read_units([str(inputs)]),
        NormalizeSettings.from_data_config(data),
        data.output_dir,
        max_row_chars=data.max_row_chars,
        show_progress=False,
    )
    train = load_split(Path(data.output_dir), "train").to_pylist()
    test = load_split(Path(data.output_dir), "test").to_pylist()
    human = human_references(train, max_per_bucket=300)
    settings = ScoringSettings(min_bucket_items=8)
    ideal = score_predictions(test, [r["response"] for r in test], human, settings)
    shuffled_answers = [r["response"] for r in test]
    random.Random(0).shuffle(shuffled_answers)
    shuffled = score_predictions(test, shuffled_answers, human, settings)
    return {"ideal": ideal, "shuffled": shuffled, "human": human, "test": test, "data_dir": data.output_dir}


def test_both_languages_and_tracks_are_covered(scored) -> None:
    overall = scored["ideal"]
    assert set(overall["by_language"]) == {"en", "zh"}
    assert set(overall["by_track"]) == {"single", "multi"}
    assert overall["overall"]["n"] == len(scored["test"])


def test_human_answers_reach_the_ideal_values(scored) -> None:
    ideal = scored["ideal"]["overall"]
    assert ideal["em"] == 1.0 and ideal["f1"] == 1.0 and ideal["rouge_l"] == 1.0
    assert ideal["bng"] < 0.35  # test vs train humans: sampling noise only
    assert ideal["hcr"] > 0.7  # about the 80 % a q10-q90 band holds
    assert ideal["mauve"] > 0.8
    assert ideal["c_mauve"] > 0.7
    if ideal["tdm"] is not None:
        assert ideal["tdm"] > 0.7


def test_answers_shuffled_across_buckets_score_clearly_worse(scored) -> None:
    ideal, shuffled = scored["ideal"]["overall"], scored["shuffled"]["overall"]
    assert shuffled["bng"] > ideal["bng"] + 0.2
    assert shuffled["hcr"] < ideal["hcr"] - 0.05
    assert shuffled["c_mauve"] < ideal["c_mauve"] - 0.1
    assert shuffled["f1"] < 0.5 and shuffled["aggregate"] < ideal["aggregate"]
    worse = [
        b
        for b, s in scored["shuffled"]["by_bucket"].items()
        if s["bng"] is not None and s["bng"] > scored["ideal"]["by_bucket"][b]["bng"]
    ]
    assert len(worse) >= 0.8 * sum(s["bng"] is not None for s in scored["shuffled"]["by_bucket"].values())


def test_comparison_report_and_plots(scored, tmp_path: Path) -> None:
    """Two 'runs' (the human answers and the shuffled ones) side by side with intervals over the test items:
    tables per language, track and bucket, the claim as a paired difference, and four plots that open as images."""
    import matplotlib.image

    from polyalign_ray.evaluation.comparison import compare_runs
    from polyalign_ray.evaluation.report import plot_comparison, render_comparison
    from polyalign_ray.schema import count_length_tokens

    test, human = scored["test"], scored["human"]
    settings = ScoringSettings(min_bucket_items=8)
    shuffled = [r["response"] for r in test]
    random.Random(0).shuffle(shuffled)
    prepared = {
        "human": [prepare_run(test, [r["response"] for r in test], human, settings)],
        "shuffled": [prepare_run(test, shuffled, human, settings)],
    }
    comparison = compare_runs(prepared, samples=300, claims=[("human", "shuffled", "human − shuffled")])
    # the point estimates are the report's own values
    for metric in ("f1", "bng", "c_mauve", "mauve", "aggregate"):
        point = comparison["estimates"]["human"]["overall"]["all"][metric]
        assert point["mean"] == pytest.approx(scored["ideal"]["overall"][metric])
        assert point["low"] <= point["mean"] <= point["high"]
    claim = comparison["differences"]["human − shuffled"]["groups"]["overall"]["all"]
    assert claim["bng"]["verdict"] == "better" and claim["f1"]["verdict"] == "better"
    assert claim["self_bleu4"]["verdict"] == "n/a"  # a set metric, one seed: no interval
    lengths: dict[str, list[int]] = {}
    for record in test:
        lengths.setdefault(record["bucket_id"], []).append(count_length_tokens(record["response"]))
    plots = plot_comparison(comparison, {"human": lengths}, lengths, tmp_path / "plots")
    text = render_comparison(comparison, plots)
    assert len(plots) == 4
    for plot in plots:
        image = matplotlib.image.imread(tmp_path / plot)
        assert image.shape[0] > 100 and image.shape[1] > 100
    assert "## Per language" in text and "| zh | human |" in text and "| en | shuffled |" in text
    assert "| single | human |" in text and "| multi | shuffled |" in text
    for bucket in scored["ideal"]["by_bucket"]:
        assert f"| {bucket} | human |" in text
    assert "### human − shuffled" in text and "▲" in text
    assert (
        "percentile bootstrap over test items (one seed: the spread of training seeds is not included)"
        in text
    )
    # the best BNG of the overall table is the human one, in bold, with its interval
    overall_row = next(line for line in text.splitlines() if line.startswith("| human |"))
    assert f"**{scored['ideal']['overall']['bng']:.3f}** ± " in overall_row


def test_the_human_side_is_computed_once_per_process_and_again_when_the_data_changes(scored) -> None:
    """The pipeline evaluates several models on one data folder: the train split's human side is computed once,
    shared read-only, and computed again once a file it was read from is rewritten."""
    import os

    import numpy as np

    from polyalign_ray.config import load_config
    from polyalign_ray.stages import evaluate

    config = load_config(None, [f"data.output_dir={scored['data_dir']}", "eval.human_per_bucket=300"])
    evaluate._human_references_of.cache_clear()
    first = evaluate.train_human_references(config)
    assert evaluate.train_human_references(config) is first
    assert sorted(first) == sorted(scored["human"])
    for bucket, human in scored["human"].items():
        assert np.array_equal(first[bucket].features, human.features)
        assert np.array_equal(first[bucket].embeddings, human.embeddings)
    bucket = next(iter(first))
    with pytest.raises(ValueError, match="read-only"):
        first[bucket].features[0, 0] = 1.0
    train_file = next(p for p in (Path(scored["data_dir"]) / "train").rglob("*") if p.is_file())
    stat = train_file.stat()
    os.utime(train_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    again = evaluate.train_human_references(config)
    assert again is not first
    assert np.array_equal(again[bucket].features, first[bucket].features)


def test_a_prepared_run_is_reused_for_the_same_answers_only(scored) -> None:
    """The comparison after the pipeline's evaluations prepares the same answers again: the process keeps the
    last few prepared runs, keyed by items, answers, human side and settings; it scores like a fresh one."""
    from polyalign_ray.evaluation.scoring import ScoringSettings, score_prepared_run
    from polyalign_ray.stages import evaluate

    evaluate._prepared_runs.clear()
    test, human, settings = scored["test"], scored["human"], ScoringSettings(min_bucket_items=8)
    answers = [r["response"] for r in test]
    first = evaluate.prepared_run(test, answers, human, settings)
    assert evaluate.prepared_run(test, list(answers), human, settings) is first
    assert score_prepared_run(test, first) == scored["ideal"]
    other = evaluate.prepared_run(test, answers[1:] + answers[:1], human, settings)
    assert other is not first
    assert evaluate.prepared_run(test, answers, human, ScoringSettings(min_bucket_items=9)) is not first
    for shift in range(2, 2 + evaluate.PREPARED_RUNS_KEPT):
        evaluate.prepared_run(test[:20], answers[shift : shift + 20], human, settings)
    assert len(evaluate._prepared_runs) == evaluate.PREPARED_RUNS_KEPT
    assert evaluate.prepared_run(test, answers, human, settings) is not first  # the oldest was let go
