"""Support statistics (critic/support.py): hand-worked values, cross-fitting, and the bundle round trip."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from polyalign_ray.critic.scorer import CriticScorer
from polyalign_ray.critic.support import (
    GRAM_HASH_BUCKETS,
    SMOOTHING,
    SUPPORT_FEATURE_NAMES,
    SUPPORT_FILE,
    SupportTables,
    bucket_family,
    cross_fitted_support_features,
    family_gram_ids,
    fold_of,
    length_bin_bounds,
)
from polyalign_ray.critic.train import critic_inputs, save_critic_bundle, train_critic
from tests.critic_fixtures import synthetic_examples
from tests.unit.test_critic import SMALL

QA, DIALOGUE = "en|single|qa|short", "en|multi|dialogue|short"


def column(name: str) -> int:
    return SUPPORT_FEATURE_NAMES.index(name)


def test_bucket_family_drops_the_length_bin() -> None:
    assert bucket_family("zh|multi|dialogue|long") == "zh|multi|dialogue"
    assert bucket_family("custom") == "custom"


def test_support_statistics_by_hand() -> None:
    """Two human answers, one per family. "paris." has 6 n-grams (the word and bigrams pa ar ri is s.), each
    counted once in the QA family (6 in all) and never in the dialogue family ("yeah me too": 3 words + 10
    bigrams = 13), so per n-gram its log-likelihood margin is
    log((1 + a) / (6 + aH)) - log(a / (13 + aH)) with a = 0.5, H = GRAM_HASH_BUCKETS."""
    tables = SupportTables.fit(["Paris.", "yeah me too"], [QA, DIALOGUE])
    paris, yeah = family_gram_ids("Paris."), family_gram_ids("yeah me too")
    assert len(paris) == 6 and len(yeah) == 13
    assert len(set(paris.tolist()) | set(yeah.tolist())) == 19  # no hash collision: the hand values hold

    a, h = SMOOTHING, GRAM_HASH_BUCKETS
    own = math.log((1 + a) / (6 + a * h))
    other = math.log(a / (13 + a * h))
    features = tables.features(["Paris.", "Par", "yeah me too"], [QA, QA, QA])
    assert features[0, column("family_margin")] == pytest.approx(own - other)
    assert features[0, column("family_loglik")] == pytest.approx(own)
    # "yeah me too" scored as a QA answer reads like the other family: the margin is the negative mirror image
    assert features[2, column("family_margin")] == pytest.approx(
        math.log(a / (6 + a * h)) - math.log((1 + a) / (13 + a * h))
    )
    # endings: "." and "s." ended one of the two answers -> log(2 / 3); "r", "ar", "Par" none -> log(1 / 3)
    for k in (1, 2):
        assert features[0, column(f"ending_frequency_{k}")] == pytest.approx(math.log(2 / 3))
        assert features[1, column(f"ending_frequency_{k}")] == pytest.approx(math.log(1 / 3))
    # words: "paris" was used, "par" was not
    assert features[0, column("unseen_word_share")] == 0.0 and features[0, column("last_word_unseen")] == 0.0
    assert features[1, column("unseen_word_share")] == 1.0 and features[1, column("last_word_unseen")] == 1.0


def test_an_answer_of_a_family_nobody_answered_in_is_as_unlike_as_the_least_likely_family() -> None:
    tables = SupportTables.fit(["Paris.", "yeah me too"], [QA, DIALOGUE])
    unknown = tables.features(["Paris."], ["zh|single|assistant|short"])[0]
    qa = tables.features(["Paris."], [QA])[0]
    dialogue = tables.features(["Paris."], [DIALOGUE])[0]
    assert unknown[column("family_loglik")] == pytest.approx(dialogue[column("family_loglik")])
    assert unknown[column("family_margin")] == pytest.approx(-qa[column("family_margin")])


def test_word_end_rates_by_hand() -> None:
    """Human answers "Paris." and "你好。". The word "paris" ends in the pieces s, is, ris and holds p, a, r, i, pa,
    ar, ri, par, ari followed by another letter; the Han run "你好" ends in 好, 你好 and holds 你. A rate is
    log((final + 1/2) / (final + inner + 1)): "Paris" ends in "is"/"ris" (1 final, 0 inner: log 0.75), "Par" in
    "ar"/"par" (0 final, 1 inner: log 0.25), a word shorter than the piece uses itself ("P", "你": log 0.25), an
    unseen piece gives log 0.5, and an answer ending outside a word or run gives 0."""
    tables = SupportTables.fit(["Paris.", "你好。"], [QA, "zh|single|qa|short"])
    texts = ["Paris", "Par", "P", "Paris xy", "Paris.", "你好", "你", "Paris 巴黎"]
    features = tables.features(texts, [QA] * len(texts))
    expected = [0.75, 0.25, 0.25, 0.5, 1.0, 0.75, 0.25, 0.5]
    for k in (2, 3):
        rate = features[:, column(f"word_end_rate_{k}")]
        assert rate.tolist() == pytest.approx([math.log(e) for e in expected])


def test_last_word_end_rate_by_hand() -> None:
    """Human answers "the little cat." and "a little theme". Complete words: the 1, little 2, cat 1, a 1, theme 1;
    proper prefixes: "littl" starts 2 words (little twice), "the" starts 1 (theme), "th" 2 (the, theme), "c" 1.
    The rate is log((complete + 1/2) / (complete + prefix + 1)): "littl" log(0.5 / 3), "the" log(1.5 / 3), "cat"
    log(1.5 / 2), "th" log(0.5 / 3), a word neither seen nor started ("zebra") log(0.5 / 1), an answer ending
    outside a word, and one ending in a Han run, 0."""
    tables = SupportTables.fit(["the little cat.", "a little theme"], [QA, QA])
    texts = ["it was littl", "the", "a cat", "th", "zebra", "littl.", "好"]
    rates = tables.features(texts, [QA] * len(texts))[:, column("last_word_end_rate")]
    expected = [
        math.log(0.5 / 3),
        math.log(1.5 / 3),
        math.log(1.5 / 2),
        math.log(0.5 / 3),
        math.log(0.5),
        0,
        0,
    ]
    assert rates.tolist() == pytest.approx(expected)


def test_length_outside_the_bucket_bin_by_hand() -> None:
    """Bins hold 1-40 (short), 41-120 (medium), 121-240 (long), 241+ (xlong) length tokens. Three words in a
    medium bucket fall 41 - 3 short: log(1 + 41) - log(1 + 3); 45 words in a short bucket exceed it by
    log(1 + 45) - log(1 + 40); inside the bin, in xlong above 241, and in a bucket id without a bin: 0."""
    tables = SupportTables.fit(["Paris."], [QA])
    three, forty_five = "a b c", " ".join(["w"] * 45)
    features = tables.features(
        [three, forty_five, forty_five, three, " ".join(["w"] * 300), three],
        ["en|single|qa|medium", QA, "en|single|qa|medium", QA, "en|single|qa|xlong", "custom"],
    )
    below, above = column("length_below_bin"), column("length_above_bin")
    assert features[0, below] == pytest.approx(math.log(42) - math.log(4)) and features[0, above] == 0.0
    assert features[1, above] == pytest.approx(math.log(46) - math.log(41)) and features[1, below] == 0.0
    assert (features[2:, below] == 0.0).all() and (features[2:, above] == 0.0).all()
    assert length_bin_bounds("en|single|qa|xlong") == (241, math.inf)
    assert length_bin_bounds("custom") is None


def test_a_bundle_saved_before_the_length_statistics_reads_its_own_columns(tmp_path: Path) -> None:
    """A critic.json naming the first seven statistics only is fed those seven, in its order."""
    examples, _ = synthetic_examples(60)
    # such a bundle also predates prompt statistics
    config = dataclasses.replace(SMALL, epochs=1, min_spearman=-1.0, use_prompt=False)
    model, meta, _ = train_critic(examples, config)
    old_names = list(SUPPORT_FEATURE_NAMES[:7])
    meta = meta | {
        "support_feature_names": old_names,
        "support_mean": meta["support_mean"][:7],
        "support_std": meta["support_std"][:7],
    }
    inputs = critic_inputs(["Paris."], [QA], meta, use_features=False, support=model.support_tables)
    assert inputs.features.shape[1] == 7


def test_cross_fitting_never_counts_an_answer_towards_itself() -> None:
    """Each human answer uses a word nobody else used. From tables of the other folds every word is unseen (as
    for a new answer at scoring time); from the full tables every word is seen (the in-sample leak)."""
    texts = [f"word{i} alone{i}." for i in range(40)]
    groups = [f"g{i}" for i in range(40)]
    buckets = [QA if i % 2 else DIALOGUE for i in range(40)]
    assert len({fold_of(g) for g in groups}) > 1
    crossed = cross_fitted_support_features(texts, buckets, groups, texts, buckets, groups)
    full = SupportTables.fit(texts, buckets).features(texts, buckets)
    assert (crossed[:, column("unseen_word_share")] == 1.0).all()
    assert (full[:, column("unseen_word_share")] == 0.0).all()


def test_bundle_carries_its_support_tables(tmp_path: Path) -> None:
    """The round trip scores like training with support statistics; a critic trained without them writes no
    tables and a bundle that lost its tables fails with the file's name."""
    examples, references = synthetic_examples(120)
    heldout = [e for e in examples if e.heldout]
    for support in (True, False):
        config = dataclasses.replace(SMALL, support_features=support, epochs=3, min_spearman=-1.0)
        model, meta, summary = train_critic(examples, config)
        bundle = tmp_path / str(support)
        save_critic_bundle(bundle, model, meta, summary, references)
        assert (bundle / SUPPORT_FILE).is_file() == support
        scores = CriticScorer(bundle).score([e.text for e in heldout], [e.bucket for e in heldout])
        assert np.isfinite(scores).all()
    (tmp_path / "True" / SUPPORT_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="support"):
        CriticScorer(tmp_path / "True")
