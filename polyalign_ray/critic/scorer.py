"""``CriticScorer``: a plain class that scores (text, bucket[, prompt]) batches with a saved critic bundle.

Plain on purpose: it is used in-process, as a Ray Data ``map_batches`` callable class, and as the body of the
critic pool's actors (``distributed/critic_pool.py`` applies ``ray.remote`` to it). Scoring is a pure function of
the inputs, so a batch re-executed after an actor restart returns the same scores.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load_file

from polyalign_ray.critic.encoders import FrozenLMEncoder
from polyalign_ray.critic.prompts import PromptRecord, prompt_view
from polyalign_ray.critic.support import SUPPORT_FILE, SupportTables
from polyalign_ray.critic.train import BUNDLE_META, BUNDLE_WEIGHTS, build_critic_model, critic_inputs, predict

SCORE_COLUMN = "critic_distance"


def prompts_of_table(table: pa.Table) -> list[dict[str, Any]] | None:
    """The rows' prompts (critic/prompts.py) when the table has a ``prompt`` column, else None; a row whose prompt
    is null has none."""
    if "prompt" not in table.column_names:
        return None
    columns = [c for c in ("prompt", "history", "context") if c in table.column_names]
    rows = table.select(columns).to_pylist()
    return [prompt_view(row) if row["prompt"] is not None else None for row in rows]


class CriticScorer:
    def __init__(self, bundle_dir: str | Path, *, num_threads: int = 1):
        if num_threads:
            torch.set_num_threads(num_threads)
        bundle_dir = Path(bundle_dir)
        meta_path = bundle_dir / BUNDLE_META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: train a critic with `polyalign critic` first")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        self.model = build_critic_model(self.meta)
        self.model.load_state_dict(load_file(str(bundle_dir / BUNDLE_WEIGHTS)))
        self.model.eval()
        if self.meta.get("support", False):
            self.model.support_tables = SupportTables.load(bundle_dir / SUPPORT_FILE)
        self.encoder = None
        if self.meta["encoder"] == "frozen_lm":
            from polyalign_ray.config import ModelConfig
            from polyalign_ray.models import load_causal_lm, load_tokenizer

            path = self.meta["encoder_model"]
            self.encoder = FrozenLMEncoder(load_causal_lm(path, ModelConfig()), load_tokenizer(path))

    def score(
        self,
        texts: Sequence[str],
        buckets: Sequence[str],
        prompts: Sequence[PromptRecord | None] | None = None,
    ) -> np.ndarray:
        """Estimated distance to human support of each text in its bucket (>= 0).

        ``prompts`` (optional, one per text, None where unknown): the conversation each text answers, as a mapping
        with ``prompt`` and optionally ``history`` and ``context`` (a corpus record qualifies). A critic trained
        with ``critic.use_prompt`` then also sees whether the answer fits it (critic/prompts.py); without, each
        answer is scored alone. An older critic ignores them."""
        if len(texts) != len(buckets):
            raise ValueError(f"{len(texts)} texts but {len(buckets)} buckets")
        inputs = critic_inputs(
            list(texts),
            list(buckets),
            self.meta,
            use_features=self.meta["use_features"],
            encoder=self.encoder,
            support=self.model.support_tables,
            prompts=list(prompts) if prompts is not None else None,
        )
        return predict(self.model, inputs).astype(np.float64)

    def score_rollout(self, rollout: Mapping[str, Any]) -> dict[str, Any]:
        """Scores of a rollout batch's candidates (its ``texts``, ``buckets`` and, when present,
        ``text_prompts``), with when scoring started and finished (the trainer measures how much of the critic's
        work overlapped training)."""
        started = time.time()
        scores = self.score(rollout["texts"], rollout["buckets"], rollout.get("text_prompts"))
        return {"scores": scores, "started": started, "finished": time.time()}

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Ray Data ``map_batches`` form: a table with ``response`` (or ``text``) and ``bucket_id`` columns (and,
        optionally, ``prompt`` with ``history`` / ``context``) gains a ``critic_distance`` column."""
        text_column = "response" if "response" in batch.column_names else "text"
        scores = self.score(
            batch[text_column].to_pylist(), batch["bucket_id"].to_pylist(), prompts_of_table(batch)
        )
        return batch.append_column(SCORE_COLUMN, pa.array(scores, type=pa.float64()))
