"""Per-bucket shards (``bucket_shards.py``): what a worker reads from them equals the in-memory stores, the index
refuses overlapping parts, reading is bounded by the drawn rows, and draws through shards follow the bucket shares
p(b) ∝ m_b · n_b^α computed here from the rows themselves."""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from polyalign_ray.bucket_shards import (
    BucketShardReader,
    build_index,
    commit_shards,
    staging_directory,
    write_bucket_shards,
    write_parts,
)
from polyalign_ray.hdpo_data import PAIR_SCHEMA, InMemoryPairs, ShardedPairs, pairs_from_table
from polyalign_ray.sampler import BucketBalancedSampler
from polyalign_ray.sft_data import TOKENIZED_SCHEMA, SFTExamples, ShardedSFTExamples

BUCKET_SIZES = {
    "en|single|qa|short": 37,
    "en|multi|dialogue|long": 5,
    "zh|single|qa|medium": 90,
    "zh|x|y|z": 1,
}


def tokenized_table(seed: int = 0) -> pa.Table:
    """Rows of :data:`TOKENIZED_SCHEMA` in shuffled order, ids unique, token lists of varied length."""
    rng = random.Random(seed)
    rows = []
    for bucket, size in BUCKET_SIZES.items():
        for k in range(size):
            length = rng.randint(1, 40)
            ids = [rng.randint(0, 500) for _ in range(length)]
            cut = rng.randint(0, length - 1)
            rows.append(
                {
                    "id": f"{bucket[:2]}-{rng.getrandbits(40):010x}-{k}",
                    "bucket_id": bucket,
                    "input_ids": ids,
                    "labels": [-100] * cut + ids[cut:],
                }
            )
    rng.shuffle(rows)
    return pa.Table.from_pylist(rows, schema=TOKENIZED_SCHEMA)


def write_in_slices(table: pa.Table, directory, slices: int, **options) -> dict:
    """As Ray Data does: the rows sorted by (bucket, id), cut into slices that each writer task writes alone
    (a bucket may span slices), then one index from all their part rows."""
    ordered = table.sort_by([("bucket_id", "ascending"), ("id", "ascending")])
    staging = staging_directory(directory)
    size = math.ceil(ordered.num_rows / slices)
    parts = pa.concat_tables(
        [
            write_parts(ordered.slice(i * size, size), staging, key_column="id", **options)
            for i in range(slices)
        ]
    )
    index = build_index(parts, key_column="id", **options)
    commit_shards(staging, directory, index)
    return index


@pytest.mark.parametrize("slices", [1, 7])
def test_sharded_examples_equal_the_in_memory_store_row_for_row(tmp_path, slices: int) -> None:
    table = tokenized_table()
    index = write_in_slices(table, tmp_path / "shards", slices, rows_per_read=4)
    assert index["rows"] == table.num_rows
    memory, sharded = SFTExamples.from_table(table), ShardedSFTExamples(str(tmp_path / "shards"))
    assert sharded.sizes() == memory.sizes() == BUCKET_SIZES
    draws = [(b, i) for b, n in BUCKET_SIZES.items() for i in range(n)]
    random.Random(1).shuffle(draws)
    for (ids_m, labels_m), (ids_s, labels_s) in zip(memory.take(draws), sharded.take(draws), strict=True):
        assert np.array_equal(ids_m, ids_s) and np.array_equal(labels_m, labels_s)
        assert ids_s.dtype == np.int64
    assert not (tmp_path / "shards.writing").exists()


def test_index_refuses_overlapping_parts_and_reader_refuses_missing_rows(tmp_path) -> None:
    table = tokenized_table().sort_by([("bucket_id", "ascending"), ("id", "ascending")])
    staging = staging_directory(tmp_path / "s")
    first = write_parts(table.slice(0, 50), staging, key_column="id")
    again = write_parts(table.slice(40, 20), staging, key_column="id")  # rows 40-49 written twice
    with pytest.raises(ValueError, match="overlap"):
        build_index(pa.concat_tables([first, again]), key_column="id")
    write_bucket_shards(table, tmp_path / "ok", key_column="id")
    reader = BucketShardReader(tmp_path / "ok")
    with pytest.raises(IndexError, match=re.escape("row 5 of bucket 'en|multi|dialogue|long'")):
        reader.row_batch("en|multi|dialogue|long", 5)
    with pytest.raises(FileNotFoundError, match="no shard index"):
        BucketShardReader(tmp_path / "nothing")


def test_a_rewrite_replaces_the_folder_and_leaves_no_stale_parts(tmp_path) -> None:
    table = tokenized_table()
    write_bucket_shards(table, tmp_path / "s", key_column="id")
    smaller = table.filter(pa.compute.not_equal(table["bucket_id"], "zh|single|qa|medium"))
    write_bucket_shards(smaller, tmp_path / "s", key_column="id")
    assert "zh|single|qa|medium" not in BucketShardReader(tmp_path / "s").sizes()
    assert len(list((tmp_path / "s" / "parts").iterdir())) == len(BUCKET_SIZES) - 1


