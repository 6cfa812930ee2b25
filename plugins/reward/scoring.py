"""The ``gptj-reward-head`` reward function: batched scoring with a trained reward model.

Rows are tokenized as in training (``model.encode_groups``), sorted by length so each batch
pads little, scored at their last real token, and returned in the caller's order. A trlX
``GPTRewardModel`` checkpoint (``base_model`` set) reads the text it was trained on instead
(``trlx_rows``).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from rlhf_builtins.reward.maths import end_rewards
from rlhf_builtins.reward.models import HeadOutputs, encode_groups, pad_right
from rlhf_plugins import UserError
from rlhf_plugins.torch_helpers import (
    batched,
    load_pretrained,
    load_pretrained_tokenizer,
    loading_whole,
)

TRLX_PREFIX, TRLX_SUFFIX = "<|startoftext|>", "<|endoftext|>"
"""What trlX's summarize_rlhf put around every text its reward model read."""


def trlx_rows(
    tokenizer: Any, prompts: list[str], completions: list[str], max_length: int
) -> list[list[int]]:
    """The rows trlX's summarize_rlhf trained and scored its ``GPTRewardModel`` on: the one
    string ``"<|startoftext|>" + prompt + completion + "<|endoftext|>"``, tokenized as its
    ``get_scores`` did (the tokenizer's defaults) and cut from the right at ``max_length``
    (its ``truncation=True``), each row ending before its first EOS token: the position whose
    score ``GPTRewardModel`` read (the token before the first pad, pad being EOS there)."""
    texts = [TRLX_PREFIX + p + c + TRLX_SUFFIX for p, c in zip(prompts, completions, strict=True)]
    eos = tokenizer.eos_token_id
    rows = [row[:max_length] for row in tokenizer(texts)["input_ids"]]
    return [row[: row.index(eos)] if eos in row else row for row in rows]


def load_saved_reward_model(
    source: str, *, tokenizer: str | None = None, **loading: Any
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a ``save_pretrained`` reward-model directory or hub id;
    ``loading`` (``dtype``, ``attn_implementation``) goes to ``load_pretrained``, the tokenizer
    comes from ``tokenizer`` when set."""
    if Path(source).exists() and not (Path(source) / "config.json").is_file():
        raise UserError(
            f"{source} has no config.json: not a saved reward model (for a trlX "
            "checkpoint set 'base_model')"
        )
    model = load_pretrained(AutoModelForSequenceClassification, source, **loading)
    if model.config.num_labels != 1:
        raise UserError(f"{source} is not a reward model (num_labels = {model.config.num_labels})")
    return model.eval(), load_pretrained_tokenizer(tokenizer or source)


class RewardHead:
    """``fn(prompts, completions, **columns) -> list[float]``: the reward model's score of each
    prompt + completion (rows from ``encode``). The model loads on first use."""

    def __init__(
        self,
        source: str,
        base_model: str | None = None,
        batch_size: int = 16,
        max_length: int = 550,
        device: Any = None,
        dtype: str = "float32",
        attn_implementation: str | None = None,
        tokenizer: str | None = None,
    ):
        self.source = source
        self.base_model = base_model
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self.tokenizer = tokenizer

    @cached_property
    def loaded(self) -> tuple[Any, Any, HeadOutputs]:
        """Model, tokenizer and head hook. The model loads whole on every rank, also where a
        stage runs under DeepSpeed ZeRO-3 (``rlhf_plugins.torch_helpers.loading_whole``): it only
        scores, outside any engine, and each rank scores its own rows."""
        with loading_whole():
            if self.base_model is not None:
                from rlhf_builtins.reward.legacy import load_trlx_reward_model

                model, tokenizer = load_trlx_reward_model(
                    self.source, self.base_model, self.tokenizer, self.attn_implementation
                )
                if self.dtype != "auto":
                    model = model.to(dtype=getattr(torch, self.dtype))
            else:
                model, tokenizer = load_saved_reward_model(
                    self.source,
                    tokenizer=self.tokenizer,
                    dtype=self.dtype,
                    attn_implementation=self.attn_implementation,
                )
        model = model.to(device=self.device)
        return model, tokenizer, HeadOutputs(model)

    def encode(self, prompts: list[str], completions: list[str]) -> list[list[int]]:
        """The token rows scored: ``model.encode_groups`` as in training, or ``trlx_rows``
        for a trlX checkpoint."""
        _, tokenizer, _ = self.loaded
        if self.base_model is not None:
            return trlx_rows(tokenizer, prompts, completions, self.max_length)
        groups = [(completion,) for completion in completions]
        return [rows[0] for rows in encode_groups(tokenizer, prompts, groups, self.max_length)]

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], **columns: list) -> list[float]:
        if len(prompts) != len(completions):
            raise UserError(
                f"gptj-reward-head: {len(prompts)} prompts but {len(completions)} completions"
            )
        if not prompts:
            return []
        model, tokenizer, head_outputs = self.loaded
        rows = self.encode(list(prompts), list(completions))
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        scores = [0.0] * len(rows)
        for chunk in batched(order, self.batch_size):
            input_ids, attention_mask = pad_right([rows[i] for i in chunk], tokenizer.pad_token_id)
            input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
            values = end_rewards(head_outputs(model, input_ids, attention_mask), attention_mask)
            for index, value in zip(chunk, values.tolist(), strict=True):
                scores[index] = value
        return scores
