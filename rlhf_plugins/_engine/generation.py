"""Batched text generation shared by trainers and evaluators (imports torch).

Prompts are left-padded so every row continues from its last real token (and left-truncated
to fit the model's context); generation stops at EOS and uses the KV cache. transformers'
``generate`` runs the LM head on the last position only (``logits_to_keep = 1``), so no
vocabulary logits are computed for the prompt (tests/test_logprobs.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf_plugins._engine.chat import Prompt, render_prompts
from rlhf_plugins._engine.lengths import model_context, prompt_budget


@dataclass(frozen=True)
class SamplingSettings:
    """How to decode: greedy when ``do_sample`` is False."""

    max_new_tokens: int = 50
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def generate_kwargs(self, tokenizer: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        else:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return kwargs


def ensure_pad_token(tokenizer: Any) -> Any:
    """``tokenizer``, padding with EOS when it has no pad token (GPT-J, GPT-2); the attention
    mask keeps padded positions out of every loss and score."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode_prompts(
    tokenizer: Any, prompts: Sequence[Prompt], max_length: int | None = None, device: Any = None
) -> dict[str, torch.Tensor]:
    """Left-padded (and, with ``max_length``, left-truncated) prompt batch; conversations are
    rendered with ``tokenizer``'s chat template first (``rlhf_plugins.render_prompt``)."""
    side, trunc = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    try:
        batch = tokenizer(
            render_prompts(tokenizer, prompts, "generation"),
            return_tensors="pt",
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
            add_special_tokens=False,
        )
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = side, trunc
    return {k: v.to(device) for k, v in batch.items()} if device is not None else dict(batch)


def completion_texts(tokenizer: Any, sequences: torch.Tensor, prompt_length: int) -> list[str]:
    """Decode the generated part of each row, dropping EOS and padding."""
    return tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)


@torch.no_grad()
def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    sampling: SamplingSettings,
    *,
    batch_size: int = 16,
    max_prompt_length: int | None = None,
    progress: Any = None,
    policy: str = "model",
) -> list[str]:
    """Completions for ``prompts`` (text, or conversations rendered with ``tokenizer``'s chat
    template, the assistant's turn opened), in order, generated ``batch_size`` at a time. Prompts are
    left-truncated to ``max_prompt_length`` tokens, by default to the model's context minus
    ``max_new_tokens`` (``rlhf_plugins.prompt_budget``; a ``UserError`` naming ``policy`` when the
    two cannot fit it)."""
    max_prompt_length = prompt_budget(
        max_prompt_length,
        sampling.max_new_tokens,
        model_context(model),
        policy=policy,
        component="generation",
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        for chunk in batched(prompts, batch_size):
            batch = encode_prompts(tokenizer, chunk, max_prompt_length, device)
            sequences = model.generate(**batch, **sampling.generate_kwargs(tokenizer))
            outputs.extend(completion_texts(tokenizer, sequences, batch["input_ids"].shape[1]))
            if progress is not None:
                progress.update(len(chunk))
    finally:
        model.train(was_training)
    return outputs


def batched(items: Sequence, size: int) -> Iterator[list]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