def test_reading_is_bounded_by_the_drawn_rows(tmp_path) -> None:
    """A worker reads the record batches of the rows it draws, not the folder: 8 draws from 4-row batches read at
    most 8 batches, and the cache never holds more than ``cached_batches``."""
    table = tokenized_table()
    write_bucket_shards(table, tmp_path / "s", key_column="id", rows_per_read=4)
    total = sum(p.stat().st_size for p in (tmp_path / "s" / "parts").rglob("*.arrow"))
    reader = BucketShardReader(tmp_path / "s", cached_batches=2, open_files=1)
    draws = [("zh|single|qa|medium", i) for i in (0, 9, 17, 33, 41, 58, 66, 89)]
    reader.take(draws)
    biggest_batch = max(
        reader._reader(p).get_batch(k).nbytes
        for p in reader._parts["zh|single|qa|medium"]
        for k in range(reader._reader(p).num_record_batches)
    )
    assert 0 < reader.bytes_read <= len(draws) * biggest_batch < total / 4
    assert len(reader._batches) <= 2 and len(reader._files) <= 1


def test_draws_through_shards_follow_the_bucket_shares(tmp_path) -> None:
    """p(b) = m_b · n_b^α / Σ, computed here from the rows' bucket column; 20,000 slots drawn by the sampler over the
    shards' sizes and read back: each bucket's share of the rows read (by their own bucket column, not the
    draw's label) is within 4.5 binomial standard deviations of p(b)."""
    table = tokenized_table()
    write_bucket_shards(table, tmp_path / "s", key_column="id")
    alpha, multipliers = 0.5, {"en|multi|dialogue|long": 3.0, "zh|x|y|z": 0.0}
    counts = Counter(table["bucket_id"].to_pylist())
    mass = {b: multipliers.get(b, 1.0) * n**alpha for b, n in counts.items()}
    expected = {b: m / sum(mass.values()) for b, m in mass.items()}
    store = ShardedSFTExamples(str(tmp_path / "s"))
    sampler = BucketBalancedSampler(
        store.sizes(), batch_size=50, alpha=alpha, multipliers=multipliers, seed=3, num_steps=400
    )
    read = Counter()
    row_bucket = {row["id"]: row["bucket_id"] for row in table.select(["id", "bucket_id"]).to_pylist()}
    for draws in sampler:
        rows = store.reader.take(draws)
        read.update(row_bucket[i] for i in rows["id"].to_pylist())
    n = sum(read.values())
    assert n == 20_000
    for bucket, p in expected.items():
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(read[bucket] / n - p) <= 4.5 * sigma + 1e-12, (bucket, read[bucket] / n, p)
    assert read["zh|x|y|z"] == 0


def test_sharded_pairs_equal_the_in_memory_pairs(tmp_path) -> None:
    rng = random.Random(0)
    rows = []
    for k in range(60):
        ids = [rng.randint(0, 50) for _ in range(rng.randint(2, 9))]
        rows.append(
            {
                "pair_id": f"r{rng.getrandbits(32):08x}#{k}",
                "id": "x",
                "bucket_id": rng.choice(["a", "b", "c"]),
                "chosen_input_ids": ids,
                "chosen_labels": ids,
                "rejected_input_ids": ids[::-1],
                "rejected_labels": ids[::-1],
                "chosen_distance": rng.random(),
                "rejected_distance": rng.random() + 1,
                "weight": rng.random() * 2,
                "reference_chosen_logps": -rng.random(),
                "reference_rejected_logps": float("nan"),
            }
        )
    table = pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)
    write_bucket_shards(table, tmp_path / "p", key_column="pair_id", sum_columns=["weight"])
    memory, sharded = InMemoryPairs(pairs_from_table(table)), ShardedPairs(str(tmp_path / "p"))
    assert sharded.sizes() == memory.sizes()
    assert sharded.weight_mean() == pytest.approx(np.mean([r["weight"] for r in rows]), rel=1e-12)
    draws = [(b, i) for b, n in memory.sizes().items() for i in range(n)]
    for m, s in zip(memory.take(draws), sharded.take(draws), strict=True):
        assert m.pair_id == s.pair_id and m.weight == s.weight
        assert np.array_equal(m.rejected_ids, s.rejected_ids)
        assert math.isnan(s.reference_rejected_logps)
    with pytest.raises(ValueError, match="not pairs"):
        write_bucket_shards(tokenized_table(), tmp_path / "t", key_column="id")
        ShardedPairs(str(tmp_path / "t"))
