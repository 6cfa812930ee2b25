"""Rollout storage: the prompt stream of each process, experiences and their minibatches.

A rollout holds, per experience, the unpadded prompt tokens and the response tokens with their
mask, old log-probabilities, reference log-probabilities and values (response-aligned,
right-padded to the longest response). Minibatches re-pad prompts on the left, so every row
continues from its last prompt token, as in generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf_plugins import UserError


class PromptSampler:
    """Each process's share of a shuffled dataset, reshuffled every epoch (seed + epoch), in
    equal disjoint shares; ``state_dict`` makes the stream resumable."""

    def __init__(self, dataset: Any, seed: int, rank: int, world: int):
        self.dataset, self.seed, self.rank, self.world = dataset, seed, rank, world
        self.share = len(dataset) // world
        if self.share == 0:
            raise UserError(
                f"ppo: the prompt dataset has {len(dataset)} rows, fewer than the {world} processes"
            )
        self.epoch, self.position = 0, 0
        self._order: tuple[int, list[int]] | None = None

    def order(self) -> list[int]:
        if self._order is None or self._order[0] != self.epoch:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            permutation = torch.randperm(len(self.dataset), generator=generator)
            self._order = (self.epoch, permutation[self.rank :: self.world][: self.share].tolist())
        return self._order[1]

    def next_rows(self, count: int) -> dict[str, list]:
        """The next ``count`` rows as columns (``{"prompt": [...], ...}``)."""
        indices: list[int] = []
        while len(indices) < count:
            taken = self.order()[self.position : self.position + count - len(indices)]
            indices += taken
            self.position += len(taken)
            if self.position >= self.share:
                self.epoch, self.position = self.epoch + 1, 0
        return self.dataset[indices]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def model_inputs(
    queries: torch.Tensor, query_mask: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Left-padded prompts + right-padded responses as ``input_ids``, ``attention_mask`` and
    ``position_ids`` counted from each row's first real token (as in generation)."""
    attention_mask = torch.cat([query_mask, mask], dim=1).long()
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return {
        "input_ids": torch.cat([queries, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
    }


def left_pad(rows: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D token tensors, padding on the left; returns ``(tokens, mask)``."""
    width = max(len(r) for r in rows)
    tokens = rows[0].new_full((len(rows), width), pad_id)
    mask = torch.zeros_like(tokens)
    for i, row in enumerate(rows):
        if len(row):
            tokens[i, width - len(row) :] = row
            mask[i, width - len(row) :] = 1
    return tokens, mask


def right_pad(rows: Sequence[torch.Tensor], width: int, value: float) -> torch.Tensor:
    out = rows[0].new_full((len(rows), width), value)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@dataclass
class Chunk:
    """One generation chunk: prompts (unpadded), responses and per-token tensors
    (``[chunk, response_length]``), raw and scaled scores, and with a greedy baseline the
    scaled score of each row's prompt's greedy completion."""

    queries: list[torch.Tensor]
    responses: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor | None = None
    scaled_scores: torch.Tensor | None = None
    group_ids: torch.Tensor | None = None
    baseline_scores: torch.Tensor | None = None

    ROW_FIELDS = (
        "responses",
        "mask",
        "logprobs",
        "ref_logprobs",
        "values",
        "scores",
        "scaled_scores",
        "group_ids",
        "baseline_scores",
    )

    def __len__(self) -> int:
        return len(self.queries)

    def select(self, keep: torch.Tensor) -> Chunk:
        """The rows ``keep`` (indices or a boolean mask) of this chunk."""
        index = torch.arange(len(self), device=self.mask.device)[keep].tolist()
        rows = {
            name: getattr(self, name)[index] if getattr(self, name) is not None else None
            for name in self.ROW_FIELDS
        }
        return Chunk(queries=[self.queries[i] for i in index], **rows)


@dataclass
class Rollout(Chunk):
    """Every experience of one PPO update (chunks joined, responses padded to the longest);
    ``advantages`` and ``returns`` are set by the trainer after scoring."""

    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    TOKEN_FIELDS = ("responses", "mask", "logprobs", "ref_logprobs", "values")

    @classmethod
    def from_chunks(cls, chunks: Sequence[Chunk], pad_id: int) -> Rollout:
        width = max(c.responses.shape[1] for c in chunks)
        padded = {}
        for name in cls.TOKEN_FIELDS:
            fill = pad_id if name == "responses" else 0
            padded[name] = torch.cat(
                [right_pad(list(getattr(c, name)), width, fill) for c in chunks]
            )
        per_row = {
            name: torch.cat([getattr(c, name) for c in chunks])
            if getattr(chunks[0], name) is not None
            else None
            for name in cls.ROW_FIELDS
            if name not in cls.TOKEN_FIELDS
        }
        return cls(queries=[q for c in chunks for q in c.queries], **per_row, **padded)

    def minibatch(self, indices: Sequence[int], pad_id: int) -> dict[str, Any]:
        """Rows ``indices``: model inputs, ``response_start`` and the response-aligned
        tensors trimmed to the longest response among them."""
        index = torch.as_tensor(list(indices), device=self.responses.device)
        mask = self.mask[index]
        width = int(mask.sum(dim=1).max())
        queries, query_mask = left_pad([self.queries[i] for i in indices], pad_id)
        names = ("logprobs", "ref_logprobs", "values", "advantages", "returns", "responses", "mask")
        batch = {
            name: getattr(self, name)[index][:, :width]
            for name in names
            if getattr(self, name) is not None
        }
        batch["inputs"] = model_inputs(queries, query_mask, batch["responses"], batch["mask"])
        batch["response_start"] = queries.shape[1]
        return batch
