"""Critic scoring throughput: the in-process ``CriticScorer`` vs. ``CriticPool`` with 1 and 2 actors, and the overlap
of pool scoring with a concurrent producer.

Items: ``--items`` bilingual (text, bucket) pairs (default 20,000), generated here with a fixed seed: half English,
half Chinese; about 55% short chat answers (one or two sentences) and 45% longer answers (3-10 sentences, some as
numbered lists over several lines). Each item's bucket is ``<lang>|single|dialogue|<length bin>``, the bin from
``schema.length_bin(count_length_tokens(text))``; with ``--bundle`` a bucket the bundle does not know is mapped
to one of the same language and bin (or language) that it does know.

The critic: by default a bench-local bundle trained here (``train_critic`` with the default ``CriticConfig``
dimensions: hashed n-grams, 65,536 hash buckets, text dim 64, bucket dim 16, hidden 128, hand features on; only
``epochs`` is lowered, which does not change the cost of scoring) on human answers from the same generator and
drifted "model" answers (repetitions, run-on concatenations, truncations, the other language). ``--bundle DIR``
uses a saved bundle instead, e.g. ``runs/demo/critic``.

Measurements, all on one local Ray instance (``ray.init(num_cpus=--num-cpus, include_dashboard=False)``):

1. Throughput (items/s), ``--repeats`` times, interleaved: the in-process scorer (``CriticScorer(bundle).score``
   on batches of ``--batch-size`` in the driver), the pool with 1 actor and the pool with 2 actors
   (``CriticPool(num_actors=k, max_in_flight=--max-in-flight, num_cpus=--actor-cpus)``; all batches submitted,
   results collected in order as they come). Start-up (building the scorer; for a pool: creating it until every
   actor has returned one warm-up batch) is timed on its own and excluded from items/s. Every pool result is
   checked: tickets in submission order, scores equal to the in-process scores.
2. Per-call overhead: the latency of one small call, in-process and through a 1-actor pool (submit + collect).
3. Where the scorer's time goes: hand features (``features_matrix``), hashed n-gram ids, and the network, per item,
   by language and length class.
4. Overlap with a producer that stands for rollout generation, emitting one batch per ``--produce-ms``
   (default: the in-process scorer's median time per batch, so producing and scoring cost about the same):
   ``sleep`` (``time.sleep``: a GPU-bound generator, the driver idle while it waits) and ``cpu`` (a pure-Python
   loop in the driver, calibrated to the same time on an idle core: a CPU-bound generator that holds the GIL).
   (a) sequential: produce all batches, then score all through the pool; (b) overlapped: submit each batch as
   soon as it is produced and keep producing, taking finished results whenever ``ready()`` says so
   (``--collect ready``) or only at the end (``--collect end``). Reported: both wall times, their ratio
   (overlapped / sequential), the ideal ratio max(P, S) / (P + S), time the producer spent blocked in
   ``submit`` (backpressure) and the tail after the last batch; order and scores are checked as above. Each
   mode runs ``--overlap-rounds`` times (default 2) in ABBA order and the figures are means.

Load: every measurement records the 1-minute load average at its start and end and the CPU (in cores) used by this
process tree (the driver, Ray's processes and the actors, sampled from /proc every 0.5 s) and by everything else
(busy time from /proc/stat minus this tree), and a CPU-speed probe before and after (a fixed Python loop, best of
3 x ~10 ms): on this VM the same loop ran 1.7x faster or slower minutes apart on an idle machine, with no steal
time shown. The machine may be shared: compare figures with that in view.

Run from the repository root::

    .venv/bin/python bench/critic_pool.py --report bench/results/critic_pool.md --jsonl bench/results/critic_pool.jsonl
    .venv/bin/python bench/critic_pool.py --bundle runs/demo/critic
    .venv/bin/python bench/critic_pool.py --quick          # a smoke test (about 2 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import harness
import numpy as np

BUSY_OTHER_WARNING = 0.2  # cores used by other processes above which a figure is flagged in the report


# ----------------------------------------------------------------------------------------------------------------
# Machine load
# ----------------------------------------------------------------------------------------------------------------
def system_busy_s() -> float:
    """CPU seconds the whole machine has been busy (user, nice, system, irq, softirq; not idle, iowait, steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / harness.CLK_TCK


def cpu_probe() -> float:
    """This core's speed now: millions of :func:`spin` iterations per second, best of 3 short runs (~30 ms).

    The VM's CPU speed drifts (the same loop took 230-420 ms minutes apart on an idle machine, with no steal
    time reported), so every measurement records this before and after."""
    n = 100_000
    return n / min(_timed(lambda: spin(n)) for _ in range(3)) / 1e6


class Meter:
    """Wall time and load of one measurement: 1-min loadavg at start and end; CPU cores used by this process tree
    (sampled every ``interval`` s; a process of the tree that starts later counts from 0) and by every other
    process (machine busy time from /proc/stat minus the tree's)."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.root = os.getpid()
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.ours: set[int] = set()
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, initial: bool = False) -> None:
        procs = harness.read_processes()
        self.ours |= harness.process_tree(procs, self.root)
        for pid in self.ours:
            if pid in procs:
                self.first.setdefault(pid, procs[pid].cpu_s if initial else 0.0)
                self.last[pid] = procs[pid].cpu_s
                self.names[pid] = procs[pid].name

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Meter:
        self.probe0 = cpu_probe()
        self.load0 = os.getloadavg()[0]
        self.busy0 = system_busy_s()
        self._sample(initial=True)
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        self._sample()
        self.busy = system_busy_s() - self.busy0
        self.load1 = os.getloadavg()[0]
        self.probe1 = cpu_probe()

    def load(self) -> dict[str, Any]:
        ours = sum(self.last[p] - self.first[p] for p in self.last)
        wall = max(self.wall, 1e-9)
        roles = {"driver": 0.0, "actors": 0.0, "ray_other": 0.0}
        for pid in self.last:
            role = (
                "driver"
                if pid == self.root
                else "actors"
                if self.names.get(pid, "").startswith("ray::CriticSc")
                else "ray_other"
            )
            roles[role] += self.last[pid] - self.first[pid]
        return {
            "loadavg_1m": [round(self.load0, 2), round(self.load1, 2)],
            "tree_cpu_cores": round(ours / wall, 2),
            "other_cpu_cores": round(max(self.busy - ours, 0.0) / wall, 2),
            "machine_cpu_cores": round(self.busy / wall, 2),
            "tree_cpu_cores_by_role": {k: round(v / wall, 2) for k, v in roles.items()},
            "cpu_probe_mit_s": [round(self.probe0, 1), round(self.probe1, 1)],
        }


def settle(args: argparse.Namespace) -> dict[str, Any]:
    """Before a measurement: wait (up to ``--wait-quiet`` s) until other processes use less than
    ``--quiet-threshold`` cores over a 2-s window; what it waited and saw goes into the measurement's row."""
    if args.wait_quiet <= 0:
        return {}
    start = time.perf_counter()
    while True:
        with Meter(interval=1.0) as meter:
            time.sleep(2.0)
        other = meter.load()["other_cpu_cores"]
        if other < args.quiet_threshold or time.perf_counter() - start > args.wait_quiet:
            return {"waited_s": round(time.perf_counter() - start, 1), "other_cpu_cores_before": other}


# ----------------------------------------------------------------------------------------------------------------
# Synthetic bilingual answers
# ----------------------------------------------------------------------------------------------------------------
def word_list(text: str) -> list[str]:
    return text.split()


EN_OPENERS = ["Sure", "Yes", "No", "Honestly", "Well", "Of course", "Thanks", "Good question", "Maybe", "Oh"]
EN_WORDS = word_list(
    "i you we they it this that the a an some any my your our their what when where why how which who is are "
    "was were be been have has had do does did can could will would should may might must not really very "
    "quite just also still already never always often sometimes usually today tomorrow yesterday weekend "
    "morning evening night time day week year people friend family teacher student doctor city home work "
    "school office market park river mountain train bus car phone computer book movie music song game food "
    "tea coffee water rice bread dinner lunch breakfast weather rain sun wind snow price money plan idea "
    "problem answer question reason way place thing part life story news health sleep exercise travel "
    "think know feel want need like love try help make take give find keep start stop finish learn read "
    "write watch listen talk ask tell explain remember forget visit buy pay cook walk run open close good "
    "bad new old big small long short easy hard important simple different same happy tired busy free "
    "early late quickly slowly because but so if then and or although while after before during about "
    "with without for from into over under between around"
)
ZH_WORDS = word_list(
    "我 你 他 她 我们 你们 他们 这个 那个 什么 怎么 为什么 哪里 时候 今天 明天 昨天 周末 早上 晚上 下午 "
    "天气 工作 学习 朋友 家人 老师 学生 医生 城市 公司 学校 房间 地方 生活 问题 办法 建议 原因 事情 东西 "
    "电影 音乐 手机 电脑 咖啡 茶 米饭 水果 晚饭 午饭 早饭 身体 健康 运动 跑步 旅行 睡觉 休息 时间 价格 "
    "觉得 知道 喜欢 需要 希望 可以 应该 可能 已经 还是 一起 非常 有点 真的 当然 比较 特别 其实 一般 "
    "看 听 说 写 读 吃 喝 买 做 去 来 找 用 想 试试 帮助 解释 记得 忘记 开始 结束 准备 打算 "
    "好 不错 简单 重要 方便 麻烦 容易 困难 新 旧 大 小 多 少 快 慢 忙 累 开心 "
    "因为 所以 但是 如果 虽然 然后 而且 或者 不过 就 也 都 还 很 太 最 在 是 有 没有 了 的 吗 呢 吧"
)
EN_END = [".", ".", ".", "!", "?"]
ZH_END = ["。", "。", "。", "！", "？"]
ZH_NUMERALS = "一二三四五六七八九十"


def sentence_words(
    rng: random.Random,
    vocabulary: list[str],
    lo: int,
    hi: int,
    *,
    comma: str,
    comma_after: int,
    comma_share: float,
) -> list[str]:
    """The words of one sentence of ``lo``-``hi`` words, with a comma inside (in ``comma_share`` of sentences
    longer than ``comma_after`` words) and a number (in 10%): the draws both languages make, in the same order."""
    words = [rng.choice(vocabulary) for _ in range(rng.randint(lo, hi))]
    if len(words) > comma_after and rng.random() < comma_share:
        words[rng.randrange(2, len(words) - 2)] += comma
    if rng.random() < 0.1:
        words.insert(rng.randrange(len(words)), str(rng.randint(2, 500)))
    return words


def en_sentence(rng: random.Random, lo: int, hi: int) -> str:
    text = " ".join(sentence_words(rng, EN_WORDS, lo, hi, comma=",", comma_after=6, comma_share=0.4))
    if rng.random() < 0.3:
        text = f"{rng.choice(EN_OPENERS)}, {text}"
    return text[0].upper() + text[1:] + rng.choice(EN_END)


def zh_sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = sentence_words(rng, ZH_WORDS, lo, hi, comma="，", comma_after=5, comma_share=0.5)
    return "".join(words) + rng.choice(ZH_END)


def answer(rng: random.Random, lang: str, long: bool) -> str:
    """One human-like answer: short chat (1-2 sentences) or long (3-10 sentences, sometimes a numbered list)."""
    sentence = en_sentence if lang == "en" else zh_sentence
    if not long:
        lo, hi = (2, 14) if lang == "en" else (2, 10)
        return (" " if lang == "en" else "").join(sentence(rng, lo, hi) for _ in range(rng.randint(1, 2)))
    lo, hi = (6, 20) if lang == "en" else (5, 16)
    parts = [sentence(rng, lo, hi) for _ in range(rng.randint(3, 10))]
    if rng.random() < 0.25:
        marks = [f"{i}. " for i in range(1, 11)] if lang == "en" else [f"{c}、" for c in ZH_NUMERALS]
        return parts[0] + "\n" + "\n".join(m + p for m, p in zip(marks, parts[1:], strict=False))
    return (" " if lang == "en" else "").join(parts)


def bucket_of(text: str, lang: str) -> str:
    from polyalign_ray.schema import count_length_tokens, length_bin

    return f"{lang}|single|dialogue|{length_bin(count_length_tokens(text))}"


def make_items(n: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """(texts, buckets, kinds) with kinds like ``en/short``."""
    rng = random.Random(seed)
    texts, buckets, kinds = [], [], []
    for _ in range(n):
        lang = "en" if rng.random() < 0.5 else "zh"
        long = rng.random() < 0.45
        text = answer(rng, lang, long)
        texts.append(text)
        buckets.append(bucket_of(text, lang))
        kinds.append(f"{lang}/{'long' if long else 'short'}")
    return texts, buckets, kinds


def map_buckets(buckets: Sequence[str], vocab: dict[str, int]) -> tuple[list[str], int]:
    """Buckets the bundle knows: same bucket, else same language and length bin, else same language."""
    cache: dict[str, str] = {}
    changed = 0
    out = []
    for b in buckets:
        if b not in cache:
            lang, *_, length = b.split("|")
            cache[b] = next(
                (v for v in sorted(vocab) if v == b),
                next(
                    (v for v in sorted(vocab) if v.startswith(f"{lang}|") and v.endswith(f"|{length}")),
                    next((v for v in sorted(vocab) if v.startswith(f"{lang}|")), b),
                ),
            )
        changed += cache[b] != b
        out.append(cache[b])
    return out, changed


def drifted(rng: random.Random, lang: str) -> str:
    """A model answer that drifts from human support (repetition, run-on, truncation, the other language) or not."""
    kind = rng.random()
    if kind < 0.25:
        unit = rng.choice(EN_WORDS) + " " if lang == "en" else rng.choice(ZH_WORDS)
        return unit * rng.randint(3, 60)
    if kind < 0.45:
        return (" " if lang == "en" else "").join(answer(rng, lang, True) for _ in range(rng.randint(2, 5)))
    if kind < 0.6:
        text = answer(rng, lang, rng.random() < 0.5)
        return text[: max(1, len(text) // rng.randint(3, 8))]
    if kind < 0.7:
        return answer(rng, "zh" if lang == "en" else "en", False)
    return answer(rng, lang, rng.random() < 0.45)


def build_bundle(directory: Path, *, records: int, epochs: int, seed: int) -> dict[str, Any]:
    """Train and save a bench-local critic bundle (default CriticConfig dimensions) on synthetic answers."""
    from polyalign_ray.config import CriticConfig
    from polyalign_ray.critic.train import build_critic_examples, save_critic_bundle, train_critic
    from polyalign_ray.features import features_matrix
    from polyalign_ray.references import build_references

    start = time.perf_counter()
    rng = random.Random(seed + 1)
    rows = []
    for i in range(records):
        lang = "en" if i % 2 == 0 else "zh"
        text = answer(rng, lang, rng.random() < 0.45)
        rows.append(
            {
                "id": f"r{i}",
                "lang": lang,
                "bucket_id": bucket_of(text, lang),
                "split": "val" if i % 5 == 0 else "train",
                "response": text,
            }
        )
    train = [r for r in rows if r["split"] == "train"]
    references = build_references(
        features_matrix([r["response"] for r in train]),
        [r["bucket_id"] for r in train],
        ["train"] * len(train),
        quantile_levels=(0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95),
        min_count=10,
        band=(0.1, 0.9),
        scale_floor=0.05,
    )
    samples = {r["id"]: [drifted(rng, r["lang"])] for r in rows}
    examples = build_critic_examples(rows, samples, references)
    config = CriticConfig(epochs=epochs, seed=seed)
    model, meta, summary = train_critic(examples, config)
    save_critic_bundle(directory, model, meta, summary, references)
    return {
        "source": "bench-local synthetic",
        "records": records,
        "examples": len(examples),
        "epochs": epochs,
        "gates_passed": summary["gates_passed"],
        "heldout_spearman": round(summary["heldout_spearman"], 3),
        "build_s": round(time.perf_counter() - start, 2),
    }


# ----------------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------------
def batches_of(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def measure_in_process(bundle: Path, texts, buckets, args) -> tuple[dict[str, Any], np.ndarray]:
    from polyalign_ray.critic.scorer import CriticScorer

    t0 = time.perf_counter()
    scorer = CriticScorer(bundle)
    construct_s = time.perf_counter() - t0
    batch_size = args.batch_size
    scorer.score(texts[:batch_size], buckets[:batch_size])  # warm-up: jieba's dictionary, first calls
    startup_s = time.perf_counter() - t0
    quiet = settle(args)
    per_batch = []
    out = []
    with Meter() as meter:
        for s, e in batches_of(len(texts), batch_size):
            b0 = time.perf_counter()
            out.append(scorer.score(texts[s:e], buckets[s:e]))
            per_batch.append(time.perf_counter() - b0)
    scores = np.concatenate(out)
    return {
        "engine": "in_process",
        "actors": 0,
        "items": len(texts),
        "wall_s": round(meter.wall, 3),
        "items_per_s": round(len(texts) / meter.wall, 1),
        "startup_s": round(startup_s, 3),
        "construct_s": round(construct_s, 3),
        "median_batch_ms": round(1e3 * statistics.median(per_batch), 2),
        **meter.load(),
        **quiet,
    }, scores


def start_pool(bundle: Path, actors: int, args) -> tuple[Any, dict[str, float]]:
    """A pool whose every actor has scored one warm-up batch; the time to get there."""
    from polyalign_ray.distributed.critic_pool import CriticPool

    t0 = time.perf_counter()
    pool = CriticPool(
        bundle,
        num_actors=actors,
        max_in_flight=args.max_in_flight,
        num_cpus=args.actor_cpus,
        num_gpus=0.0,
    )
    construct_s = time.perf_counter() - t0
    warm = ["Warm-up answer, thanks.", "谢谢你的帮助，我们明天见。"] * (args.batch_size // 2)
    for _ in range(actors):  # round robin: one batch per actor
        pool.submit(warm, ["en|single|dialogue|short"] * len(warm))
    first = None
    for _ in pool.results():
        first = first or time.perf_counter() - t0
    return pool, {
        "construct_s": round(construct_s, 3),
        "first_result_s": round(first or 0.0, 3),
        "startup_s": round(time.perf_counter() - t0, 3),
    }


def check(results: list[tuple[int, np.ndarray]], tickets: list[int], expected: np.ndarray) -> dict[str, Any]:
    got_tickets = [t for t, _ in results]
    scores = np.concatenate([s for _, s in results]) if results else np.zeros(0)
    same_len = len(scores) == len(expected)
    diff = float(np.max(np.abs(scores - expected))) if same_len and len(scores) else float("nan")
    return {
        "in_order": got_tickets == tickets,
        "all_returned": len(got_tickets) == len(tickets) and same_len,
        "max_abs_diff_vs_in_process": diff,
        "ok": got_tickets == tickets and same_len and diff <= 1e-6,
    }


def measure_pool(bundle: Path, actors: int, texts, buckets, expected, args) -> dict[str, Any]:
    pool, startup = start_pool(bundle, actors, args)
    try:
        quiet = settle(args)
        tickets, results = [], []
        with Meter() as meter:
            for s, e in batches_of(len(texts), args.batch_size):
                tickets.append(pool.submit(texts[s:e], buckets[s:e]))
                while pool.ready():
                    results.append(next(pool.results()))
            results.extend(pool.results())
        return {
            "engine": "pool",
            "actors": actors,
            "actor_num_cpus": args.actor_cpus,
            "max_in_flight": args.max_in_flight,
            "items": len(texts),
            "wall_s": round(meter.wall, 3),
            "items_per_s": round(len(texts) / meter.wall, 1),
            **startup,
            **check(results, tickets, expected),
            **meter.load(),
            **quiet,
        }
    finally:
        pool.shutdown()


def measure_latency(bundle: Path, args, calls: int) -> list[dict[str, Any]]:
    """Median latency of one call with 1 and with ``batch_size`` items: in-process vs. a 1-actor pool."""
    from polyalign_ray.critic.scorer import CriticScorer

    texts, buckets, _ = make_items(args.batch_size, args.seed + 7)
    buckets, _ = map_buckets(buckets, json.loads((bundle / "critic.json").read_text())["buckets"])
    scorer = CriticScorer(bundle)
    scorer.score(texts, buckets)
    pool, _ = start_pool(bundle, 1, args)
    rows = []
    try:
        for size in (1, args.batch_size):
            t, b = texts[:size], buckets[:size]
            quiet = settle(args)
            with Meter() as meter:
                local, remote = [], []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    scorer.score(t, b)
                    local.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    pool.submit(t, b)
                    list(pool.results())
                    remote.append(time.perf_counter() - t0)
            local_ms, remote_ms = 1e3 * statistics.median(local), 1e3 * statistics.median(remote)
            rows.append(
                {
                    "kind": "latency",
                    "items_per_call": size,
                    "calls": calls,
                    "in_process_ms": round(local_ms, 3),
                    "pool_1_actor_ms": round(remote_ms, 3),
                    "pool_overhead_ms": round(remote_ms - local_ms, 3),
                    **meter.load(),
                    **quiet,
                }
            )
    finally:
        pool.shutdown()
    return rows


def measure_phases(bundle: Path, texts, buckets, kinds, n: int, args) -> list[dict[str, Any]]:
    """Per-item time of the scorer's parts on the first ``n`` items, by kind (language/length class)."""
    import torch

    from polyalign_ray.critic.encoders import ngram_id_arrays
    from polyalign_ray.critic.scorer import CriticScorer
    from polyalign_ray.critic.train import critic_inputs, predict
    from polyalign_ray.features import features_matrix
    from polyalign_ray.schema import count_length_tokens

    scorer = CriticScorer(bundle)
    meta = scorer.meta
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(kinds[:n]):
        groups.setdefault(k, []).append(i)
    groups["all"] = list(range(min(n, len(texts))))
    scorer.score(texts[:64], buckets[:64])
    quiet = settle(args)
    rows = []
    for kind, index in sorted(groups.items()):
        t, b = [texts[i] for i in index], [buckets[i] for i in index]
        with Meter() as meter:
            t0 = time.perf_counter()
            features_matrix(t)
            t1 = time.perf_counter()
            if meta["encoder"] == "hashed_ngrams":
                ngram_id_arrays(t, meta["hash_buckets"])
            t2 = time.perf_counter()
            inputs = critic_inputs(
                t,
                b,
                meta,
                use_features=meta["use_features"],
                encoder=scorer.encoder,
                support=scorer.model.support_tables,
            )
            t3 = time.perf_counter()
            with torch.no_grad():
                predict(scorer.model, inputs)
            t4 = time.perf_counter()
            for s, e in batches_of(len(t), 64):
                scorer.score(t[s:e], b[s:e])
            t5 = time.perf_counter()
        k = len(index)
        rows.append(
            {
                "kind": "phases",
                "group": kind,
                "items": k,
                "mean_chars": round(sum(map(len, t)) / k, 1),
                "mean_length_tokens": round(sum(map(count_length_tokens, t)) / k, 1),
                "features_us": round(1e6 * (t1 - t0) / k, 1),
                "ngram_ids_us": round(1e6 * (t2 - t1) / k, 1),
                "inputs_total_us": round(1e6 * (t3 - t2) / k, 1),
                "network_us": round(1e6 * (t4 - t3) / k, 1),
                "score_64_us": round(1e6 * (t5 - t4) / k, 1),
                **meter.load(),
                **quiet,
            }
        )
    return rows


def calibrate_spin(target_s: float) -> int:
    """Iterations of :func:`spin` that take ``target_s`` on this core (best of 5 trials, so contention inflates it
    less)."""
    n = 200_000
    best = min(_timed(lambda: spin(n)) for _ in range(5))
    return max(1, int(n * target_s / best))


def spin(n: int) -> int:
    acc = 0
    for i in range(n):
        acc = (acc * 1103515245 + i) & 0xFFFFFFFF
    return acc


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_overlap(
    pool, actors: int, producer: str, produce_s: float, texts, buckets, expected, args
) -> dict[str, Any]:
    """Sequential and overlapped runs of one producer, ``--overlap-rounds`` times each in ABBA order (the CPU's
    speed drifts on this VM: alternating the order spreads that drift over both modes); figures are means."""
    spans = batches_of(len(texts), args.batch_size)
    spin_n = calibrate_spin(produce_s) if producer == "cpu" else 0

    def produce(i: int) -> tuple[list[str], list[str]]:
        if producer == "sleep":
            time.sleep(produce_s)
        else:
            spin(spin_n)
        s, e = spans[i]
        return texts[s:e], buckets[s:e]

    def sequential() -> dict[str, Any]:
        with Meter() as meter:
            t0 = time.perf_counter()
            produced = [produce(i) for i in range(len(spans))]
            produce_wall = time.perf_counter() - t0
            tickets = [pool.submit(t, b) for t, b in produced]
            results = list(pool.results())
        return {
            "mode": "sequential",
            "wall_s": round(meter.wall, 3),
            "produce_s": round(produce_wall, 3),
            "score_s": round(meter.wall - produce_wall, 3),
            **check(results, tickets, expected),
            **meter.load(),
        }

    def overlapped() -> dict[str, Any]:
        blocked = 0.0
        with Meter() as meter:
            t0 = time.perf_counter()
            tickets, results = [], []
            for i in range(len(spans)):
                t, b = produce(i)
                s0 = time.perf_counter()
                tickets.append(pool.submit(t, b))
                blocked += time.perf_counter() - s0
                if args.collect == "ready":
                    while pool.ready():
                        results.append(next(pool.results()))
            last_produced = time.perf_counter() - t0
            results.extend(pool.results())
        return {
            "mode": "overlapped",
            "wall_s": round(meter.wall, 3),
            "submit_blocked_s": round(blocked, 3),
            "tail_s": round(meter.wall - last_produced, 3),
            **check(results, tickets, expected),
            **meter.load(),
        }

    quiet = settle(args)
    runs = []
    with Meter() as case_meter:
        for i in range(args.overlap_rounds):
            for fn in (sequential, overlapped) if i % 2 == 0 else (overlapped, sequential):
                runs.append(fn())
    seq = [r for r in runs if r["mode"] == "sequential"]
    ovl = [r for r in runs if r["mode"] == "overlapped"]

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    p_s, s_s, seq_wall, ovl_wall = (
        mean(seq, "produce_s"),
        mean(seq, "score_s"),
        mean(seq, "wall_s"),
        mean(ovl, "wall_s"),
    )
    return {
        "kind": "overlap",
        "producer": producer,
        "actors": actors,
        "actor_num_cpus": args.actor_cpus,
        "collect": args.collect,
        "items": len(texts),
        "batches": len(spans),
        "rounds": args.overlap_rounds,
        "produce_ms_per_batch": round(1e3 * produce_s, 2),
        "cpu_spin_iterations": spin_n,
        "seq_produce_s": round(p_s, 3),
        "seq_score_s": round(s_s, 3),
        "seq_wall_s": round(seq_wall, 3),
        "overlap_wall_s": round(ovl_wall, 3),
        "ratio_overlap_to_seq": round(ovl_wall / seq_wall, 3),
        "ratio_each_round": [round(o["wall_s"] / q["wall_s"], 3) for q, o in zip(seq, ovl, strict=True)],
        "ideal_ratio": round(max(p_s, s_s) / seq_wall, 3),
        "overlap_submit_blocked_s": round(mean(ovl, "submit_blocked_s"), 3),
        "overlap_tail_s": round(mean(ovl, "tail_s"), 3),
        "in_order": all(r["in_order"] for r in runs),
        "ok": all(r["ok"] for r in runs),
        "max_abs_diff_vs_in_process": max(r["max_abs_diff_vs_in_process"] for r in runs),
        "runs": runs,
        **case_meter.load(),
        **quiet,
    }


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------
def load_cell(row: dict[str, Any]) -> str:
    la = row["loadavg_1m"]
    flag = " ⚠" if row["other_cpu_cores"] > BUSY_OTHER_WARNING else ""
    pr = row["cpu_probe_mit_s"]
    return (
        f"{la[0]:.2f}→{la[1]:.2f} | {row['other_cpu_cores']:.2f}{flag} | {row['tree_cpu_cores']:.2f} | "
        f"{pr[0]:.1f}→{pr[1]:.1f}"
    )


def render(args, argv: list[str], info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    thr = [r for r in rows if r.get("kind") == "throughput"]
    lat = [r for r in rows if r.get("kind") == "latency"]
    phases = [r for r in rows if r.get("kind") == "phases"]
    ovl = [r for r in rows if r.get("kind") == "overlap"]
    lines = [
        f"## Run {info['date']}",
        "",
        f"Command: `{info['command']}`",
        "",
        f"- Machine: {info['cpus']} CPUs ({info['cpu_model']}), Python {info['python']}, Ray {info['ray']}, "
        f"torch {info['torch']}; `ray.init(num_cpus={args.num_cpus})` took {info['ray_init_s']} s.",
        f"- Bundle: {info['bundle']['source']} ({info['bundle_path']}): hash buckets {info['meta']['hash_buckets']},"
        f" dims {info['meta']['dims']}, {len(info['meta']['buckets'])} buckets, features "
        f"{'on' if info['meta']['use_features'] else 'off'}"
        + (
            f"; trained here in {info['bundle']['build_s']} s on {info['bundle']['examples']} examples, "
            f"{info['bundle']['epochs']} epochs, gates passed: {info['bundle']['gates_passed']}"
            if "build_s" in info["bundle"]
            else ""
        )
        + ".",
        f"- Items: {info['items']['n']} (generated in {info['items']['gen_s']} s), mean {info['items']['mean_chars']}"
        f" chars / {info['items']['mean_length_tokens']} length tokens; kinds {info['items']['kinds']}; "
        f"length bins {info['items']['bins']}"
        + (
            f"; {info['items']['remapped']} items' buckets mapped to one the bundle knows"
            if info["items"]["remapped"]
            else ""
        )
        + ".",
        f"- Batch size {args.batch_size}, max_in_flight {args.max_in_flight}, actor num_cpus {args.actor_cpus}, "
        f"torch threads 1 everywhere (`CriticScorer` sets it). Load columns: 1-min loadavg start→end | CPU cores "
        f"used by other processes (/proc/stat minus this process tree; ⚠ above {BUSY_OTHER_WARNING}) | cores "
        "used by this tree (driver, Ray, actors) | CPU probe: this core's speed before→after, in millions of "
        "iterations/s of a fixed Python loop (the VM's CPU speed drifts by up to ~1.7x with no steal time shown; "
        "compare figures measured at similar probe values).",
        f"- Waits for a quiet machine (`--wait-quiet {args.wait_quiet}`, threshold {args.quiet_threshold} cores): "
        f"{info['waits']}.",
        "",
        "### Throughput (start-up excluded)",
        "",
        "| engine | actors | repeat | items | wall s | items/s | vs in-process | start-up s | checks | "
        "loadavg | other CPU | our CPU | CPU probe |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|",
    ]
    base = {r["repeat"]: r["items_per_s"] for r in thr if r["engine"] == "in_process"}
    for r in thr:
        checks = "—" if r["engine"] == "in_process" else ("in order, equal" if r["ok"] else "**FAILED**")
        lines.append(
            f"| {r['engine']} | {r['actors']} | {r['repeat']} | {r['items']} | {r['wall_s']:.2f} | "
            f"{r['items_per_s']:.0f} | {r['items_per_s'] / base[r['repeat']]:.2f}x | {r['startup_s']:.2f} | "
            f"{checks} | {load_cell(r)} |"
        )
    lines += ["", "Median over repeats:", "", "| engine | actors | items/s | vs in-process | start-up s |"]
    lines.append("|---|---:|---:|---:|---:|")
    med_base = statistics.median(base.values())
    for engine, actors in sorted({(r["engine"], r["actors"]) for r in thr}, key=lambda x: x[1]):
        sel = [r for r in thr if r["engine"] == engine and r["actors"] == actors]
        ips = statistics.median(r["items_per_s"] for r in sel)
        lines.append(
            f"| {engine} | {actors} | {ips:.0f} | {ips / med_base:.2f}x | "
            f"{statistics.median(r['startup_s'] for r in sel):.2f} |"
        )
    if lat:
        lines += [
            "",
            "### Per-call latency (median of sequential calls)",
            "",
            "| items per call | calls | in-process ms | pool (1 actor) ms | overhead ms | loadavg | other CPU | our CPU "
            "| CPU probe |",
            "|---:|---:|---:|---:|---:|---|---:|---:|---|",
        ]
        for r in lat:
            lines.append(
                f"| {r['items_per_call']} | {r['calls']} | {r['in_process_ms']:.2f} | {r['pool_1_actor_ms']:.2f} "
                f"| {r['pool_overhead_ms']:.2f} | {load_cell(r)} |"
            )
    if phases:
        lines += [
            "",
            "### Where the scorer's time goes (µs per item, in-process, one thread)",
            "",
            "`features` = `features_matrix` (hand features, jieba for Chinese); `n-grams` = `ngram_id_arrays`; "
            "`inputs` = `critic_inputs` (both, plus bucket ids and standardizing); `network` = `predict` on "
            "those inputs; `score` = `CriticScorer.score` in batches of 64.",
            "",
            "| group | items | chars | length tokens | features | n-grams | inputs | network | score | loadavg |"
            " other CPU | our CPU | CPU probe |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
        ]
        for r in phases:
            lines.append(
                f"| {r['group']} | {r['items']} | {r['mean_chars']} | {r['mean_length_tokens']} | "
                f"{r['features_us']:.0f} | {r['ngram_ids_us']:.0f} | {r['inputs_total_us']:.0f} | "
                f"{r['network_us']:.0f} | {r['score_64_us']:.0f} | {load_cell(r)} |"
            )
    if ovl:
        lines += [
            "",
            "### Overlap of pool scoring with a producer",
            "",
            "`sleep`: `time.sleep` per batch (a GPU-bound generator: the driver waits, idle). `cpu`: a pure-Python "
            "loop per batch in the driver, calibrated to the same time on an idle core (a CPU-bound generator; "
            f"holds the GIL). Collect: `{args.collect}`. Sequential = produce all, then score all (P + S); "
            "overlapped = submit each batch as it is produced; each mode runs `--overlap-rounds` "
            f"({args.overlap_rounds}) times in ABBA order and the figures are means. Ideal = max(P, S) / (P + S). Load columns are "
            "of the whole case; each run's are in the JSON line.",
            "",
            "| producer | actors | batches | produce ms/batch | P s | S s | sequential s | overlapped s | ratio | "
            "ratio per round | ideal | blocked in submit s | tail s | in order, equal | loadavg | other CPU | "
            "our CPU | CPU probe | driver / actors / Ray CPU |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|---:|---:|---|---|",
        ]
        for r in ovl:
            lines.append(
                f"| {r['producer']} | {r['actors']} | {r['batches']} | {r['produce_ms_per_batch']:.1f} | "
                f"{r['seq_produce_s']:.2f} | {r['seq_score_s']:.2f} | {r['seq_wall_s']:.2f} | "
                f"{r['overlap_wall_s']:.2f} | {r['ratio_overlap_to_seq']:.2f} | "
                f"{', '.join(f'{x:.2f}' for x in r['ratio_each_round'])} | {r['ideal_ratio']:.2f} | "
                f"{r['overlap_submit_blocked_s']:.2f} | {r['overlap_tail_s']:.2f} | "
                f"{'yes' if r['ok'] else '**NO**'} | {load_cell(r)} | "
                + " / ".join(f"{v:.2f}" for v in r["tree_cpu_cores_by_role"].values())
                + " |"
            )
    lines.append(f"\nTotal wall time of the run: {info['total_s']} s.\n")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--items", type=int, default=20_000, help="items for the throughput runs (default 20000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-in-flight", type=int, default=8)
    p.add_argument("--actor-cpus", type=float, default=1.0, help="num_cpus of each pool actor (default 1)")
    p.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...) (default 2)")
    p.add_argument("--actors", default="1,2", help="pool sizes to measure (default 1,2)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the throughput runs")
    p.add_argument(
        "--latency-calls", type=int, default=50, help="sequential calls per latency figure (0: skip)"
    )
    p.add_argument("--phase-items", type=int, default=1000, help="items for the phase breakdown (0: skip)")
    p.add_argument("--overlap-items", type=int, default=3840, help="items for the overlap runs (0: skip)")
    p.add_argument("--overlap-actors", default="1,2", help="pool sizes for the overlap runs")
    p.add_argument("--producers", default="sleep,cpu", help="simulated producers: sleep (GPU-bound), cpu")
    p.add_argument(
        "--produce-ms",
        type=float,
        default=0.0,
        help="producer time per batch (default 0: the in-process scorer's median time per batch)",
    )
    p.add_argument(
        "--overlap-rounds", type=int, default=2, help="runs of each mode per case, ABBA (default 2)"
    )
    p.add_argument("--collect", choices=("ready", "end"), default="ready", help="overlapped: when to collect")
    p.add_argument("--bundle", type=Path, help="use this critic bundle instead of training a synthetic one")
    p.add_argument("--train-records", type=int, default=600, help="records of the bench-local bundle")
    p.add_argument("--train-epochs", type=int, default=3, help="epochs of the bench-local bundle")
    p.add_argument("--object-store-mib", type=int, default=256)
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each measurement, wait up to S s for other processes to use < --quiet-threshold cores",
    )
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.3,
        help="other processes' cores below which it is quiet (default 0.3)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: 2000 items, 1 repeat, small overlap")
    p.add_argument("--jsonl", type=Path, help="append one JSON line per measurement")
    p.add_argument("--report", type=Path, help="append the tables and the command as Markdown")
    args = p.parse_args(argv)
    if args.quick:
        args.items, args.repeats, args.latency_calls = 2000, 1, 20
        args.phase_items, args.overlap_items, args.overlap_rounds = 500, 640, 1
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    harness.set_default_env(harness.RAY_LOCAL_ENV)
    import ray
    import torch

    from polyalign_ray.schema import count_length_tokens

    run_start = time.perf_counter()
    date = harness.local_timestamp()
    command = shlex.join([".venv/bin/python", os.path.relpath(__file__, Path.cwd()), *argv])
    with open("/proc/cpuinfo") as f:
        cpu_model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    workdir = Path(tempfile.mkdtemp(prefix="critic_pool_bench_"))
    rows: list[dict[str, Any]] = []
    try:
        # The bundle
        if args.bundle:
            bundle = args.bundle.resolve()
            bundle_info: dict[str, Any] = {"source": f"--bundle {args.bundle}"}
        else:
            bundle = workdir / "critic"
            print(f"training a bench-local critic bundle ({args.train_records} records) ...", flush=True)
            bundle_info = build_bundle(
                bundle, records=args.train_records, epochs=args.train_epochs, seed=args.seed
            )
        meta = json.loads((bundle / "critic.json").read_text(encoding="utf-8"))

        # The items
        t0 = time.perf_counter()
        texts, buckets, kinds = make_items(args.items, args.seed)
        gen_s = time.perf_counter() - t0
        buckets, remapped = map_buckets(buckets, meta["buckets"])
        sample = texts[:2000]
        items_info = {
            "n": len(texts),
            "gen_s": round(gen_s, 2),
            "mean_chars": round(sum(map(len, texts)) / len(texts), 1),
            "mean_length_tokens": round(sum(map(count_length_tokens, sample)) / len(sample), 1),
            "kinds": dict(sorted(Counter(kinds).items())),
            "bins": dict(sorted(Counter(b.rsplit("|", 1)[1] for b in buckets).items())),
            "remapped": remapped,
        }
        print(f"items: {items_info}", flush=True)

        # Ray
        t0 = time.perf_counter()
        ray.init(
            num_cpus=args.num_cpus,
            include_dashboard=False,
            object_store_memory=args.object_store_mib * 2**20,
            log_to_driver=False,
        )
        ray_init_s = round(time.perf_counter() - t0, 2)

        # 1. Throughput
        actor_counts = [int(x) for x in args.actors.split(",") if x]
        expected = None
        for repeat in range(1, args.repeats + 1):
            row, scores = measure_in_process(bundle, texts, buckets, args)
            expected = scores if expected is None else expected
            rows.append({"kind": "throughput", "repeat": repeat, **row})
            print(json.dumps(rows[-1]), flush=True)
            for actors in actor_counts:
                row = measure_pool(bundle, actors, texts, buckets, expected, args)
                rows.append({"kind": "throughput", "repeat": repeat, **row})
                print(json.dumps(rows[-1]), flush=True)
        median_batch_s = (
            statistics.median(r["median_batch_ms"] for r in rows if r.get("engine") == "in_process") / 1e3
        )

        # 2. Per-call latency
        if args.latency_calls:
            for row in measure_latency(bundle, args, args.latency_calls):
                rows.append(row)
                print(json.dumps(row), flush=True)

        # 3. Phases
        if args.phase_items:
            for row in measure_phases(bundle, texts, buckets, kinds, args.phase_items, args):
                rows.append(row)
                print(json.dumps(row), flush=True)

        # 4. Overlap
        if args.overlap_items:
            produce_s = args.produce_ms / 1e3 if args.produce_ms else median_batch_s
            n = min(args.overlap_items, len(texts))
            for actors in [int(x) for x in args.overlap_actors.split(",") if x]:
                pool, _ = start_pool(bundle, actors, args)
                try:
                    for producer in args.producers.split(","):
                        row = measure_overlap(
                            pool, actors, producer, produce_s, texts[:n], buckets[:n], expected[:n], args
                        )
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                finally:
                    pool.shutdown()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    info = {
        "date": date,
        "command": command,
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "ray_init_s": ray_init_s,
        "bundle": bundle_info,
        "bundle_path": str(args.bundle) if args.bundle else "temporary",
        "meta": {k: meta[k] for k in ("hash_buckets", "dims", "buckets", "use_features")},
        "items": items_info,
        "waits": (
            f"{sum(r.get('waited_s', 0) for r in rows):.0f} s in all; the machine was quiet before "
            f"{sum(r.get('other_cpu_cores_before', 9) < args.quiet_threshold for r in rows)} of "
            f"{sum('waited_s' in r for r in rows)} measurement rows"
            if args.wait_quiet > 0
            else "none"
        ),
        "total_s": round(time.perf_counter() - run_start, 1),
    }
    report = render(args, argv, info, rows)
    print("\n" + report)
    failed = [r for r in rows if r.get("ok") is False]
    common = {"bench": "critic_pool", "date": date, "command": command}
    summary = {
        **common,
        "kind": "summary",
        **{k: v for k, v in info.items() if k not in ("date", "command", "meta")},
        "bundle_meta": {**info["meta"], "buckets": len(meta["buckets"])},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "checks_failed": len(failed),
    }
    lines = [json.dumps({**common, **r}, ensure_ascii=False) for r in rows]
    lines.append(json.dumps(summary, ensure_ascii=False))
    print("\n".join(lines))
    if args.jsonl:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with args.jsonl.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        new = not args.report.exists()
        with args.report.open("a", encoding="utf-8") as f:
            if new:
                f.write(
                    "# critic_pool results\n\nMeasured runs of `bench/critic_pool.py` (see `bench/README.md`). "
                    "Each section is appended by the script (`--report`); the JSON lines of the same runs are in "
                    "`critic_pool.jsonl` (`--jsonl`).\n\n"
                )
            f.write(report + "\n")
    if failed:
        print(
            f"CHECKS FAILED: {len(failed)} measurement(s) returned results out of order or unequal",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
