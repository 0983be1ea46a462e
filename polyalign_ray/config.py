"""Configuration: frozen dataclasses for every stage, YAML files that mirror them, dotted overrides.

A run is described by one :class:`PolyAlignConfig`. It is built from the defaults, then a YAML file, then
``section.key=value`` overrides from the command line, in that order. Every problem in that chain (unknown key,
wrong type, value out of range) is collected and raised together in one :class:`ConfigError` that names each key
and says how to fix it, before any Ray work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from polyalign_ray.sweep_domains import space_problems


class ConfigError(ValueError):
    """One or more configuration problems; ``problems`` holds one line per bad key."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")

    def __reduce__(self) -> tuple[type, tuple[list[str]]]:
        # Ray re-raises a worker's or trial's exception in the driver by pickling it; the default rebuilds it from
        # the message, which would turn every character of the message into a "problem".
        return (type(self), (self.problems,))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``polyalign prepare``: reading, normalizing, bucketing, dedup and splitting of the corpus."""

    inputs: tuple[str, ...] = ()
    """Files or folders (JSONL, JSON, Parquet, HF ``save_to_disk`` folders). Empty with ``builtin``: the built-in
    bilingual corpus."""
    builtin: bool = True
    """Use the built-in bilingual corpus when ``inputs`` is empty."""
    builtin_max_per_bucket: int = 400
    """Per-bucket cap of the built-in corpus (keeps the demo small and its selection deterministic)."""
    output_dir: str = "runs/demo/data"
    """Where prepare writes the records per split, the manifest, quarantine and duplicates (DATA_DIR)."""
    seed: int = 0
    """Seed of the hash split (changing it reshuffles which conversations land in val/test)."""
    val_fraction: float = 0.05
    """Share of each (source, language) stratum's groups that goes to validation."""
    test_fraction: float = 0.1
    """Share of each (source, language) stratum's groups that goes to test."""
    expand_turns: bool = False
    """Make one record per assistant turn of a conversation (default: only the last assistant turn)."""
    max_row_chars: int = 200_000
    """Rows longer than this (raw, in characters) are quarantined as ``oversized_row``."""
    max_response_tokens: int = 8_192
    """Responses longer than this many length tokens are quarantined as ``oversized_response``."""
    default_source: str = ""
    """Source name for rows that carry none (default: the input file's stem)."""
    source: str = ""
    """A paper-corpus recipe (``polyalign prepare --source NAME``, names in
    ``polyalign_ray.corpus.recipes.RECIPES``): every input row is in that dataset's native layout; with no
    ``inputs``, the dataset is loaded from the Hugging Face Hub."""

    def problems(self, path: str) -> list[str]:
        out = []
        if not 0 <= self.val_fraction < 1:
            out.append(f"{path}.val_fraction must be in [0, 1), got {self.val_fraction}; e.g. 0.05")
        if not 0 <= self.test_fraction < 1:
            out.append(f"{path}.test_fraction must be in [0, 1), got {self.test_fraction}; e.g. 0.1")
        if self.val_fraction + self.test_fraction >= 1:
            out.append(
                f"{path}.val_fraction + {path}.test_fraction must be < 1 (nothing would be left for train), "
                f"got {self.val_fraction + self.test_fraction}"
            )
        for key in ("builtin_max_per_bucket", "max_row_chars", "max_response_tokens"):
            if getattr(self, key) <= 0:
                out.append(f"{path}.{key} must be > 0, got {getattr(self, key)}")
        if not self.inputs and not self.builtin and not self.source:
            out.append(
                f"{path}.inputs is empty and {path}.builtin is false: give input files or builtin=true"
            )
        if self.source:
            from polyalign_ray.corpus.recipes import RECIPES

            if self.source not in RECIPES:
                out.append(
                    f"{path}.source {self.source!r} is not a source recipe; choose one of: {', '.join(RECIPES)}"
                )
        return out


