"""The critic network: [bucket embedding | text representation | boundary n-grams | prompt x answer interaction |
standardized hand, support and prompt statistics] -> MLP -> softplus, a non-negative estimate of d(x, b)."""

from __future__ import annotations

import torch
from torch import nn


class CriticModel(nn.Module):
    def __init__(
        self,
        *,
        num_buckets: int,
        bucket_dim: int,
        text_dim: int,
        num_features: int,
        hidden_dim: int,
        hash_buckets: int = 0,
        boundary_dim: int = 0,
        prompt_interaction: bool = False,
    ):
        super().__init__()
        self.support_tables = None
        """Counts over the train human answers the support statistics come from (critic/support.py); not trained,
        saved beside the weights."""
        self.bucket_embedding = nn.Embedding(num_buckets + 1, bucket_dim)  # the last id: a bucket never seen
        self.ngram_embedding = nn.EmbeddingBag(hash_buckets, text_dim, mode="mean") if hash_buckets else None
        # How the answer starts and ends (encoders.boundary_ngram_ids), embedded apart from its other n-grams.
        self.boundary_embedding = (
            nn.EmbeddingBag(hash_buckets, boundary_dim, mode="mean")
            if hash_buckets and boundary_dim
            else None
        )
        # The prompt's n-grams embedded with the answer's own table, multiplied elementwise with the answer's
        # embedding: a learned relevance (a dot product the MLP can weigh per dimension) without a second table.
        self.prompt_interaction = bool(prompt_interaction and self.ngram_embedding is not None)
        self.mlp = nn.Sequential(
            nn.Linear(
                bucket_dim
                + text_dim * (2 if self.prompt_interaction else 1)
                + (boundary_dim if self.boundary_embedding else 0)
                + num_features,
                hidden_dim,
            ),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, 1),
        )

    def forward(
        self,
        bucket_ids: torch.Tensor,
        features: torch.Tensor,
        *,
        ngram_ids: torch.Tensor | None = None,
        ngram_offsets: torch.Tensor | None = None,
        text_vectors: torch.Tensor | None = None,
        boundary_ids: torch.Tensor | None = None,
        boundary_offsets: torch.Tensor | None = None,
        prompt_ngram_ids: torch.Tensor | None = None,
        prompt_ngram_offsets: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted distances, shape (B,), all >= 0. ``prompt_mask`` (B,) is 0 where no prompt was given: the
        interaction is then 0, as in training examples whose prompt was withheld."""
        prompt = None
        if self.prompt_interaction:
            # the answers' and the prompts' bags in one call: the table then makes one dense gradient per step,
            # not two (the n-gram table is most of the critic's weights and its gradient most of a step)
            rows = ngram_offsets.numel()
            both = self.ngram_embedding(
                torch.cat([ngram_ids, prompt_ngram_ids]),
                torch.cat([ngram_offsets, prompt_ngram_offsets + ngram_ids.numel()]),
            )
            text, prompt = both[:rows], both[rows:]
        elif self.ngram_embedding is not None:
            text = self.ngram_embedding(ngram_ids, ngram_offsets)
        else:
            text = text_vectors
        parts = [self.bucket_embedding(bucket_ids), text]
        if self.boundary_embedding is not None:
            parts.append(self.boundary_embedding(boundary_ids, boundary_offsets))
        if prompt is not None:
            parts.append(prompt * text * prompt_mask.unsqueeze(-1))
        hidden = torch.cat([*parts, features], dim=-1)
        return nn.functional.softplus(self.mlp(hidden).squeeze(-1))
