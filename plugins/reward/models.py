"""The reward model: a causal-LM trunk with a scalar head, as a Hugging Face
``AutoModelForSequenceClassification`` with ``num_labels = 1``.

Every causal LM in transformers that has a ``...ForSequenceClassification`` twin (GPT-J, GPT-2,
GPT-NeoX, Llama, ...) works. ``save_pretrained`` writes config and safetensors with the head
(``score.weight``), so ``AutoModelForSequenceClassification.from_pretrained`` reloads it exactly.

Contracts shared by training and scoring:

- text = prompt + completion, tokenized separately (no special tokens, no EOS appended) and
  joined by ``encode_groups``, the one function training and scoring both call; the whole
  text is kept when it fits in ``max_length``, otherwise the prompt loses tokens from its
  left so the completion survives;
- batches are right-padded; the score of a sequence is the head's output at its last real
  token (found from the attention mask, not from the pad id);
- dropout is off and a newly created head is initialised with std ``1/sqrt(hidden + 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoConfig, AutoModelForSequenceClassification
from transformers.utils import logging as transformers_logging

from rlhf_plugins import Policy, Prompt, UserError, render_completion, render_prompts
from rlhf_plugins.torch_helpers import decoder_blocks, disable_dropout, freeze_bottom

HEAD_NAME = "score"
HUB_KWARGS = (
    "revision",
    "trust_remote_code",
    "token",
    "cache_dir",
    "local_files_only",
    "gguf_file",
)


def reward_config(config: Any, pad_token_id: int | None) -> Any:
    """``config`` turned into a reward-model config: one label, no dropout, the pad id set."""
    config.num_labels = 1
    config.problem_type = "regression"
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    disable_dropout(config)
    return config


@contextmanager
def expected_key_changes_unreported() -> Iterator[None]:
    """Silence transformers' load report while a causal LM loads as a reward model: its
    ``lm_head`` is dropped and ``score`` is new by design; other missing keys are checked."""
    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)


class RewardModelLoader:
    """An ``auto_class`` for ``Policy.load_model``: loads the policy's trunk into a reward model.

    A head that the checkpoint lacks (the trunk is a causal LM) is initialised with std
    ``1/sqrt(hidden + 1)``; a checkpoint that already is a reward model keeps its head.
    """

    def __init__(self, pad_token_id: int | None):
        self.pad_token_id = pad_token_id

    def from_pretrained(self, name: str, **kwargs: Any) -> Any:
        hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        config = reward_config(AutoConfig.from_pretrained(name, **hub), self.pad_token_id)
        try:
            with expected_key_changes_unreported():
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    name, config=config, output_loading_info=True, **kwargs
                )
        except ValueError as exc:
            raise UserError(f"{name}: cannot build a reward model from it ({exc})") from exc
        missing_trunk = [k for k in info["missing_keys"] if not k.startswith(HEAD_NAME)]
        if missing_trunk:
            raise UserError(
                f"{name}: the checkpoint lacks {len(missing_trunk)} trunk weights "
                f"(e.g. {', '.join(missing_trunk[:3])})"
            )
        if any(key.startswith(HEAD_NAME) for key in info["missing_keys"]):
            init_head(model)
        return model

    def from_config(self, config: Any, **kwargs: Any) -> Any:
        model = AutoModelForSequenceClassification.from_config(
            reward_config(config, self.pad_token_id), **kwargs
        )
        init_head(model)
        return model


def load_reward_model(policy: Policy, tokenizer: Any) -> Any:
    """The policy's trunk with a scalar head (see ``RewardModelLoader``)."""
    return policy.load_model(auto_class=RewardModelLoader(tokenizer.pad_token_id))


def score_head(model: Any) -> nn.Linear:
    """The scalar head of a reward model."""
    head = getattr(model, HEAD_NAME, None)
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise UserError(
            f"{type(model).__name__} has no scalar '{HEAD_NAME}' head; "
            "is it a reward model (num_labels = 1)?"
        )
    return head


def init_head(model: Any) -> None:
    """Normal init with std ``1/sqrt(hidden + 1)`` (Stiennon et al. 2020's reward head),
    zero bias."""
    head = score_head(model)
    with torch.no_grad():
        head.weight.normal_(0.0, 1.0 / math.sqrt(head.in_features + 1))
        if head.bias is not None:
            head.bias.zero_()


