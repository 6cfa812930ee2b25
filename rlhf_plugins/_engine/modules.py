"""Model pieces written once for every trainer (``ppo``, ``ilql``, ``reward-model``, a
plugin's): trlX's MLP head, dropout off and trlX's ``num_layers_unfrozen`` freezing rule.

Import this module inside a factory's body or a plugin's implementation module, never from a
plugin's hook module: it imports torch (and transformers through ``rlhf_plugins._engine.hf``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlhf_plugins._engine.errors import UserError
from rlhf_plugins._engine.hf import decoder_blocks

FINAL_NORM_NAMES = ("ln_f", "final_layer_norm", "norm", "final_norm")
"""Attribute names of a trunk's final normalisation layer, in the order they are tried."""


class MLPHead(nn.Sequential):
    """trlX's ``make_head``: ``Linear(hidden, 2 * hidden) -> ReLU -> Linear(2 * hidden, out)``,
    with trlX's state-dict keys (``0.weight``, ``0.bias``, ``2.weight``, ``2.bias``).

    ``forward(x, index)`` with ``index`` (a long tensor shaped like ``x`` minus its last
    dimension) evaluates only output unit ``index`` at each position, one number per position,
    without computing the others."""

    def __init__(self, hidden_size: int, out_size: int):
        super().__init__(
            nn.Linear(hidden_size, 2 * hidden_size), nn.ReLU(), nn.Linear(2 * hidden_size, out_size)
        )

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self[1](self[0](x))
        out = self[2]
        if index is None:
            return out(hidden)
        return (hidden * out.weight[index]).sum(-1) + out.bias[index]

    @property
    def dtype(self) -> torch.dtype:
        return self[0].weight.dtype


def disable_dropout(target: Any) -> Any:
    """Turn every dropout off and return ``target``, a model or (before a model is built from
    it) a transformers config. In a config, every ``*dropout*`` / ``*pdrop*`` probability
    becomes 0, nested configs included, so a model built from it, or reloaded from its saved
    config, has no dropout. In a model, also each ``nn.Dropout``'s ``p`` and each float module
    attribute named ``*dropout*`` (attention dropout applied functionally, e.g. GPT-J's
    ``attention_dropout``). Used where rollouts and training must compute the same
    log-probabilities (``ppo``) and where trlX trains without dropout (reward models)."""
    if not isinstance(target, nn.Module):
        _zero_config_dropout(target)
        return target
    for module in target.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if isinstance(value, float) and "dropout" in name:
                setattr(module, name, 0.0)
    config = getattr(target, "config", None)
    if config is not None:
        _zero_config_dropout(config)
    return target


def _zero_config_dropout(config: Any) -> None:
    for key, value in list(vars(config).items()):
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
            setattr(config, key, 0.0)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):
            _zero_config_dropout(value)


def final_norm(trunk: nn.Module) -> nn.Module:
    """The trunk's final normalisation layer (one of ``FINAL_NORM_NAMES``); a ``UserError``
    when it has none of them."""
    for name in FINAL_NORM_NAMES:
        module = getattr(trunk, name, None)
        if isinstance(module, nn.Module):
            return module
    raise UserError(
        f"{type(trunk).__name__}: no final norm ({', '.join(FINAL_NORM_NAMES)}) "
        "found; use num_layers_unfrozen = -1 (train every layer) for this model"
    )


def freeze_bottom(model: nn.Module, num_layers_unfrozen: int) -> None:
    """trlX's ``num_layers_unfrozen`` on a Hugging Face model (a causal LM or a sequence
    classifier), one rule for every trainer:

    - ``-1``: nothing is frozen;
    - ``k >= 1``: the trunk (``model.base_model``) is frozen except its top ``k`` blocks and
      its final norm: embeddings (positions included) and the blocks below stay as loaded.
      Modules outside the trunk (the LM head, a classifier's ``score``) keep training, unless
      they share their weights with the frozen input embeddings (a tied LM head);
    - ``0``: the trunk and the LM head (output embeddings) are frozen: only heads that are
      not the model's own (a value head, ILQL's heads, a classifier's ``score``) train.

    A ``UserError`` when ``k`` exceeds the model's blocks or, for ``k >= 1``, the trunk has no
    recognised final norm."""
    if num_layers_unfrozen == -1:
        return
    blocks = decoder_blocks(model)
    if num_layers_unfrozen > len(blocks):
        raise UserError(
            f"num_layers_unfrozen ({num_layers_unfrozen}) exceeds the model's {len(blocks)} layers"
        )
    trunk = model.base_model
    trunk.requires_grad_(False)
    if num_layers_unfrozen == 0:
        head = model.get_output_embeddings()
        if head is not None:
            head.requires_grad_(False)
        return
    blocks[len(blocks) - num_layers_unfrozen :].requires_grad_(True)
    final_norm(trunk).requires_grad_(True)
