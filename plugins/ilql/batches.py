"""Offline rows (prompt, completion, reward) -> tokenised episodes -> padded ILQL batches.

An episode is the prompt's tokens followed by the completion's tokens and EOS. The actions are
the completion tokens (EOS included); action ``t`` is predicted from the hidden state at the
position just before it, which is also its *state*. The states are those positions plus the
position of the last token (the state after the last action, terminal). The reward sits on the
last action.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf_plugins import UserError, render_completion, render_prompts, require_columns

OFFLINE_COLUMNS = ("prompt", "completion", "reward")


@dataclass(frozen=True)
class Episode:
    """One tokenised row: ``tokens[:prompt_length]`` is the prompt, the rest are actions."""

    tokens: list[int]
    prompt_length: int
    reward: float

    @property
    def num_actions(self) -> int:
        return len(self.tokens) - self.prompt_length


def truncate(
    prompt: list[int], completion: list[int], max_length: int
) -> tuple[list[int], list[int]]:
    """Fit an episode into ``max_length`` tokens: the completion keeps its first
    ``max_length - 1`` tokens, the prompt loses tokens from the left (at least one stays)."""
    if max_length < 2:
        raise UserError(f"ilql: max_length must be at least 2, got {max_length}")
    completion = completion[: max_length - 1]
    room = max_length - len(completion)
    return prompt[-room:], completion


def normalize(rewards: Sequence[float]) -> list[float]:
    """Rewards standardised over the dataset: ``(r - mean) / (std + eps)`` with the sample
    standard deviation (as trlX); a single reward is only centred."""
    mean = sum(rewards) / len(rewards)
    if len(rewards) < 2:
        return [r - mean for r in rewards]
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
    return [(r - mean) / (std + 1e-8) for r in rewards]


def episodes(
    dataset: Any,
    tokenizer: Any,
    *,
    max_length: int,
    normalize_rewards: bool,
    label: str = "dataset",
) -> list[Episode]:
    """Tokenise every row of an offline dataset. Prompts and completions are tokenised
    separately (no special tokens) so the action boundary is exact; EOS ends each completion
    (once: a chat template's end of turn that is EOS already ends it); an empty prompt becomes
    the BOS (or EOS) token. Conversations are rendered with ``tokenizer``'s chat template."""
    require_columns(dataset, OFFLINE_COLUMNS, component="ilql", slot=label, view="offline")
    columns = dataset.select_columns(list(OFFLINE_COLUMNS)).to_dict()
    rewards = [float(r) for r in columns["reward"]]
    if not all(math.isfinite(r) for r in rewards):
        raise UserError(f"ilql: the {label} has NaN or infinite rewards")
    if normalize_rewards:
        rewards = normalize(rewards)

    def tokenize(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    texts = [
        render_completion(tokenizer, prompt, completion, "ilql")
        for prompt, completion in zip(columns["prompt"], columns["completion"], strict=True)
    ]
    prompts = tokenize(render_prompts(tokenizer, columns["prompt"], "ilql"))
    completions = tokenize(texts)
    result = []
    for prompt, completion, reward in zip(prompts, completions, rewards, strict=True):
        if completion[-1:] != [tokenizer.eos_token_id]:
            completion = [*completion, tokenizer.eos_token_id]
        prompt, completion = truncate(prompt or [start], completion, max_length)
        result.append(Episode(tokens=prompt + completion, prompt_length=len(prompt), reward=reward))
    return result


def collate(
    batch: Sequence[Episode], pad_token_id: int, include: Sequence[bool] | None = None
) -> dict[str, torch.Tensor]:
    """A right-padded batch: ``input_ids``/``attention_mask [B, L]``, ``state_indices`` and
    ``terminal [B, S]``, ``actions`` and ``rewards [B, A]`` with ``A`` the longest completion.
    Rows with ``include`` False (padding rows of an evaluation shard) are all terminal, so no
    loss term counts them."""
    include = include if include is not None else [True] * len(batch)
    length = max(len(e.tokens) for e in batch)
    slots = max(e.num_actions for e in batch)
    size = (len(batch), slots)
    input_ids = torch.full((len(batch), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    state_indices = torch.zeros((len(batch), slots + 1), dtype=torch.long)
    terminal = torch.ones((len(batch), slots + 1), dtype=torch.long)
    actions = torch.zeros(size, dtype=torch.long)
    rewards = torch.zeros(size, dtype=torch.float)
    for row, (episode, included) in enumerate(zip(batch, include, strict=True)):
        p, n = episode.prompt_length, episode.num_actions
        input_ids[row, : len(episode.tokens)] = torch.tensor(episode.tokens)
        attention_mask[row, : len(episode.tokens)] = 1
        state_indices[row, : n + 1] = torch.arange(p - 1, p + n)
        state_indices[row, n + 1 :] = p + n - 1
        actions[row, :n] = torch.tensor(episode.tokens[p:])
        rewards[row, n - 1] = episode.reward
        terminal[row, :n] = 0 if included else 1
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        state_indices=state_indices,
        terminal=terminal,
        actions=actions,
        rewards=rewards,
    )
