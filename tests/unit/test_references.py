"""Per-bucket human references and the distance to human support (METHOD.md section 2): train-only quantiles,
backoff to parent nodes, the hand-computed distance, separation of two synthetic buckets, JSON round trip."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from polyalign_ray.features import FEATURE_NAMES, features_matrix
from polyalign_ray.references import ReferenceSet, build_references, support_distance
from polyalign_ray.schema import parent_buckets

LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)
BAND = (0.1, 0.9)
TOL = 1e-12
EN_QA = "en|single|qa|short"


def tiny_reference() -> ReferenceSet:
    """Two features over 11 train rows of one bucket: a = 0, 1, ..., 10 and b = 3 for every row.

    np.quantile (linear) puts quantile q at sorted position q * (n - 1) = 10 q, so for a:
    q10 = 1, q25 = 2.5, q50 = 5, q75 = 7.5, q90 = 9 -> band [1, 9], scale max(7.5 - 2.5, 0.5) = 5.
    For b every quantile is 3 -> band [3, 3], q75 - q25 = 0 -> scale = the floor 0.5.
    One extra row with split "test" (a = 100, b = -100) must not enter the reference.
    """
    a = [float(v) for v in range(11)] + [100.0]
    b = [3.0] * 11 + [-100.0]
    return build_references(
        np.column_stack([a, b]),
        [EN_QA] * 12,
        ["train"] * 11 + ["test"],
        quantile_levels=LEVELS,
        min_count=5,
        band=BAND,
        scale_floor=0.5,
        feature_names=("a", "b"),
    )


def test_tiny_reference_quantiles_band_and_scale_by_construction() -> None:
    ref = tiny_reference()
    assert ref.counts[EN_QA] == 11
    np.testing.assert_allclose(ref.quantiles[EN_QA][:, 0], [1.0, 2.5, 5.0, 7.5, 9.0], rtol=0, atol=TOL)
    np.testing.assert_allclose(ref.quantiles[EN_QA][:, 1], [3.0] * 5, rtol=0, atol=TOL)
    lo, hi, scale = ref.band_and_scale(EN_QA)
    np.testing.assert_allclose(lo, [1.0, 3.0], rtol=0, atol=TOL)
    np.testing.assert_allclose(hi, [9.0, 3.0], rtol=0, atol=TOL)
    # a: q75 - q25 = 5 is above the floor; b: q75 - q25 = 0 -> the floor 0.5 applies
    np.testing.assert_allclose(scale, [5.0, 0.5], rtol=0, atol=TOL)


def test_distance_golden_values_outside_the_band() -> None:
    """With band a in [1, 9] (s = 5) and b in [3, 3] (s = 0.5, the floor):

    x = (11, 2):     a above by (11 - 9)/5 = 0.4;    b below by (3 - 2)/0.5 = 2     -> d = (0.4 + 2)/2 = 1.2
    x = (-1.5, 3.25): a below by (1 + 1.5)/5 = 0.5;  b above by (3.25 - 3)/0.5 = 0.5 -> d = 0.5
    x = (20, 3):     a above by (20 - 9)/5 = 2.2;    b inside -> 0                 -> d = 1.1
    Without the floor b's scale would be 0 and the first two distances infinite.
    """
    ref = tiny_reference()
    x = np.array([[11.0, 2.0], [-1.5, 3.25], [20.0, 3.0]])
    d = ref.distance(x, [EN_QA] * 3)
    np.testing.assert_allclose(d, [1.2, 0.5, 1.1], rtol=0, atol=TOL)


def test_distance_is_exactly_zero_inside_the_band_including_its_edges() -> None:
    ref = tiny_reference()
    x = np.array([[5.0, 3.0], [1.0, 3.0], [9.0, 3.0], [2.0, 3.0]])
    d = ref.distance(x, [EN_QA] * 4)
    assert d.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert ref.inside_band(x, [EN_QA] * 4).all()


def test_inside_band_marks_each_feature() -> None:
    ref = tiny_reference()
    x = np.array([[11.0, 3.0], [5.0, 2.0], [0.999, 3.001]])
    np.testing.assert_array_equal(
        ref.inside_band(x, [EN_QA] * 3), [[False, True], [True, False], [False, False]]
    )


def test_support_distance_matches_the_formula_elementwise() -> None:
    """d = mean_f max(0, (lo - x)/s, (x - hi)/s): with lo = (0, 0, 0), hi = (1, 1, 1), s = (1, 2, 4) and
    x = (3, -4, 0.5): (3 - 1)/1 = 2, (0 + 4)/2 = 2, inside -> 0  => d = 4/3."""
    d = support_distance(np.array([[3.0, -4.0, 0.5]]), np.zeros(3), np.ones(3), np.array([1.0, 2.0, 4.0]))
    np.testing.assert_allclose(d, [4 / 3], rtol=0, atol=TOL)


def test_distance_is_zero_exactly_when_every_feature_is_inside_the_band() -> None:
    """Invariant: d(x, b) == 0 iff inside_band(x, b) holds for every feature, and d > 0 otherwise."""
    features, buckets, splits = _mixed_split_data()
    ref = _build(features, buckets, splits)
    rng = np.random.default_rng(4)
    # narrow probes (mostly inside) and wide ones (mostly outside) so both outcomes occur
    probe = np.vstack(
        [rng.normal(0, 0.3, (200, len(FEATURE_NAMES))), rng.normal(0, 2, (200, len(FEATURE_NAMES)))]
    )
    probe[:50] = np.median(features[:30], axis=0)  # the bucket's own median: inside on every feature
    probe_buckets = [OUTLIER_BUCKET] * 400
    d = ref.distance(probe, probe_buckets)
    inside = ref.inside_band(probe, probe_buckets).all(axis=1)
    assert inside.any() and (~inside).any()
    np.testing.assert_array_equal(d == 0.0, inside)
    assert np.all(d >= 0.0)


def test_distance_keeps_row_order_across_buckets() -> None:
    """Rows of two buckets, interleaved, get the distance of their own bucket (the per-node scatter is right)."""
    rng = np.random.default_rng(3)
    zh = "zh|multi|dialogue|long"
    feats = np.vstack([rng.normal(0, 1, (30, 2)), rng.normal(10, 1, (30, 2))])
    ref = build_references(
        feats,
        [EN_QA] * 30 + [zh] * 30,
        ["train"] * 60,
        quantile_levels=LEVELS,
        min_count=5,
        band=BAND,
        scale_floor=0.01,
        feature_names=("a", "b"),
    )
    x = rng.normal(5, 4, (10, 2))
    buckets = [EN_QA if i % 2 == 0 else zh for i in range(10)]
    d = ref.distance(x, buckets)
    for i, bucket in enumerate(buckets):
        alone = support_distance(x[i : i + 1], *ref.band_and_scale(bucket))
        assert d[i] == pytest.approx(alone[0], abs=TOL)
    assert len(set(np.round(d, 9))) > 1


# --------------------------------------------------------------------------------------------------- train only

OUTLIER_BUCKET = "en|single|qa|short"


def _mixed_split_data() -> tuple[np.ndarray, list[str], list[str]]:
    rng = np.random.default_rng(0)
    layout = [
        (OUTLIER_BUCKET, "train", 30),
        (OUTLIER_BUCKET, "val", 6),
        (OUTLIER_BUCKET, "test", 6),
        ("en|multi|dialogue|medium", "train", 25),
        ("en|multi|dialogue|medium", "test", 5),
        ("zh|single|assistant|long", "train", 40),
        ("zh|single|assistant|long", "val", 8),
    ]
    buckets, splits = [], []
    for bucket, split, n in layout:
        buckets += [bucket] * n
        splits += [split] * n
    return rng.normal(0.0, 1.0, (len(buckets), len(FEATURE_NAMES))), buckets, splits


def _build(features, buckets, splits) -> ReferenceSet:
    return build_references(
        features, buckets, splits, quantile_levels=LEVELS, min_count=20, band=BAND, scale_floor=1e-3
    )


@pytest.mark.parametrize("split", ["test", "val"])
def test_a_non_train_outlier_leaves_every_quantile_bit_identical(split: str) -> None:
    features, buckets, splits = _mixed_split_data()
    base = _build(features, buckets, splits)
    outlier = np.full((1, len(FEATURE_NAMES)), 1e6)
    with_outlier = _build(
        np.vstack([features, outlier, outlier]),
        [*buckets, OUTLIER_BUCKET, "zh|multi|qa|xlong"],  # the second one's bucket has no train rows at all
        [*splits, split, split],
    )
    assert set(with_outlier.quantiles) == set(base.quantiles)
    assert dict(with_outlier.counts) == dict(base.counts)
    for node, q in base.quantiles.items():
        assert np.array_equal(with_outlier.quantiles[node], q), node


def test_the_same_outlier_in_train_moves_its_nodes_and_only_them() -> None:
    """Control for the test above: as a train row, the outlier changes the quantiles of its bucket and all its
    parents, and leaves the nodes of other languages/tracks alone."""
    features, buckets, splits = _mixed_split_data()
    base = _build(features, buckets, splits)
    outlier = np.full((1, len(FEATURE_NAMES)), 1e6)
    moved = _build(np.vstack([features, outlier]), [*buckets, OUTLIER_BUCKET], [*splits, "train"])
    for node in parent_buckets(OUTLIER_BUCKET):
        assert moved.counts[node] == base.counts[node] + 1
        assert not np.array_equal(moved.quantiles[node], base.quantiles[node]), node
        # the top of the band moves up on every feature
        assert np.all(moved.quantiles[node][-1] > base.quantiles[node][-1]), node
    untouched = set(base.quantiles) - set(parent_buckets(OUTLIER_BUCKET))
    assert untouched  # zh nodes and en|multi|... nodes
    for node in untouched:
        assert np.array_equal(moved.quantiles[node], base.quantiles[node]), node


def test_counts_are_train_rows_of_the_node_and_its_descendants() -> None:
    features, buckets, splits = _mixed_split_data()
    ref = _build(features, buckets, splits)
    assert ref.counts[OUTLIER_BUCKET] == 30
    assert ref.counts["en|single|qa|*"] == 30
    assert ref.counts["en|*|*|*"] == 55  # 30 + 25
    assert ref.counts["zh|*|*|*"] == 40
    for node, q in ref.quantiles.items():
        assert q.shape == (len(LEVELS), len(FEATURE_NAMES)), node
        assert np.all(np.diff(q, axis=0) >= 0), node  # quantiles are monotone in the level


# --------------------------------------------------------------------------------------------------- backoff


def backoff_reference() -> ReferenceSet:
    """min_count = 20 and these train rows (plus 30 test rows in en|single|qa|short, which must not count):

    en|single|qa|long          25  -> itself, level 0
    en|single|qa|short          3  -> en|single|qa|* (28), level 1
    en|multi|dialogue|short     2  -> en|multi|dialogue|* (2) too small -> en|multi|*|* (2 + 18 = 20), level 2
    en|multi|assistant|medium  18
    zh|single|qa|short          5  -> zh|single|qa|* (5), zh|single|*|* (5) too small -> zh|*|*|* (21), level 3
    zh|multi|dialogue|long     16
    xx|single|qa|short          4  -> nothing reaches 20: broadest node xx|*|*|* (4), level 3, sufficient False
    """
    layout = [
        ("en|single|qa|long", "train", 25),
        ("en|single|qa|short", "train", 3),
        ("en|single|qa|short", "test", 30),
        ("en|multi|dialogue|short", "train", 2),
        ("en|multi|assistant|medium", "train", 18),
        ("zh|single|qa|short", "train", 5),
        ("zh|multi|dialogue|long", "train", 16),
        ("xx|single|qa|short", "train", 4),
    ]
    buckets, splits = [], []
    for bucket, split, n in layout:
        buckets += [bucket] * n
        splits += [split] * n
    features = np.random.default_rng(1).normal(0.0, 1.0, (len(buckets), 1))
    return build_references(
        features,
        buckets,
        splits,
        quantile_levels=LEVELS,
        min_count=20,
        band=BAND,
        scale_floor=1e-3,
        feature_names=("a",),
    )


@pytest.mark.parametrize(
    ("bucket", "node", "level", "bucket_count", "sufficient"),
    [
        ("en|single|qa|long", "en|single|qa|long", 0, 25, True),
        ("en|single|qa|short", "en|single|qa|*", 1, 3, True),
        ("en|single|qa|medium", "en|single|qa|*", 1, 0, True),  # no rows of its own
        ("en|multi|dialogue|short", "en|multi|*|*", 2, 2, True),  # 20 == min_count is enough
        ("zh|single|qa|short", "zh|*|*|*", 3, 5, True),
        ("zh|multi|dialogue|long", "zh|*|*|*", 3, 16, True),
        ("xx|single|qa|short", "xx|*|*|*", 3, 4, False),
    ],
)
def test_backoff_resolution(bucket: str, node: str, level: int, bucket_count: int, sufficient: bool) -> None:
    r = backoff_reference().resolve(bucket)
    assert (r.bucket, r.node, r.level, r.bucket_count, r.sufficient) == (
        bucket,
        node,
        level,
        bucket_count,
        sufficient,
    )


def test_distance_uses_the_resolved_parent_node() -> None:
    ref = backoff_reference()
    x = np.array([[-3.0], [0.1], [2.5]])
    expected = support_distance(x, *ref.band_and_scale("en|single|qa|*"))
    np.testing.assert_array_equal(ref.distance(x, ["en|single|qa|short"] * 3), expected)
    own = support_distance(x, *ref.band_and_scale("en|single|qa|short"))
    assert not np.array_equal(own, expected)  # the backoff is observable


def test_resolutions_are_written_to_json() -> None:
    ref = backoff_reference()
    data = json.loads(json.dumps(ref.to_json(resolutions=["en|single|qa|short", "xx|single|qa|short"])))
    assert data["resolution"] == {
        "en|single|qa|short": {
            "bucket": "en|single|qa|short",
            "node": "en|single|qa|*",
            "level": 1,
            "bucket_count": 3,
            "sufficient": True,
        },
        "xx|single|qa|short": {
            "bucket": "xx|single|qa|short",
            "node": "xx|*|*|*",
            "level": 3,
            "bucket_count": 4,
            "sufficient": False,
        },
    }
    assert data["nodes"]["en|single|qa|*"]["count"] == 28
    assert data["nodes"]["en|single|qa|short"]["count"] == 3  # the 30 test rows do not count
    assert ref.to_json()["resolution"] == {}


# --------------------------------------------------------------------------------------------------- errors


def test_language_without_train_data_raises_a_helpful_key_error() -> None:
    ref = backoff_reference()
    with pytest.raises(KeyError) as info:
        ref.resolve("de|single|qa|short")
    message = info.value.args[0]
    assert "no train records" in message
    assert "'de'" in message
    assert "de|single|qa|short" in message
    with pytest.raises(KeyError, match="no train records"):
        ref.distance(np.zeros((1, 1)), ["de|single|qa|short"])


def test_language_with_only_test_rows_has_no_reference() -> None:
    features = np.arange(30, dtype=np.float64).reshape(30, 1)
    ref = build_references(
        features,
        [EN_QA] * 25 + ["fr|single|qa|short"] * 5,
        ["train"] * 25 + ["test"] * 5,
        quantile_levels=LEVELS,
        min_count=20,
        band=BAND,
        scale_floor=1e-3,
        feature_names=("a",),
    )
    assert not any(node.startswith("fr|") for node in ref.quantiles)
    with pytest.raises(KeyError, match="'fr'"):
        ref.resolve("fr|single|qa|short")


# --------------------------------------------------------------------------------------------------- JSON


def test_save_load_round_trip_gives_identical_distances(tmp_path) -> None:
    features, buckets, splits = _mixed_split_data()
    ref = _build(features, buckets, splits)
    path = tmp_path / "references.json"
    ref.save(path, resolutions=sorted(set(buckets)))
    loaded = ReferenceSet.load(path)
    assert loaded.feature_names == ref.feature_names == FEATURE_NAMES
    assert loaded.quantile_levels == ref.quantile_levels
    assert (loaded.min_count, loaded.band, loaded.scale_floor) == (ref.min_count, ref.band, ref.scale_floor)
    assert dict(loaded.counts) == dict(ref.counts)
    for node, q in ref.quantiles.items():
        assert np.array_equal(loaded.quantiles[node], q), node
    probe = np.random.default_rng(9).normal(0.0, 3.0, (50, len(FEATURE_NAMES)))
    four = ("en|single|qa|short", "en|multi|dialogue|medium", "zh|single|assistant|long", "zh|multi|qa|short")
    probe_buckets = [four[i % 4] for i in range(50)]
    d = ref.distance(probe, probe_buckets)
    assert np.array_equal(loaded.distance(probe, probe_buckets), d)
    assert d.max() > 0  # the probe is not trivially inside every band
    written = json.loads(path.read_text(encoding="utf-8"))
    assert written["resolution"]["zh|single|assistant|long"]["level"] == 0


def test_tiny_reference_round_trips_through_json_dict() -> None:
    ref = tiny_reference()
    again = ReferenceSet.from_json(json.loads(json.dumps(ref.to_json())))
    x = np.array([[11.0, 2.0], [5.0, 3.0]])
    assert np.array_equal(again.distance(x, [EN_QA] * 2), ref.distance(x, [EN_QA] * 2))
    assert again.distance(x, [EN_QA] * 2)[0] == pytest.approx(1.2, abs=TOL)


# --------------------------------------------------------------------------------------------------- separation

EN_WORDS = (
    *("hi", "hello", "yes", "no", "sure", "thanks", "okay", "cool", "great", "maybe"),
    *("what", "why", "how", "you", "me", "we", "it", "that", "this"),
)
ZH_CHARS = "我们今天天气很好去公园散步学习工作中国人民生活发展经济社会文化历史问题方法时间"
EN_BUCKET = "en|single|dialogue|short"
ZH_BUCKET = "zh|single|assistant|long"


def _en_chat(rng: random.Random) -> str:
    text = " ".join(rng.choice(EN_WORDS) for _ in range(rng.randint(2, 7)))
    return text[0].upper() + text[1:] + rng.choice(["?", "!", "."])


def _zh_long(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(4, 8)):
        k = rng.randint(12, 30)
        body = "".join(rng.choice(ZH_CHARS) for _ in range(k))
        cut = rng.randint(4, k - 4)
        out.append(body[:cut] + "，" + body[cut:] + "。")
    return "".join(out)


def test_human_answers_are_closer_to_their_own_bucket_than_to_another() -> None:
    """Two synthetic buckets (random.Random(0)): short English chat (2-7 words, one sentence) and long Chinese
    answers (4-8 sentences of 12-30 ideographs). 60 train + 30 held-out (test split) each; the held-out answers of
    a bucket lie on average well inside its support (small mean distance) and far outside the other bucket's."""
    rng = random.Random(0)
    en = [_en_chat(rng) for _ in range(90)]
    zh = [_zh_long(rng) for _ in range(90)]
    features = features_matrix(en + zh)
    ref = build_references(
        features,
        [EN_BUCKET] * 90 + [ZH_BUCKET] * 90,
        (["train"] * 60 + ["test"] * 30) * 2,
        quantile_levels=(0.05, *LEVELS, 0.95),
        min_count=20,
        band=BAND,
        scale_floor=0.05,
    )
    assert ref.resolve(EN_BUCKET).level == 0 and ref.resolve(ZH_BUCKET).level == 0
    en_held, zh_held = features[60:90], features[150:180]
    # d(answers, support): rows are whose answers, columns which bucket's support
    en_on_en = ref.distance(en_held, [EN_BUCKET] * 30).mean()
    zh_on_en = ref.distance(zh_held, [EN_BUCKET] * 30).mean()
    zh_on_zh = ref.distance(zh_held, [ZH_BUCKET] * 30).mean()
    en_on_zh = ref.distance(en_held, [ZH_BUCKET] * 30).mean()
    assert en_on_en < zh_on_en / 10  # English support: own answers much closer than Chinese ones
    assert zh_on_zh < en_on_zh / 10  # Chinese support: own answers much closer than English ones
    assert en_on_en < 0.25 and zh_on_zh < 0.25
    assert zh_on_en > 1.0 and en_on_zh > 1.0