def freeze_fraction(model: Any, fraction: float) -> int:
    """Freeze the bottom ``round(fraction * layers)`` blocks (``fraction`` in [0, 1]) and the
    embeddings below them: ``num_layers_unfrozen = layers - frozen`` in the one rule of
    ``rlhf_plugins.torch_helpers.freeze_bottom`` (the top blocks, the final norm and the head stay
    trainable; with every block frozen only the head trains), nothing frozen when no block is.
    Returns the number of frozen blocks."""
    layers = len(decoder_blocks(model))
    frozen = round(fraction * layers)
    freeze_bottom(model, layers - frozen if frozen else -1)
    return frozen


class HeadOutputs:
    """Keeps the head's output at every position from the latest forward pass.

    ``...ForSequenceClassification`` models apply the head to all positions and return only
    one pooled value; a forward hook captures the per-token rewards inside the model's own
    forward, so DDP and DeepSpeed wrappers see an ordinary call.

    The hook is registered again before every forward so that it runs after every other
    forward hook of the head, and keeps the output the module call really returns. Under
    DeepSpeed ZeRO-3 that matters: the engine (created after this object, by the Trainer's
    ``accelerator.prepare``) adds its own forward hook to the head, which returns the output
    passed through DeepSpeed's pre-backward function, the one that gathers the head's
    partitioned weight before its backward. A hook that ran before it kept the raw output,
    and the backward through it met the weight still partitioned (an empty placeholder).
    """

    def __init__(self, model: Any):
        self._latest: torch.Tensor | None = None
        self._head = score_head(model)
        self._handle = self._head.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._latest = output

    def _hook_last(self) -> None:
        """Register the hook again, after every forward hook the head has now."""
        self._handle.remove()
        self._handle = self._head.register_forward_hook(self._keep)

    def __call__(
        self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Per-token rewards ``[batch, length]`` (float32) of a right-padded batch."""
        self._hook_last()
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        rewards, self._latest = self._latest, None
        return rewards.squeeze(-1).float()

    def remove(self) -> None:
        self._handle.remove()


def join_tokens(
    prompt: Sequence[int], completions: Sequence[Sequence[int]], max_length: int
) -> list[list[int]]:
    """prompt + each completion, at most ``max_length`` tokens each.

    The whole prompt is kept when it fits beside the longest completion; otherwise it keeps
    its last ``max_length - longest`` tokens, the same ones for every completion (so pairs
    keep a common prefix). A completion longer than ``max_length`` is then cut from the right.
    """
    room = max(0, max_length - max(len(c) for c in completions))
    kept = list(prompt[max(0, len(prompt) - room) :])
    return [(kept + list(c))[:max_length] for c in completions]


def tokenize_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def encode_groups(
    tokenizer: Any,
    prompts: Sequence[Prompt],
    groups: Sequence[Sequence[Prompt]],
    max_length: int,
) -> list[list[list[int]]]:
    """The token rows a reward model reads, for training and scoring alike: for each prompt,
    one row per completion of its group (a pair in training, one completion in scoring).

    Prompt and completions are tokenized separately (no special tokens, no EOS) and joined
    with ``join_tokens``, so every row of a group starts with the same prompt ids. The ids
    equal those of the joined text exactly when the tokenizer does not merge across the
    boundary, e.g. for byte-level BPE when the completion starts with a space (the TL;DR
    views' layout). Conversations are rendered with ``tokenizer``'s chat template first
    (``rlhf_plugins.render_prompt``, ``render_completion``): the reward model reads a reply as
    its own chat template lays it out, in training and in scoring alike."""
    if len(prompts) != len(groups):
        raise ValueError(f"{len(prompts)} prompts but {len(groups)} groups of completions")
    prompt_ids = tokenize_texts(tokenizer, render_prompts(tokenizer, prompts, "reward model"))
    flat = tokenize_texts(
        tokenizer,
        [
            render_completion(tokenizer, prompt, c, "reward model")
            for prompt, group in zip(prompts, groups, strict=True)
            for c in group
        ],
    )
    rows, start = [], 0
    for prompt, group in zip(prompt_ids, groups, strict=True):
        rows.append(join_tokens(prompt, flat[start : start + len(group)], max_length))
        start += len(group)
    return rows


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``rows`` right-padded to the longest row."""
    tensors = [torch.as_tensor(row, dtype=torch.long) for row in rows]
    input_ids = pad_sequence(tensors, batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(row) for row in rows])
    attention_mask = (torch.arange(input_ids.shape[1]) < lengths.unsqueeze(1)).long()
    return input_ids, attention_mask
