"""Import of a trlX ``GPTRewardModel`` checkpoint (summarize_rlhf's reward model).

Its ``pytorch_model.bin`` holds ``transformer.*`` (the trunk) and ``v_head.weight`` (the
head, no bias) but no config: the trunk's config and tokenizer come from ``base_model`` (the
SFT model it was built on). The file is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from rlhf_builtins.reward.models import HEAD_NAME, reward_config
from rlhf_plugins import UserError
from rlhf_plugins.torch_helpers import ensure_pad_token

LEGACY_FILE = "pytorch_model.bin"
TRUNK_PREFIX = "transformer."
HEAD_KEY = "v_head.weight"
OBSOLETE_BUFFERS = (".attn.bias", ".attn.masked_bias")
"""Causal-mask buffers that older transformers versions saved with GPT-2/GPT-J weights."""


def legacy_file(checkpoint: str) -> Path:
    """``checkpoint`` as a local ``.bin`` file: itself, ``<dir>/pytorch_model.bin``, or the
    file downloaded from a hub repository of that name."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        path = path / LEGACY_FILE
    elif not path.exists():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(checkpoint, LEGACY_FILE))
    if not path.is_file():
        raise UserError(f"{checkpoint}: no {LEGACY_FILE} (a trlX reward-model checkpoint)")
    return path


def load_tensors(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only. A file that
    pickles anything else (a class, a function) is refused with a ``UserError`` naming the
    file and the first such object: unpickling it could run code, and no setting loads it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)", str(exc))
        if found is None and "Weights only load failed" not in str(exc):
            raise UserError(f"{path}: not a readable torch checkpoint ({exc})") from None
        what = f" (it references {found[1]})" if found else ""
        raise UserError(
            f"{path}: refused: the file holds Python objects besides tensors{what}, and "
            "unpickling them could run arbitrary code; only plain tensor state dicts are read "
            "(torch.load weights_only=True) and no recipe setting turns this check off "
            "(convert the file to safetensors where you trust it)"
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise UserError(f"{path}: not a readable torch checkpoint ({exc})") from None


def convert_state_dict(
    state: dict[str, torch.Tensor], trunk_prefix: str
) -> dict[str, torch.Tensor]:
    """trlX keys -> ``...ForSequenceClassification`` keys (``<trunk_prefix>.*``, ``score.weight``)."""
    if HEAD_KEY not in state:
        raise UserError(f"not a trlX reward-model state dict: no '{HEAD_KEY}'")
    converted = {f"{HEAD_NAME}.weight": state[HEAD_KEY]}
    for key, value in state.items():
        if key.startswith(TRUNK_PREFIX) and not key.endswith(OBSOLETE_BUFFERS):
            converted[f"{trunk_prefix}.{key.removeprefix(TRUNK_PREFIX)}"] = value
        elif key != HEAD_KEY and not key.endswith(OBSOLETE_BUFFERS):
            raise UserError(f"not a trlX reward-model state dict: unexpected key '{key}'")
    return converted


def load_trlx_reward_model(
    checkpoint: str, base_model: str, tokenizer: str | None, attn_implementation: str | None
) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the trlX checkpoint as a reward model of this package (its
    tokenizer ``base_model``'s unless ``tokenizer`` names another)."""
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(tokenizer or base_model))
    config = reward_config(AutoConfig.from_pretrained(base_model), tokenizer.pad_token_id)
    attention = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForSequenceClassification.from_config(config, **attention)
    state = load_tensors(legacy_file(checkpoint))
    try:
        result = model.load_state_dict(
            convert_state_dict(state, model.base_model_prefix), strict=False
        )
    except RuntimeError as exc:  # shapes that differ from the base model's
        raise UserError(f"{checkpoint} does not fit {base_model}: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        problems = [f"missing {k}" for k in result.missing_keys[:3]]
        problems += [f"unexpected {k}" for k in result.unexpected_keys[:3]]
        raise UserError(f"{checkpoint} does not fit {base_model}: {', '.join(problems)}")
    return model.eval(), tokenizer


def import_trlx_checkpoint(checkpoint: str, base_model: str, output_dir: str | Path) -> Path:
    """Write the trlX checkpoint as a ``save_pretrained`` reward-model directory."""
    model, tokenizer = load_trlx_reward_model(checkpoint, base_model, None, None)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return Path(output_dir)
