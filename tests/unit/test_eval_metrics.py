"""Evaluation metrics on hand-made inputs, with the values worked out by hand (METHOD.md section 6)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from polyalign_ray.evaluation.distribution import (
    bucket_naturalness_gap,
    human_band,
    human_coverage_rate,
    robust_scale,
    turn_dynamics_match,
    wasserstein_1d,
)
from polyalign_ray.evaluation.diversity import distinct_n, self_bleu, sentence_bleu
from polyalign_ray.evaluation.embeddings import hashed_ngram_embeddings
from polyalign_ray.evaluation.frontier import aggregate_score, hypervolume_2d, naturalness
from polyalign_ray.evaluation.mauve import (
    default_num_clusters,
    matched_human_sample,
    mauve,
    mauve_from_histograms,
    quantize,
)
from polyalign_ray.evaluation.scoring import WassersteinPlan
from polyalign_ray.evaluation.text import metric_tokens
from polyalign_ray.evaluation.utility import exact_match, longest_common_subsequence, rouge_l_f1, token_f1


def test_tokens_split_chinese_by_character_and_normalize_english() -> None:
    assert metric_tokens("The Cat, sat!") == ["cat", "sat"]
    assert metric_tokens("我喜欢喝茶。") == ["我", "喜", "欢", "喝", "茶"]
    assert metric_tokens("用Python写 code") == ["用", "python", "写", "code"]
    assert metric_tokens("ＡＢＣ１２") == ["abc12"]  # full-width forms (NFKC)


def test_chinese_f1_differs_from_exact_match_on_partial_overlap() -> None:
    # prediction 我喜欢喝咖啡 (6 chars) vs reference 我喜欢喝茶 (5 chars): 4 shared -> P = 4/6, R = 4/5
    assert exact_match("我喜欢喝咖啡", "我喜欢喝茶") == 0.0
    assert token_f1("我喜欢喝咖啡", "我喜欢喝茶") == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5))
    assert exact_match("我喜欢喝茶！", "我喜欢喝茶") == 1.0


def test_english_f1_and_rouge_l_by_hand() -> None:
    # tokens: [cat, sat, on, mat] vs [cat, is, on, mat]: overlap 3 -> F1 = 0.75; LCS = cat on mat = 3 -> 0.75
    assert token_f1("The cat sat on the mat", "the cat is on the mat") == pytest.approx(0.75)
    assert rouge_l_f1("The cat sat on the mat", "the cat is on the mat") == pytest.approx(0.75)
    # order matters for ROUGE-L, not for F1: [mat, on, cat] vs [cat, on, mat]: F1 1.0, LCS 1 -> 1/3
    assert token_f1("mat on cat", "cat on mat") == 1.0
    assert rouge_l_f1("mat on cat", "cat on mat") == pytest.approx(1 / 3)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert longest_common_subsequence(list("ABCBDAB"), list("BDCABA")) == 4


def test_distinct_n_by_hand() -> None:
    # "x y" twice: unigrams x, y, x, y -> 2 distinct of 4; "x y x y": bigrams xy, yx, xy -> 2 of 3
    assert distinct_n(["x y", "x y"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["x y x y"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["我我我"], 1) == pytest.approx(1 / 3)
    assert distinct_n([], 1) == 0.0


def test_bleu_and_self_bleu() -> None:
    tokens = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]
    assert sentence_bleu(tokens, [tokens]) == pytest.approx(1.0)
    # unigram precision 1/1 but every higher order is empty: smoothed epsilon each, and a brevity penalty
    short = sentence_bleu(["fox"], [["fox", "jumps"]])
    assert short == pytest.approx(math.exp(1 - 2 / 1) * math.exp((math.log(1) + 3 * math.log(0.1)) / 4))
    # No unigram in common: 0, as in NLTK and sacrebleu (smoothing used to give (0.1/2 * (0.1/1)^3)^(1/4) = 0.047)
    assert sentence_bleu(["red", "car"], [["blue", "sky"]]) == 0.0
    assert self_bleu(["red car", "blue sky"]) == 0.0
    # one of two unigrams matches; the one bigram does not; orders 3 and 4 have no n-gram (total 0 counts as 1):
    # p = (1/2, 0.1/1, 0.1/1, 0.1/1), equal lengths so BP = 1
    assert sentence_bleu(["red", "car"], [["red", "sky"]]) == pytest.approx((0.5 * 0.1**3) ** 0.25)
    assert self_bleu(
        ["same words here today", "same words here today", "same words here today"]
    ) == pytest.approx(1.0)
    varied = ["the cat sat on the mat", "我们今天去公园散步", "quantum fields obey symmetry", "花开了很漂亮"]
    assert self_bleu(varied) < 0.1
    # the fast clipping (top-2 counts) equals the direct definition
    texts = ["a b c d e", "a b c x y", "b c d e f", "z z a b c d"]
    tokenized = [metric_tokens(t) for t in texts]
    direct = np.mean([sentence_bleu(tokenized[i], tokenized[:i] + tokenized[i + 1 :]) for i in range(4)])
    assert self_bleu(texts, sample_size=4) == pytest.approx(direct)


def test_wasserstein_by_hand() -> None:
    assert wasserstein_1d(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.0
    assert wasserstein_1d(np.array([0.0]), np.array([3.0])) == pytest.approx(3.0)
    # {0, 2} vs {1}: each half of the mass moves 1
    assert wasserstein_1d(np.array([0.0, 2.0]), np.array([1.0])) == pytest.approx(1.0)


def test_bng_is_zero_on_equal_samples_scaled_and_capped() -> None:
    human = np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0], [3.0, 40.0]])
    assert bucket_naturalness_gap(human, human) == 0.0
    # feature 0 shifted by +1.5 (scale q75 - q25 = 1.5 -> gap 1), feature 1 equal: BNG = mean(1, 0) = 0.5
    shifted = human + np.array([1.5, 0.0])
    assert robust_scale(human).tolist() == pytest.approx([1.5, 15.0])
    assert bucket_naturalness_gap(shifted, human) == pytest.approx(0.5)
    far = human + np.array([1e6, 0.0])
    assert bucket_naturalness_gap(far, human, cap=5.0) == pytest.approx(2.5)  # the heavy tail is capped


def test_hcr_is_the_mean_share_of_features_inside_the_band() -> None:
    low, high = np.array([0.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0])
    model = np.array([[0.5, 0.5, 2.0], [0.5, -1.0, 2.0]])  # 2/3 and 1/3 inside
    assert human_coverage_rate(model, low, high) == pytest.approx(0.5)
    human = np.arange(11, dtype=float)[:, None]
    lo, hi = human_band(human)
    assert (lo[0], hi[0]) == pytest.approx((1.0, 9.0))
    assert human_coverage_rate(human, lo, hi) == pytest.approx(9 / 11)


def test_tdm_is_one_on_equal_relations_and_falls_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    human = rng.normal(size=(200, 3))
    assert turn_dynamics_match(human, human) == pytest.approx(1.0)
    assert turn_dynamics_match(human + 3.0, human) < 0.5


def test_mauve_of_identical_and_disjoint_histograms() -> None:
    p = np.array([3.0, 1.0, 0.0])
    assert mauve_from_histograms(p, p) == pytest.approx(1.0)
    disjoint = mauve_from_histograms(np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    assert disjoint < 0.02
    partial = mauve_from_histograms(np.array([1.0, 1.0, 0.0]), np.array([0.0, 1.0, 1.0]))
    assert disjoint < partial < 1.0


def test_mauve_on_embeddings() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 8)) + 3
    assert mauve(a, a.copy()) == pytest.approx(1.0)
    same_distribution = mauve(a[:150], a[150:])
    other = mauve(rng.normal(size=(150, 8)) - 3, a[150:])
    assert same_distribution > 0.8 > other


def test_mauve_cluster_count_follows_mauve_text() -> None:
    """k = max(2, round(min(n_model, n_human) / 10)) (mauve-text's 'auto'), not (n_model + n_human) / 10."""
    assert default_num_clusters(20, 500) == 2
    assert default_num_clusters(300, 3000) == 30
    assert default_num_clusters(14, 500) == 2
    assert default_num_clusters(36, 40) == 4
    rng = np.random.default_rng(1)
    quantization = quantize(rng.normal(size=(40, 6)), rng.normal(size=(400, 6)))
    assert quantization.num_clusters == 4
    assert quantization.model_histogram().sum() == 40 and quantization.human_histogram().sum() == 400


def test_mauve_is_near_one_for_one_distribution_and_falls_as_it_shifts() -> None:
    """Features whose answer is known: two samples of one Gaussian score near 1 (the former cluster rule gave
    ~0.90 here), and shifting one sample further and further lowers MAUVE step by step."""
    rng = np.random.default_rng(0)
    human = rng.normal(size=(500, 8))
    model = rng.normal(size=(500, 8))
    assert mauve(model, human) > 0.93
    shifted = [mauve(model + shift, human) for shift in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a > b for a, b in itertools.pairwise(shifted)), shifted
    assert shifted[-1] < 0.05
    # a batch of histograms gives the same values as one at a time
    p, q = np.array([[3.0, 1.0, 0.0], [1.0, 1.0, 1.0]]), np.array([1.0, 2.0, 1.0])
    batch = mauve_from_histograms(p, q)
    assert batch == pytest.approx([mauve_from_histograms(p[0], q), mauve_from_histograms(p[1], q)])


def test_global_mauve_human_side_has_the_model_bucket_mix() -> None:
    """Bucket a has 10 human answers per model answer, bucket b 2: the human side takes ratio 2 in both, so its
    mix (2 x 5 : 2 x 20) is the model's (5 : 20)."""
    sample = matched_human_sample({"a": 5, "b": 20}, {"a": 50, "b": 40}, max_ratio=5.0)
    assert {b: len(rows) for b, rows in sample.items()} == {"a": 10, "b": 40}
    assert len(set(sample["a"].tolist())) == 10 and max(sample["a"]) < 50
    assert {b: len(r) for b, r in matched_human_sample({"a": 4}, {"a": 400}, max_ratio=5.0).items()} == {
        "a": 20
    }
    assert matched_human_sample({"a": 4}, {}) == {}
    # Two well separated buckets, the model side answering like the humans of each: pooling every human answer
    # (mix 1:10) reads as a distribution gap; the matched mix does not.
    rng = np.random.default_rng(0)
    centers = {"a": np.full(8, 4.0), "b": np.full(8, -4.0)}
    human = {b: rng.normal(size=(n, 8)) + centers[b] for b, n in (("a", 60), ("b", 600))}
    model = np.concatenate([rng.normal(size=(50, 8)) + centers[b] for b in ("a", "b")])
    pooled = mauve(model, np.concatenate([human["a"], human["b"]]))
    matched = matched_human_sample({"a": 50, "b": 50}, {"a": 60, "b": 600})
    balanced = mauve(model, np.concatenate([human[b][rows] for b, rows in matched.items()]))
    assert balanced > 0.9 and balanced > pooled + 0.2


def test_resampled_wasserstein_equals_the_direct_one_on_repeated_items() -> None:
    """Counts (2, 0, 1) over the model answers x0, x1, x2 are the sample (x0, x0, x2)."""
    rng = np.random.default_rng(0)
    model, human = rng.normal(size=(3, 4)), rng.normal(size=(25, 4)) + 0.5
    plan = WassersteinPlan.build(model, human, scale_floor=0.05)
    counts = np.array([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    got = plan.scaled_distances(counts)
    scale = robust_scale(human)
    repeated = model[[0, 0, 2]]
    for f in range(4):
        assert got[0, f] == pytest.approx(wasserstein_1d(repeated[:, f], human[:, f]) / scale[f])
        assert got[1, f] == pytest.approx(wasserstein_1d(model[:, f], human[:, f]) / scale[f])


def test_hashed_embeddings_are_deterministic_and_bilingual() -> None:
    e = hashed_ngram_embeddings(["我喜欢喝茶", "我喜欢喝茶", "I like tea", ""])
    assert e.shape == (4, 512)
    assert np.allclose(e[0], e[1]) and np.linalg.norm(e[0]) == pytest.approx(1.0)
    assert float(e[0] @ e[2]) < 0.2 and not e[3].any()


def test_frontier_and_aggregate_by_hand() -> None:
    assert hypervolume_2d([(1.0, 0.5), (0.5, 1.0)]) == pytest.approx(0.75)
    assert hypervolume_2d([(1.0, 0.5), (0.5, 0.4)]) == pytest.approx(0.5)  # the second point is dominated
    assert hypervolume_2d([]) == 0.0
    assert naturalness(0.0, 1.0) == 1.0 and naturalness(1.0, 0.0) == pytest.approx(0.25)
    assert aggregate_score(0.5, 1.0, 0.5, 0.5) == pytest.approx(0.5)
    assert aggregate_score(0.0, 0.0, 1.0, 1.0) == pytest.approx((1e-6) ** 0.25)


@pytest.mark.parametrize("rows", [5, 40, 700])  # fewer points than dimensions, and more
def test_principal_components_equal_those_of_the_scatter_matrix(rows: int) -> None:
    """MAUVE's PCA step from an SVD of the centered points equals the textbook one (eigenvectors of the scatter
    matrix, largest first) up to the sign of each axis: the same number of axes kept, the same coordinates."""
    from polyalign_ray.evaluation.mauve import principal_components

    rng = np.random.default_rng(rows)
    points = rng.normal(size=(rows, 64)) * np.linspace(
        3.0, 0.1, 64
    )  # decaying variance: a real choice of axes
    got = principal_components(points, 0.9)
    centered = points - points.mean(axis=0)
    values, vectors = np.linalg.eigh(centered.T @ centered)
    order = np.argsort(values)[::-1]
    values, vectors = np.maximum(values[order], 0.0), vectors[:, order]
    keep = int(np.argmax(np.cumsum(values) / values.sum() >= 0.9 - 1e-12)) + 1
    expected = centered @ vectors[:, :keep]
    assert got.shape == expected.shape and 1 < keep < 64
    signs = np.sign((got * expected).sum(axis=0))
    np.testing.assert_allclose(got * signs, expected, atol=1e-8)
    assert principal_components(np.ones((4, 3)), 0.9).shape == (4, 1)  # no variance: one (zero) axis