@dataclasses.dataclass(frozen=True)
class ReferencesConfig:
    """``polyalign references``: per-bucket human reference distributions (METHOD.md section 2)."""

    min_count: int = 20
    """Buckets with fewer train records back off to their parent bucket."""
    quantiles: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
    """Quantile levels of each feature kept per bucket node (the human reference distribution)."""
    band: tuple[float, float] = (0.1, 0.9)
    """The human band [lo, hi] of the distance: quantiles that must be among ``quantiles``."""
    scale_floor: float = 0.05
    """epsilon in s = max(q75 - q25, epsilon): keeps a feature that is constant for humans from exploding the
    distance (features are log1p counts or ratios, so 0.05 is a small step on every feature)."""

    def problems(self, path: str) -> list[str]:
        out = []
        if self.min_count < 1:
            out.append(f"{path}.min_count must be >= 1, got {self.min_count}")
        if any(not 0 < q < 1 for q in self.quantiles):
            out.append(f"{path}.quantiles must lie strictly between 0 and 1, got {list(self.quantiles)}")
        required = {0.1, 0.25, 0.5, 0.75, 0.9, *self.band}
        missing = sorted(required - set(self.quantiles))
        if missing:
            out.append(f"{path}.quantiles must include {missing} (the band, q25/q50/q75 for the scale)")
        if not self.band[0] < self.band[1]:
            out.append(f"{path}.band must be [lo, hi] with lo < hi, got {list(self.band)}")
        if self.scale_floor <= 0:
            out.append(f"{path}.scale_floor must be > 0, got {self.scale_floor}; e.g. 0.05")
        return out


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """The bucket-balanced sampler: bucket b gets a share p(b) proportional to m_b * n_b ** alpha."""

    alpha: float = 0.0
    """0: every bucket equal (the paper's setting); 1: natural frequencies."""
    multipliers: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Per-bucket multipliers m_b (bucket id -> factor, default 1); what a Tune sweep varies."""
    seed: int = 0
    """Seed of the bucket draws: the same seed gives the same global batches on any worker count."""
    mode: Literal["sampler", "loss_weights"] = "sampler"
    """``sampler``: draw batches with p(b); ``loss_weights``: natural order, per-example weights p(b)/(n_b/N)."""

    def problems(self, path: str) -> list[str]:
        out = []
        if not 0 <= self.alpha <= 1:
            out.append(f"{path}.alpha must be in [0, 1], got {self.alpha}; 0 = equal buckets, 1 = natural")
        for key, value in self.multipliers.items():
            if value < 0:
                out.append(f"{path}.multipliers.{key} must be >= 0, got {value}")
        return out


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters through peft: only the adapters train; they are saved separately and can be merged."""

    enabled: bool = False
    """Train low-rank adapters instead of every weight."""
    r: int = 8
    """Adapter rank."""
    alpha: int = 16
    """Adapter scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input, in [0, 1)."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Names of the linear layers that get adapters."""

    def problems(self, path: str) -> list[str]:
        out = []
        if self.r < 1:
            out.append(f"{path}.r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            out.append(f"{path}.dropout must be in [0, 1), got {self.dropout}")
        if self.enabled and not self.target_modules:
            out.append(
                f"{path}.target_modules is empty: name the linear layers to adapt, e.g. [q_proj, v_proj]"
            )
        return out


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The policy: an HF model name or local path, or the built-in small model built from a config (no download)."""

    name_or_path: str = ""
    """HF model name or local folder; ``package:NAME``: the folder of the installed Python package NAME (found
    without importing it; e.g. a package that ships model weights); empty: the built-in small Qwen2-architecture
    model and a byte-level BPE tokenizer trained in-process on the corpus."""
    gguf_file: str = ""
    """A GGUF file in ``name_or_path``'s folder: transformers dequantizes it (needs the ``gguf`` package) and the
    result is saved once as an HF folder next to the data (``DATA_DIR/base_model_<file stem>``)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """bfloat16 on GPUs (and CPUs with fast bf16); never float16 on CPU."""
    max_length: int = 512
    """Tokens per example (prompt + response); longer prompts are cut from the left, then responses from the right."""
    profile_conditioning: bool = False
    """Put the bucket attributes (language, track, family, length) in the system prompt."""
    attn_implementation: str = "sdpa"
    """transformers' attention kernel: sdpa, eager or flash_attention_2 (GPU)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about a third more compute."""
    trust_remote_code: bool = False
    """Allow model code from the model's folder or hub repository (only for models you trust)."""
    logits: Literal["labelled", "all"] = "labelled"
    """Where training computes vocabulary logits: ``labelled`` only at positions followed by a response token
    (the same log-probs, less work: see logprobs.py); ``all`` at every position (the reference path)."""
    builtin_hidden_size: int = 128
    """Hidden size of the built-in model (ignored with name_or_path)."""
    builtin_layers: int = 2
    """Transformer layers of the built-in model."""
    builtin_heads: int = 4
    """Attention heads of the built-in model (divides builtin_hidden_size)."""
    builtin_kv_heads: int = 2
    """Key/value heads of the built-in model (grouped-query attention; divides builtin_heads)."""
    builtin_intermediate_size: int = 512
    """MLP width of the built-in model."""
    builtin_vocab_size: int = 4096
    """Vocabulary of the built-in byte-level BPE, trained in-process on the train split."""
    builtin_seed: int = 0
    """Seed of the built-in model's initial weights."""
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    """Low-rank adapters (``model.lora.*``)."""

    def problems(self, path: str) -> list[str]:
        out = []
        if self.max_length < 16:
            out.append(f"{path}.max_length must be >= 16, got {self.max_length}")
        for key in ("builtin_hidden_size", "builtin_layers", "builtin_heads", "builtin_kv_heads"):
            if getattr(self, key) < 1:
                out.append(f"{path}.{key} must be >= 1, got {getattr(self, key)}")
        if self.builtin_heads >= 1 and self.builtin_hidden_size % self.builtin_heads:
            out.append(
                f"{path}.builtin_hidden_size ({self.builtin_hidden_size}) must be divisible by "
                f"{path}.builtin_heads ({self.builtin_heads})"
            )
        if self.builtin_kv_heads >= 1 and self.builtin_heads % self.builtin_kv_heads:
            out.append(f"{path}.builtin_heads must be a multiple of {path}.builtin_kv_heads")
        if self.gguf_file and not self.name_or_path:
            out.append(
                f"{path}.gguf_file needs {path}.name_or_path (the folder holding it, or package:NAME), "
                f"got only gguf_file={self.gguf_file!r}"
            )
        if self.builtin_vocab_size < 300:
            out.append(
                f"{path}.builtin_vocab_size must be >= 300 (256 bytes + special tokens), got {self.builtin_vocab_size}"
            )
        return out


def training_problems(
    train: Any, path: str, *, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()
) -> list[str]:
    """Checks shared by the sections that drive a DeepSpeed TorchTrainer (``sft``, ``hdpo``): workers, ZeRO stage,
    batch geometry, schedule, clipping; ``positive`` / ``non_negative`` name the section's own integer keys."""
    out = []
    if train.num_workers < 1:
        out.append(f"{path}.num_workers must be >= 1, got {train.num_workers}")
    if train.zero_stage not in (0, 1, 2, 3):
        out.append(f"{path}.zero_stage must be 0, 1, 2 or 3, got {train.zero_stage}")
    for key in ("micro_batch_size", "grad_accum_steps", "log_every", "keep_checkpoints", *positive):
        if getattr(train, key) < 1:
            out.append(f"{path}.{key} must be >= 1, got {getattr(train, key)}")
    shared = (
        "max_steps",
        "checkpoint_every",
        "warmup_steps",
        "max_failures",
        "fail_at_step",
        "hold_at_step",
        "torch_threads",
    )
    for key in (*shared, *non_negative):
        if getattr(train, key) < 0:
            out.append(f"{path}.{key} must be >= 0, got {getattr(train, key)}")
    if train.epochs <= 0:
        out.append(f"{path}.epochs must be > 0, got {train.epochs}")
    if train.lr <= 0:
        out.append(f"{path}.lr must be > 0, got {train.lr}")
    if not 0 <= train.min_lr_ratio <= 1:
        out.append(f"{path}.min_lr_ratio must be in [0, 1], got {train.min_lr_ratio}")
    if train.max_grad_norm < 0:
        out.append(f"{path}.max_grad_norm must be >= 0 (0: no clipping), got {train.max_grad_norm}")
    if train.cpus_per_worker < 0:
        out.append(f"{path}.cpus_per_worker must be >= 0, got {train.cpus_per_worker}")
    if train.deepspeed_config and not Path(train.deepspeed_config).is_file():
        out.append(f"{path}.deepspeed_config {train.deepspeed_config!r} is not a file")
    return out


@dataclasses.dataclass(frozen=True)
class WorkerResources:
    """Shared by ``sft`` and ``hdpo``: the Ray Train worker group and what each DeepSpeed engine holds."""

    num_workers: int = 2
    """Ray Train workers, each a DeepSpeed ZeRO engine holding its slice of every global batch."""
    use_gpu: bool = False
    """One GPU per worker (then cpus_per_worker and torch_threads are ignored)."""
    cpus_per_worker: float = 0.5
    """Ray CPUs reserved per worker; below 1 so Ray Data keeps a CPU on small machines (CPU_NOTES.md)."""
    torch_threads: int = 1
    """torch intra-op threads per worker on CPU (0: torch's default)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage 0-3: what is partitioned over workers (optimizer, gradients, weights)."""
    offload_optimizer: bool = False
    """ZeRO offload of the optimizer state to CPU memory (GPU runs short of memory)."""
    deepspeed_config: str = ""
    """Path to a DeepSpeed JSON whose keys override the generated config."""
    example_store: Literal["shards", "memory"] = "shards"
    """How the training rows (SFT examples, offline HDPO pairs) reach the workers. ``shards``: Ray Data writes them
    as per-bucket Arrow shards under OUTPUT/shards and each worker reads only the rows it draws, so its memory
    does not grow with the corpus (on a cluster OUTPUT must be shared storage); ``memory``: every worker receives
    every row as a Ray Dataset and holds it (the earlier design, kept to compare). Both draw the same rows."""


@dataclasses.dataclass(frozen=True)
class BatchGeometry:
    """Shared by ``sft`` and ``hdpo``: what one optimizer step consumes, and how many steps."""

    micro_batch_size: int = 4
    """Training items per worker per forward/backward (SFT: examples; HDPO: preference pairs, two sequences each)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; the global batch is micro_batch_size x this x num_workers."""
    max_steps: int = 0
    """Optimizer steps; 0: ``epochs`` passes over the training items (SFT: the train split; offline HDPO: the pairs;
    online HDPO: 20 when 0)."""
    epochs: float = 1.0
    """Passes over the training items when max_steps is 0 (fractions allowed)."""

    @property
    def rank_batch_size(self) -> int:
        """Items one worker consumes per optimizer step: micro_batch_size x grad_accum_steps."""
        return self.micro_batch_size * self.grad_accum_steps

    def global_batch_size(self, world_size: int) -> int:
        """Items per optimizer step over ``world_size`` workers (the same on every rank)."""
        return self.rank_batch_size * world_size


@dataclasses.dataclass(frozen=True)
class OptimizerSchedule:
    """Shared by ``sft`` and ``hdpo``: AdamW and its learning-rate schedule."""

    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    warmup_steps: int = 10
    """Optimizer steps of linear warmup from 0 to lr."""
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup: cosine, linear or constant."""
    min_lr_ratio: float = 0.1
    """The learning rate at the last step, as a fraction of lr (cosine and linear)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (0: no clipping)."""


@dataclasses.dataclass(frozen=True)
class RunControl:
    """Shared by ``sft`` and ``hdpo``: logging, checkpoints, seeds and failures."""

    log_every: int = 5
    """Optimizer steps per metrics.jsonl line (and progress line)."""
    checkpoint_every: int = 0
    """Optimizer steps between checkpoints (0: only the final one)."""
    keep_checkpoints: int = 2
    """Ray Train checkpoints kept (the latest ones)."""
    seed: int = 0
    """Seed of torch in each worker (dropout, new weights such as LoRA adapters); HDPO: also of the prompt selection
    and the pair sampler."""
    max_failures: int = 1
    """Worker-group restarts Ray Train may do, each resuming from the latest checkpoint."""
    fail_at_step: int = 0
    """Testing hook: one rank exits abruptly once at this step (0: never)."""
    hold_at_step: int = 0
    """Testing hook: every rank waits once at this step until OUTPUT/.release_step_N exists (at most 300 s), after
    writing .held_at_step_N; a test removes a node meanwhile (0: never)."""


@dataclasses.dataclass(frozen=True)
class StageFolder:
    output_dir: str = ""
    """Where the stage writes metrics.jsonl, summary.json, final/ and Ray Train's checkpoints."""


@dataclasses.dataclass(frozen=True)
class TrainingSection(RunControl, OptimizerSchedule, BatchGeometry, WorkerResources, StageFolder):
    """What every stage that drives a DeepSpeed TorchTrainer has (``sft``, ``hdpo``): the groups above, defined
    once, under each stage's own keys (``sft.lr`` and ``hdpo.lr`` are tuned apart). A stage redeclares only the
    defaults it changes; its keys list as output_dir, resources, batch, optimizer, run control, then its own."""

    def problems(self, path: str) -> list[str]:
        return training_problems(self, path)


@dataclasses.dataclass(frozen=True)
class SFTConfig(TrainingSection):
    """``polyalign sft``: Bucket-Aware SFT on Ray Train with DeepSpeed ZeRO workers."""

    output_dir: str = "runs/demo/sft"
    epochs: float = 0.5
    loss_normalization: Literal["example", "token"] = "example"
    """``example``: mean over examples of each example's token-mean NLL (METHOD.md); ``token``: sum over all
    response tokens / the token count all-reduced over ranks and accumulation steps."""
    train_history_turns: bool = False
    """Also train on the assistant turns of the history (not only the response)."""


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Decoding for rollouts, critic training samples and evaluation (the prompt renderer is shared)."""

    max_new_tokens: int = 64
    """Longest generated answer, in tokens."""
    do_sample: bool = True
    """Sample (true) or decode greedily (false)."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 0.95
    """Nucleus sampling: keep the smallest token set with this much probability."""
    batch_size: int = 16
    """Prompts per generate call in each generation actor."""
    seed: int = 0
    """Seed of sampling: each batch of a pass is seeded by a hash of it and the batch's number, so a rerun on the same
    records gives the same answers and no two batches draw the same random numbers."""
    num_workers: int = 2
    """Ray Data generation actors, each with one copy of the policy: up to this many, as many as there is room for
    (at least one; a sweep trial reserves one)."""
    use_gpu: bool = False
    """One GPU per generation actor."""

    def problems(self, path: str) -> list[str]:
        out = []
        for key in ("max_new_tokens", "batch_size", "num_workers"):
            if getattr(self, key) < 1:
                out.append(f"{path}.{key} must be >= 1, got {getattr(self, key)}")
        if self.temperature <= 0:
            out.append(
                f"{path}.temperature must be > 0 (use do_sample=false for greedy), got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            out.append(f"{path}.top_p must be in (0, 1], got {self.top_p}")
        return out


@dataclasses.dataclass(frozen=True)
class CriticConfig:
    """``polyalign critic``: the learned estimate of the distance to human support (METHOD.md section 4)."""

    output_dir: str = "runs/demo/critic"
    """Where the critic bundle, its gates and the SFT samples it was trained on go (CRITIC_DIR)."""
    policy: str = ""
    """Model whose samples are the critic's model answers; empty: the SFT output (``sft.output_dir/final``)."""
    encoder: Literal["hashed_ngrams", "frozen_lm"] = "hashed_ngrams"
    """hashed_ngrams: character 1-3-grams and words hashed into learned embeddings (bilingual, no model);
    frozen_lm: mean-pooled hidden states of ``critic.encoder_model`` (default: the policy)."""
    encoder_model: str = ""
    """The frozen_lm encoder's model (empty: the SFT policy)."""
    use_features: bool = True
    """Also feed the standardized hand features (features.py) to the MLP."""
    support_features: bool = True
    """Also feed support statistics counted over the train human answers (critic/support.py): how the answer's
    family, ending and words compare with human answers'; shows cut answers and other contexts' answers."""
    use_prompt: bool = True
    """Also feed the prompt (critic/prompts.py): whether the bucket's track is the conversation's, how much the
    answer and the prompt share, and a learned interaction of their n-grams. Scoring without a prompt still works."""
    prompt_dropout: float = 0.3
    """Share of training prompts whose examples are seen without their prompt, so the critic also scores answers
    given alone (``CriticScorer.score(texts, buckets)``)."""
    support_exclude: tuple[str, ...] = ()
    """Support statistics left out (names in ``critic/support.py``, e.g. [length_below_bin, length_above_bin]):
    for ablations; empty: all."""
    hash_buckets: int = 65_536
    """Hashed n-gram features of the hash encoder."""
    embedding_dim: int = 64
    """Width of the answer embedding."""
    boundary_dim: int = 16
    """hashed_ngrams: size of the embedding of how an answer starts and ends (its first and last 1-3 characters),
    which shows an answer cut off mid-sentence; 0: none."""
    bucket_embedding_dim: int = 16
    """Width of the bucket embedding the critic conditions on."""
    hidden_dim: int = 256
    """Width of the critic's hidden layer."""
    epochs: int = 20
    """Passes over the critic's training examples."""
    batch_size: int = 128
    """Examples per critic optimizer step."""
    lr: float = 3e-3
    """Critic learning rate (AdamW)."""
    weight_decay: float = 1e-4
    """Critic AdamW weight decay."""
    huber_delta: float = 1.0
    """Huber loss threshold of the distance regression."""
    rank_weight: float = 0.5
    """Weight of the ranking hinge (a human answer scores below a model answer to the same prompt)."""
    rank_margin: float = 0.1
    """Margin of that ranking hinge."""
    samples_per_prompt: int = 1
    """SFT samples drawn per prompt as the critic's model answers."""
    max_prompts: int = 600
    """Train prompts to sample model answers for (0: all); a seeded choice, 600 keeps the demo within minutes."""
    min_spearman: float = 0.3
    """Training fails below this held-out Spearman correlation (METHOD.md: a collapsed critic is an error)."""
    min_prediction_std_ratio: float = 0.05
    """Training fails when std(predictions) < this x std(targets) on held-out data (a collapse to a constant)."""
    corruptions: tuple[str, ...] = (
        "repeat",
        "truncate",
        "degenerate",
        "move_bucket",
        "move_language",
        "relabel",
        "shuffle",
    )
    """Kinds of corrupted human answers the critic also learns from, with exact targets (critic/corruptions.py):
    loops, cut-off answers, one token repeated, answers in the wrong bucket or language, word salad; ``swap``
    (another prompt's answer, only the prompt shows it) is offered but not a default: it cost cut answers 3 points
    and bought 1 (bench/results/critic_prompt.md)."""
    corruptions_per_prompt: int = 7
    """Corrupted answers per prompt (0: none; the critic is then blind to answers unlike human and SFT ones)."""
    corruption_rank_weight: float = 5.0
    """Weight of the ranking hinge over (human answer, its corrupted copy) pairs (``rank_weight`` is the one over
    (human answer, SFT sample) pairs; each hinge gets its own batch of pairs)."""
    corruption_target_gap: float = 0.0
    """A corrupted answer's distance target is at least its original's distance plus this (0: the exact distance
    only, which puts a quarter of cut or moved answers nearer human support than their original; docs/critic.md)."""
    min_corruption_farther_rate: float = 0.6
    """Training fails when, for some corruption kind, held-out corrupted answers score farther than their original
    human answer in fewer than this share of cases (0.5 is chance: a critic blind to that kind)."""
    seed: int = 0
    """Seed of the critic's prompts, corruptions, split, initialisation and batches."""
    num_actors: int = 2
    """Actors of the scoring pool."""
    max_in_flight: int = 8
    """Batches submitted to the pool and not yet collected (backpressure beyond this)."""
    actor_num_cpus: float = 0.0
    """CPUs reserved by each critic pool actor."""
    actor_num_gpus: float = 0.0
    """GPUs reserved by each critic pool actor (fractions share one GPU)."""

    def problems(self, path: str) -> list[str]:
        out = []
        for key in (
            "hash_buckets",
            "embedding_dim",
            "bucket_embedding_dim",
            "hidden_dim",
            "epochs",
            "batch_size",
        ):
            if getattr(self, key) < 1:
                out.append(f"{path}.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("samples_per_prompt", "num_actors", "max_in_flight"):
            if getattr(self, key) < 1:
                out.append(f"{path}.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            out.append(f"{path}.lr must be > 0, got {self.lr}")
        if self.max_prompts < 0:
            out.append(f"{path}.max_prompts must be >= 0, got {self.max_prompts}")
        if self.boundary_dim < 0:
            out.append(f"{path}.boundary_dim must be >= 0 (0: no boundary n-grams), got {self.boundary_dim}")
        if not 0 <= self.prompt_dropout <= 1:
            out.append(f"{path}.prompt_dropout must be in [0, 1], got {self.prompt_dropout}")
        if self.corruptions_per_prompt < 0:
            out.append(f"{path}.corruptions_per_prompt must be >= 0, got {self.corruptions_per_prompt}")
        from polyalign_ray.critic.corruptions import KINDS
        from polyalign_ray.critic.support import SUPPORT_FEATURE_NAMES

        unknown_statistics = sorted(set(self.support_exclude) - set(SUPPORT_FEATURE_NAMES))
        if unknown_statistics:
            out.append(
                f"{path}.support_exclude names unknown statistic(s) {unknown_statistics}; "
                f"choose from {list(SUPPORT_FEATURE_NAMES)}"
            )

        unknown = sorted(set(self.corruptions) - set(KINDS))
        if unknown:
            out.append(f"{path}.corruptions has unknown kind(s) {unknown}; choose from {list(KINDS)}")
        if self.corruption_target_gap < 0:
            out.append(f"{path}.corruption_target_gap must be >= 0, got {self.corruption_target_gap}")
        if not 0 <= self.min_corruption_farther_rate <= 1:
            out.append(
                f"{path}.min_corruption_farther_rate must be in [0, 1], got {self.min_corruption_farther_rate}"
            )
        if not -1 <= self.min_spearman <= 1:
            out.append(f"{path}.min_spearman must be in [-1, 1], got {self.min_spearman}")
        if self.actor_num_cpus < 0 or self.actor_num_gpus < 0:
            out.append(f"{path}.actor_num_cpus and actor_num_gpus must be >= 0")
        return out


@dataclasses.dataclass(frozen=True)
class OnlineRolloutConfig:
    """``hdpo.online``: online HDPO's rollout pipeline (distributed/online_pairs.py): rollout batches of the current
    policy go to generator actors, their answers to the critic pool, the scored pairs back to the trainers."""

    rollouts_per_prompt: int = 4
    """Samples of the current policy per prompt (k)."""
    rollout_prompts: int = 0
    """Prompts per rollout batch (0: the global batch size in pairs)."""
    rollout_depth: int = 2
    """Rollout batches kept in flight (generation and scoring run ahead of training by this many)."""
    include_human: bool = True
    """The human answer is a candidate for `chosen` (METHOD.md)."""
    pair_margin: float = 0.1
    """Keep a pair only when d(rejected) - d(chosen) exceeds this."""
    sync_every: int = 1
    """Updates between weight pushes to the rollout generator."""
    max_staleness: int = 4
    """Pairs generated by weights more than this many updates old are dropped (and counted)."""
    num_generators: int = 1
    """Rollout generator actors; rollout batch b goes to actor b mod n (keep ``rollout_depth`` >= n so
    they all work at once). Each holds a policy copy and the frozen reference."""
    generator_threads: int = 1
    """On CPU: torch threads per generator actor (0: torch's default). The actors reserve no Ray CPU by default
    (``generator_cpus``), so on a small machine they share the trainers' cores."""
    generator_cpus: float = 0.0
    """Ray CPUs each generator actor reserves: 0 lets it share the trainers' cores; on a cluster, a value > 0 keeps
    generators off nodes whose CPUs the Train workers hold."""
    generation_backend: str = "hf"
    """``hf`` (HF generate, CPU or GPU) or ``package.module:ClassName``, a class with the interface of
    ``rollout_worker.HFGenerationBackend`` (e.g. a vLLM engine on GPU clusters; see docs/training.md)."""

    def problems(self, path: str) -> list[str]:
        out = []
        for key in ("rollouts_per_prompt", "rollout_depth", "sync_every", "num_generators"):
            if getattr(self, key) < 1:
                out.append(f"{path}.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("generator_threads", "generator_cpus", "rollout_prompts", "max_staleness", "pair_margin"):
            if getattr(self, key) < 0:
                out.append(f"{path}.{key} must be >= 0, got {getattr(self, key)}")
        if self.generation_backend != "hf" and ":" not in self.generation_backend:
            out.append(
                f"{path}.generation_backend must be 'hf' or 'package.module:ClassName', got "
                f"{self.generation_backend!r}"
            )
        return out


@dataclasses.dataclass(frozen=True)
class HDPOConfig(TrainingSection):
    """``polyalign hdpo``: Human-Distribution Preference Optimization (METHOD.md section 5) on Ray Train with
    DeepSpeed ZeRO workers, offline (human answer vs SFT sample) or online (rollouts scored by the critic pool)."""

    output_dir: str = "runs/demo/hdpo"
    lr: float = 2e-4
    warmup_steps: int = 5

    mode: Literal["offline", "online"] = "offline"
    """offline: human answer vs stored SFT sample; online: rollouts of the current policy scored by the critic pool."""
    policy: str = ""
    """Starting policy and frozen reference; empty: the SFT output (``sft.output_dir/final``)."""
    critic: str = ""
    """Critic bundle that scores distances; empty: ``critic.output_dir``."""
    samples: str = ""
    """Offline: JSONL of ``{"id", "samples"}`` (SFT answers per record); empty: ``critic.output_dir/samples.jsonl``.
    Records without a sample there are sampled from the policy first."""
    max_prompts: int = 600
    """Train prompts to build pairs from (0: all), a seeded choice."""
    reference: Literal["precompute", "frozen_copy"] = "precompute"
    """precompute: reference log-probs computed once by Ray Data and stored with the pairs; frozen_copy: a frozen
    copy of the reference in every worker (needed when pairs change, i.e. online mode always uses the generator's
    frozen copy)."""
    beta: float = 0.1
    """Strength of the implicit KL to the reference (DPO's beta)."""
    reg_lambda: float = 0.1
    """lambda: weight of the expected human-support distance R (0 with sft_coef 0 and unit weights: plain DPO)."""
    sft_coef: float = 0.05
    """gamma: weight of the chosen answer's token-mean NLL."""
    loss_type: Literal["sigmoid", "ipo", "cdpo"] = "sigmoid"
    """Preference loss: sigmoid (DPO), ipo or cdpo (label-smoothed)."""
    ipo_logps: Literal["token_mean", "sum"] = "token_mean"
    """loss_type ipo: the log-ratios as per-token means (TRL's convention: the same beta is the same loss there) or
    sums over the answer. token_mean by default: IPO pulls the margin to 1 / (2 beta), and on sums that target means
    tiny per-token changes for an 800-token answer and large ones for a 3-token answer (the buckets span both)."""
    label_smoothing: float = 0.0
    """cDPO's epsilon (only with loss_type cdpo)."""
    weight_rarity: float = 0.5
    """a in w = clip(1 + a * rarity(b) + c * max(0, d_r - d_c), w_min, w_max)."""
    weight_gap: float = 1.0
    """c in the pair weight."""
    weight_min: float = 0.5
    """Lower clip of the pair weights."""
    weight_max: float = 3.0
    """Upper clip of the pair weights."""
    unit_weights: bool = False
    """All pair weights 1 (the DPO baseline sets this with reg_lambda = sft_coef = 0)."""
    online: OnlineRolloutConfig = dataclasses.field(default_factory=lambda: OnlineRolloutConfig())
    """``mode: online``: the rollout pipeline (generator actors, critic pool, staleness, weight pushes)."""

    def problems(self, path: str) -> list[str]:
        out = training_problems(
            self, path, non_negative=("max_prompts", "reg_lambda", "sft_coef", "weight_rarity", "weight_gap")
        )
        if self.beta <= 0:
            out.append(f"{path}.beta must be > 0, got {self.beta}; METHOD.md uses 0.1")
        if not 0 <= self.label_smoothing < 0.5:
            out.append(f"{path}.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if not 0 < self.weight_min <= self.weight_max:
            out.append(
                f"{path}.weight_min and {path}.weight_max need 0 < weight_min <= weight_max, "
                f"got {self.weight_min} and {self.weight_max}"
            )
        online, where = self.online, f"{path}.online"
        if self.mode == "online" and online.rollout_depth + online.sync_every - 1 > online.max_staleness:
            out.append(
                f"{where}.max_staleness ({online.max_staleness}) is below rollout_depth + sync_every - 1 "
                f"({online.rollout_depth + online.sync_every - 1}): every pair would be dropped as stale; raise "
                f"{where}.max_staleness or lower {where}.rollout_depth / {where}.sync_every"
            )
        return out


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``polyalign eval`` / ``polyalign compare``: the metrics of METHOD.md section 6 on a stratified test set."""

    output_dir: str = "runs/demo/eval"
    """Where each evaluated model's report.json and predictions go, and the comparison report (EVAL_DIR)."""
    split: Literal["test", "val"] = "test"
    """The records evaluated: test (or val), stratified per bucket."""
    per_bucket: int = 20
    """At most this many items per bucket (all of a smaller bucket): every bucket is represented."""
    human_per_bucket: int = 500
    """Train human answers per bucket that form the distribution metrics' human side."""
    greedy_utility: bool = False
    """Also decode greedily and report utility (EM/F1/ROUGE-L) of those answers (distribution metrics always use
    the sampled answers)."""
    profile_length: bool = False
    """With model.profile_conditioning: put the gold length bin in evaluation prompts (unknown at deployment)."""
    min_bucket_items: int = 5
    """Fewer predictions in a bucket: no distribution metrics for it."""
    bng_cap: float = 5.0
    """Per-feature cap of the bucket-normalized gap (BNG), so one wild feature cannot dominate."""
    scale_floor: float = 0.05
    """Smallest feature scale BNG divides by (avoids dividing by a near-zero spread)."""
    self_bleu_sample: int = 200
    """At most this many answers (sampled) enter each Self-BLEU computation."""
    mauve_scaling: float = 5.0
    """MAUVE's scaling constant c in exp(-c * KL) (mauve-text's default 5)."""
    mauve_human_ratio: float = 5.0
    """Global MAUVE: at most this many human answers per model answer, drawn in the model side's bucket mix."""
    bootstrap_samples: int = 1000
    """Replicates of the bootstrap behind every interval of ``polyalign compare`` (docs/evaluation.md)."""
    interval_level: float = 0.95
    """Confidence level of the intervals and paired differences."""
    seed: int = 0
    """Seed of the evaluation set, the human samples, MAUVE's k-means and the bootstrap (shared by every seed of a
    multi-seed run, so all seeds answer the same items)."""

    def problems(self, path: str) -> list[str]:
        out = []
        for key in (
            "per_bucket",
            "human_per_bucket",
            "min_bucket_items",
            "self_bleu_sample",
            "bootstrap_samples",
        ):
            if getattr(self, key) < 1:
                out.append(f"{path}.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("bng_cap", "scale_floor", "mauve_scaling", "mauve_human_ratio"):
            if getattr(self, key) <= 0:
                out.append(f"{path}.{key} must be > 0, got {getattr(self, key)}")
        if not 0.5 <= self.interval_level < 1:
            out.append(f"{path}.interval_level must be in [0.5, 1), got {self.interval_level}; e.g. 0.95")
        return out


PIPELINE_STAGE_NAMES: tuple[str, ...] = (
    "data",
    "sft_plain",
    "sft",
    "critic",
    "dpo",
    "hdpo",
    "eval_base",
    "eval_sft_plain",
    "eval_sft",
    "eval_dpo",
    "eval_hdpo",
    "compare",
)
"""The stages of ``polyalign pipeline``, in order (``stages/pipeline.py``)."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """``polyalign pipeline``: which stages run; a finished stage (same settings) is not redone."""

    baselines: bool = True
    """Also train plain SFT (natural bucket frequencies) and DPO (lambda = gamma = 0, unit weights) for the report."""
    evaluate: bool = True
    """Evaluate base, SFT, HDPO (and the baselines) and write the comparison report."""
    redo: tuple[str, ...] = ()
    """Stages to run again from the start even when finished, e.g. [hdpo]; the stages that read their outputs run
    again too."""
    seeds: tuple[int, ...] = ()
    """Empty: one run. E.g. [0, 1, 2]: data and references once, every training stage and evaluation once per seed
    (``OUT/seeds/seed_N/``, run as Ray Tune trials, concurrently where resources allow), then one comparison over
    the seeds with intervals (``--seeds N`` is [0 .. N-1])."""

    def problems(self, path: str) -> list[str]:
        out = []
        unknown = [s for s in self.redo if s not in PIPELINE_STAGE_NAMES]
        if unknown:
            out.append(f"{path}.redo has unknown stage(s) {unknown}; stages: {list(PIPELINE_STAGE_NAMES)}")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            out.append(
                f"{path}.seeds must be distinct non-negative integers, got {list(self.seeds)}; e.g. [0, 1, 2]"
            )
        return out


SWEEP_METRICS: tuple[str, ...] = (
    "aggregate",
    "naturalness",
    "nuf_hypervolume",
    "c_mauve",
    "mauve",
    "bng",
    "hcr",
    "tdm",
    "f1",
    "em",
    "rouge_l",
    "distinct_1",
    "distinct_2",
    "distinct_3",
    "self_bleu4",
)
"""Keys of an evaluation report's ``overall`` block that a sweep can optimize."""


LOSS_METRICS = ("loss", "preference_loss", "regularizer", "sft_loss")
"""Metrics lines whose value depends on how the loss is defined (ASHA must not compare them across definitions)."""
LOSS_DEFINING_KEYS = frozenset(
    {
        "hdpo.beta",
        "hdpo.reg_lambda",
        "hdpo.sft_coef",
        "hdpo.loss_type",
        "hdpo.ipo_logps",
        "hdpo.label_smoothing",
        "hdpo.unit_weights",
        "sft.loss_normalization",
        "sampler.mode",
    }
)
"""Swept keys that change what a training loss measures, not only how well it is minimized."""


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """``polyalign sweep``: Ray Tune trials over dotted config keys; each trial trains and evaluates its model."""

    output_dir: str = "runs/sweep"
    """Where the sweep's trials, results table and points go."""
    space: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Dotted key -> values: a list (a grid axis), or one of ``{choice: [...]}``, ``{uniform: [lo, hi]}``,
    ``{loguniform: [lo, hi]}``, ``{randint: [lo, hi]}`` (hi exclusive). E.g. ``hdpo.reg_lambda: [0.0, 0.1, 0.3]``,
    ``sampler.multipliers.zh|multi|dialogue|short: [1.0, 2.0]``."""
    search: Literal["grid", "random", "optuna"] = "grid"
    """grid: every combination of the list axes; random: ``num_samples`` draws; optuna: Optuna's TPE (needs the
    ``optuna`` package)."""
    num_samples: int = 1
    """grid: repeats of the whole grid; random/optuna: trials."""
    metric: str = "aggregate"
    """The objective: a key of the trial's evaluation report ``overall`` block (see SWEEP_METRICS)."""
    mode: Literal["max", "min"] = "max"
    """max for aggregate / C-MAUVE / NUF hypervolume / HCR / F1, min for BNG."""
    max_concurrent_trials: int = 0
    """0: as many as the cluster's CPUs (GPUs) fit, from each trial's training and generation resources."""
    seed: int = 0
    """Seed of the search algorithm's suggestions."""
    seeds: tuple[int, ...] = ()
    """E.g. [0, 1, 2]: every point of the space runs once per seed, seeded as ``polyalign pipeline --seeds`` (its
    shared stages in the same ``OUT/seeds/seed_N`` folders, so a sweep after a multi-seed pipeline reuses its SFT and
    critic); a point's objective is its mean over seeds. Needs search grid or random."""
    baseline: str = ""
    """A run the multi-seed pipeline evaluated per seed (e.g. dpo): the best point is compared with it (paired
    differences with 95% intervals, ``best_vs_baseline/``) and ``min_utility_ratio`` is measured against it."""
    min_utility_ratio: float = 0.0
    """A point is eligible as best only if its mean F1 is at least this times the baseline's mean F1 (e.g. 0.95:
    naturalness without losing more than 5% of the baseline's utility). Needs ``baseline``."""
    scheduler: Literal["fifo", "asha"] = "fifo"
    """fifo: every trial runs to its end; asha: Ray Tune's ASHA stops trials whose swept training stage is behind
    the others at a milestone, judged on ``early_stop_metric`` (docs/sweeps.md)."""
    early_stop_metric: str = "loss"
    """With asha: a key of the swept training stage's metrics.jsonl lines (loss, distance/expected, ...)."""
    early_stop_mode: Literal["min", "max"] = "min"
    """With asha: whether a lower or a higher ``early_stop_metric`` is better."""
    report_every: int = 2
    """With asha: the trial reports ``early_stop_metric`` to Tune every this many optimizer steps."""
    grace_period: int = 1
    """With asha: reports a trial makes before it may be stopped."""
    reduction_factor: float = 2.0
    """With asha: at each milestone only the best 1/reduction_factor of the trials go on."""

    def problems(self, path: str) -> list[str]:
        out = space_problems(self.space, self.search, f"{path}.space", PolyAlignConfig)
        if self.metric not in SWEEP_METRICS:
            close = difflib.get_close_matches(self.metric, SWEEP_METRICS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            out.append(
                f"{path}.metric {self.metric!r} is not a report metric{hint}; one of {list(SWEEP_METRICS)}"
            )
        if self.num_samples < 1:
            out.append(f"{path}.num_samples must be >= 1, got {self.num_samples}")
        if self.max_concurrent_trials < 0:
            out.append(
                f"{path}.max_concurrent_trials must be >= 0 (0: from resources), got {self.max_concurrent_trials}"
            )
        if self.seeds and self.search == "optuna":
            out.append(
                f"{path}.seeds needs {path}.search grid or random (Optuna proposes one value per trial)"
            )
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            out.append(f"{path}.seeds must be distinct non-negative integers, got {list(self.seeds)}")
        if not 0 <= self.min_utility_ratio <= 1:
            out.append(f"{path}.min_utility_ratio must be in [0, 1], got {self.min_utility_ratio}; e.g. 0.95")
        if self.scheduler == "asha" and self.seeds:
            out.append(
                f"{path}.scheduler=asha would stop single seeds of a point; drop {path}.seeds or use fifo"
            )
        redefining = sorted(str(key) for key in self.space if str(key) in LOSS_DEFINING_KEYS)
        if self.scheduler == "asha" and self.early_stop_metric in LOSS_METRICS and redefining:
            out.append(
                f"{path}.early_stop_metric={self.early_stop_metric!r} would compare trials whose loss is defined "
                f"differently ({', '.join(redefining)} swept): ASHA would stop a trial for its loss's scale; use "
                f"{path}.early_stop_metric=rewards/accuracy with {path}.early_stop_mode=max, or {path}.scheduler=fifo"
            )
        if self.report_every < 1 or self.grace_period < 1 or self.reduction_factor <= 1:
            out.append(
                f"{path}.report_every and {path}.grace_period must be >= 1 and {path}.reduction_factor > 1, got "
                f"{self.report_every}, {self.grace_period}, {self.reduction_factor}"
            )
        if self.min_utility_ratio and not self.baseline:
            out.append(
                f"{path}.min_utility_ratio needs {path}.baseline (the run whose F1 it is measured against)"
            )
        return out


@dataclasses.dataclass(frozen=True)
class RayConfig:
    """How to reach Ray: an existing cluster (``address``) or a local instance started in-process."""

    address: str = ""
    """``auto`` or ``ray://host:10001`` for a cluster; empty: the RAY_ADDRESS variable, else a local instance."""
    num_cpus: int = 0
    """CPUs of a local instance (0: all of this machine's)."""
    object_store_memory_mb: int = 0
    """Object store of a local instance in MiB (0: Ray's default)."""
    console: Literal["quiet", "full"] = "quiet"
    """quiet: the console shows our stage lines, warnings and results; Ray's, Ray Data's and the workers' own
    messages go to ``logs/`` in the command's output folder (``<stage>.log`` while a pipeline stage runs,
    ``ray.log`` otherwise; and Ray's session logs). full (``-v``):
    everything on the console, as Ray prints it."""

    def problems(self, path: str) -> list[str]:
        out = []
        if self.num_cpus < 0:
            out.append(f"{path}.num_cpus must be >= 0, got {self.num_cpus}")
        if self.object_store_memory_mb < 0:
            out.append(f"{path}.object_store_memory_mb must be >= 0, got {self.object_store_memory_mb}")
        if self.console not in ("quiet", "full"):
            out.append(f"{path}.console must be quiet or full, got {self.console!r}")
        return out


TRACKING_BACKENDS = {"mlflow": "mlflow", "tensorboard": "tensorboardX", "wandb": "wandb"}


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking: each training and evaluation stage is a run with its settings, step metrics, final
    metrics and files (docs/tracking.md). Logged by the driver from the files the stage writes."""

    backends: tuple[str, ...] = ("mlflow",)
    """Where runs go: mlflow (a local store under the run root, or ``mlflow_uri``), tensorboard (event files under
    ROOT/tensorboard), wandb (needs the wandb package); [] for none."""
    mlflow_uri: str = ""
    """An MLflow tracking server or store URI (``http://head:5000``); empty: ``sqlite:///ROOT/mlflow/mlflow.db``."""
    experiment: str = ""
    """The MLflow experiment (W&B project); empty: the name of the run root, the folder above ``data.output_dir``."""

    def problems(self, path: str) -> list[str]:
        import importlib.util

        out = []
        for backend in self.backends:
            module = TRACKING_BACKENDS.get(backend)
            if module is None:
                out.append(
                    f"{path}.backends: unknown backend {backend!r}; choose from {sorted(TRACKING_BACKENDS)}"
                )
            elif importlib.util.find_spec(module) is None:
                out.append(
                    f"{path}.backends names {backend} but the {module} package is not installed: "
                    f"pip install {module} (or drop {backend} from {path}.backends)"
                )
        return out


@dataclasses.dataclass(frozen=True)
class PolyAlignConfig:
    """The whole run. Each section mirrors a block of the YAML file."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    references: ReferencesConfig = dataclasses.field(default_factory=ReferencesConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
    generation: GenerationConfig = dataclasses.field(default_factory=GenerationConfig)
    critic: CriticConfig = dataclasses.field(default_factory=CriticConfig)
    hdpo: HDPOConfig = dataclasses.field(default_factory=HDPOConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    pipeline: PipelineConfig = dataclasses.field(default_factory=PipelineConfig)
    sweep: SweepConfig = dataclasses.field(default_factory=SweepConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)

    def problems(self, path: str) -> list[str]:
        return []


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Convert a YAML value to the annotated type, or record a problem naming ``path`` and return None."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            problems.append(f"{path} must be a mapping of keys, got {type(value).__name__} {value!r}")
            return None
        return _build(tp, value, path, problems)
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{path} must be one of {list(args)}, got {value!r}{hint}")
            return None
        return value
    if origin in (types.UnionType, typing.Union):
        non_none = [a for a in args if a is not type(None)]
        if value is None and len(non_none) < len(args):
            return None
        return _coerce(value, non_none[0], path, problems)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            value = [value]
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            problems.append(f"{path} must have {len(item_types)} items, got {len(value)}: {value!r}")
            return None
        return tuple(
            _coerce(v, t, f"{path}[{i}]", problems)
            for i, (v, t) in enumerate(zip(value, item_types, strict=True))
        )
    if origin in (Mapping, dict) or tp is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{path} must be a mapping, got {value!r}")
            return None
        key_t, val_t = args if args else (str, Any)
        return {
            _coerce(k, key_t, path, problems): _coerce(v, val_t, f"{path}.{k}", problems)
            for k, v in value.items()
        }
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{path} must be true or false, got {value!r}")
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{path} must be an integer, got {value!r}")
        return None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        problems.append(f"{path} must be a number, got {value!r}")
        return None
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{path} must be a string, got {value!r}")
        return None
    return value


MOVED_KEYS: dict[str, str] = {
    **{
        f"hdpo.{key}": f"hdpo.online.{key}"
        for key in (
            "rollouts_per_prompt",
            "rollout_prompts",
            "rollout_depth",
            "include_human",
            "pair_margin",
            "sync_every",
            "max_staleness",
            "num_generators",
            "generator_threads",
            "generation_backend",
        )
    },
}
"""Keys that moved (old dotted key -> new one): a config or override with the old key is refused, naming the new."""


def _build(cls: type, data: Mapping[str, Any], path: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``data``, recording unknown keys (with a suggestion) and bad values."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if full in MOVED_KEYS:
            problems.append(f"{full!r} moved to {MOVED_KEYS[full]!r}: write {MOVED_KEYS[full]}={value!r}")
            continue
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = (
                f"did you mean {(path + '.' if path else '') + close[0]!r}?" if close else f"known: {names}"
            )
            problems.append(f"unknown key {full!r}: {hint}")
            continue
        before = len(problems)
        coerced = _coerce(value, hints[key], full, problems)
        # a nested section keeps its valid keys even when others failed, so checks across sections still run
        if len(problems) == before or (_is_dataclass_type(hints[key]) and coerced is not None):
            kwargs[key] = coerced
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - all fields have defaults
        problems.append(f"{path or 'config'}: {exc}")
        return None
    problems.extend(obj.problems(path or cls.__name__))
    return obj


def config_from_dict(data: Mapping[str, Any], cls: type = PolyAlignConfig) -> Any:
    """Build and validate a config; raise one :class:`ConfigError` listing every problem."""
    problems: list[str] = []
    config = _build(cls, data or {}, "", problems)
    if problems:
        raise ConfigError(problems)
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain dict (lists instead of tuples) that :func:`config_from_dict` turns back into ``config``."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return plain(config)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"sampler.alpha=0.5"`` -> (["sampler", "alpha"], 0.5); the value is parsed as YAML (lists, numbers)."""
    if "=" not in text:
        raise ConfigError([f"override {text!r} must look like section.key=value, e.g. sampler.alpha=0.5"])
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError([f"override {text!r} has an empty key; write section.key=value"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def merge_override(data: dict[str, Any], keys: list[str], value: Any) -> dict[str, Any]:
    """Return a copy of ``data`` with the dotted ``keys`` set to ``value`` (intermediate mappings created)."""
    out = dict(data)
    node = out
    for key in keys[:-1]:
        child = node.get(key)
        child = dict(child) if isinstance(child, Mapping) else {}
        node[key] = child
        node = child
    node[keys[-1]] = value
    return out


def load_config(
    path: str | Path | None = None, overrides: Sequence[str | tuple[str, Any]] = ()
) -> PolyAlignConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides`` in order; validated as a whole.

    An override is ``"section.key=value"`` (the value parsed as YAML: lists, numbers, booleans) or a
    ``("section.key", value)`` pair whose value is taken as it is: what command-line flags use, so that a path such
    as ``runs/exp #2`` or ``off`` stays the string it is instead of becoming ``runs/exp`` or ``False``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                [f"config file {str(path)!r} does not exist; pass --config with an existing YAML"]
            )
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError([f"config file {str(path)!r} is not valid YAML: {exc}"]) from exc
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError([f"config file {str(path)!r} must hold a mapping of sections, got {loaded!r}"])
        data = dict(loaded or {})
    problems: list[str] = []
    for override in overrides:
        if isinstance(override, tuple):
            key, value = override
            data = merge_override(data, key.split("."), value)
            continue
        try:
            keys, value = parse_override(override)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        data = merge_override(data, keys, value)
    if problems:
        raise ConfigError(problems)
    return config_from_dict(data)


def default_config_path() -> Path:
    """The YAML that mirrors the dataclass defaults (kept equal by a test)."""
    return Path(__file__).parent / "configs" / "default.yaml"
