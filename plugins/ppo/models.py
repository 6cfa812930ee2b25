"""The trained module (causal LM + value head, optionally a separate critic) and the three kinds
of reference model.

``PolicyValueModel.forward`` runs the trunk once and returns the LM logits and values only at
the positions that predict response tokens (no vocabulary projection over the prompt).

References (all frozen; ``run`` returns policy logits, values and reference logits):

- ``HydraReference`` (``num_layers_unfrozen = k >= 1``): the policy trains only its top ``k``
  blocks, final norm and (untied) LM head; everything below is frozen, embeddings included
  (``rlhf_plugins.torch_helpers.freeze_bottom``). The reference holds frozen copies of exactly the
  trainable part. In one policy forward the input of block ``n - k`` is captured and replayed
  through the copies, so reference logits equal a full frozen copy's and cost ``k / n`` of a
  forward.
- ``SharedReference`` (``k = 0``): the whole LM is frozen and only the value head trains, so
  the policy is its own reference (a hydra with nothing copied).
- ``FrozenCopyReference`` (``k = -1``): a full frozen copy of the initial policy.
- ``AdapterOffReference`` (LoRA policy): the same model with its adapter switched off.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rlhf_plugins import UserError
from rlhf_plugins.torch_helpers import (
    MLPHead,
    decoder_blocks,
    disable_dropout,
    final_norm,
    freeze_bottom,
)


def response_logits(lm: nn.Module, hidden: torch.Tensor, response_start: int) -> torch.Tensor:
    """LM-head logits at the positions predicting tokens ``response_start`` onwards."""
    return lm.get_output_embeddings()(hidden[:, response_start - 1 : -1])


def trunk_hidden(trunk: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return trunk(**inputs, use_cache=False).last_hidden_state


class PolicyValueModel(nn.Module):
    """The trained module: ``policy`` (a causal LM), ``value_head`` on its trunk, or on
    ``critic`` (a separate trunk) when given."""

    def __init__(self, policy: nn.Module, value_head: nn.Module, critic: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.critic = critic

    @property
    def trunk(self) -> nn.Module:
        return self.policy.base_model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        response_start: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, values)`` at the positions predicting the response tokens:
        ``[batch, response_length, vocab]`` and ``[batch, response_length]`` (float32)."""
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        hidden = trunk_hidden(self.trunk, inputs)
        logits = response_logits(self.policy, hidden, response_start)
        if self.critic is not None:
            hidden = trunk_hidden(self.critic, inputs)
        values = self.value_head(hidden[:, response_start - 1 : -1]).squeeze(-1)
        return logits, values.float()


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


class HydraReference(nn.Module):
    """Frozen copies of the policy's top ``k`` blocks, final norm and LM head (the head is
    shared instead when it is tied to the frozen input embeddings)."""

    def __init__(self, lm: nn.Module, k: int):
        super().__init__()
        layers = decoder_blocks(lm)
        self.split = len(layers) - k
        self.policy_layers = [layers]
        self.blocks = freeze(copy.deepcopy(layers[self.split :]))
        self.norm = freeze(copy.deepcopy(final_norm(lm.base_model)))
        head = lm.get_output_embeddings()
        self.shared_head = [head] if not head.weight.requires_grad else []
        self.own_head = None if self.shared_head else freeze(copy.deepcopy(head))

    @property
    def head(self) -> nn.Module:
        return self.shared_head[0] if self.shared_head else self.own_head

    @contextmanager
    def capture(self) -> Iterator[dict[str, Any]]:
        """While active, records the positional and keyword inputs of the policy's block
        ``n - k`` (the first one the reference replays)."""
        captured: dict[str, Any] = {}

        def hook(module, args, kwargs):
            captured["args"], captured["kwargs"] = args, kwargs

        handle = self.policy_layers[0][self.split].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield captured
        finally:
            handle.remove()

    def replay(self, captured: dict[str, Any], response_start: int) -> torch.Tensor:
        args, kwargs = list(captured["args"]), dict(captured["kwargs"])
        in_kwargs = "hidden_states" in kwargs
        hidden = kwargs["hidden_states"] if in_kwargs else args[0]
        for block in self.blocks:
            if in_kwargs:
                kwargs["hidden_states"] = hidden
            else:
                args[0] = hidden
            output = block(*args, **kwargs)
            hidden = output[0] if isinstance(output, tuple) else output
        hidden = self.norm(hidden[:, response_start - 1 : -1])
        return self.head(hidden)

    def run(
        self, model: PolicyValueModel, inputs: dict[str, torch.Tensor], response_start: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with self.capture() as captured:
            logits, values = model(**inputs, response_start=response_start)
        return logits, values, self.replay(captured, response_start)


class SharedReference(nn.Module):
    """The policy itself, for a policy whose LM is frozen whole (``num_layers_unfrozen = 0``):
    its logits are the reference logits (holds no weights)."""

    def run(
        self, model: PolicyValueModel, inputs: dict[str, torch.Tensor], response_start: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, values = model(**inputs, response_start=response_start)
        return logits, values, logits


class FrozenCopyReference(nn.Module):
    """A full frozen copy of the initial policy."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = freeze(copy.deepcopy(lm))

    def run(
        self, model: PolicyValueModel, inputs: dict[str, torch.Tensor], response_start: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, values = model(**inputs, response_start=response_start)
        hidden = trunk_hidden(self.lm.base_model, inputs)
        return logits, values, response_logits(self.lm, hidden, response_start)


class AdapterOffReference(nn.Module):
    """The LoRA policy with its adapter switched off (holds no weights of its own)."""

    def __init__(self, peft_model: Any):
        super().__init__()
        self.peft_model = [peft_model]

    def run(
        self, model: PolicyValueModel, inputs: dict[str, torch.Tensor], response_start: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, values = model(**inputs, response_start=response_start)
        with self.peft_model[0].disable_adapter():
            hidden = trunk_hidden(model.trunk, inputs)
            ref_logits = response_logits(model.policy, hidden, response_start)
        return logits, values, ref_logits


Reference = HydraReference | SharedReference | FrozenCopyReference | AdapterOffReference


def apply_lora(
    lm: nn.Module, r: int, alpha: float, dropout: float, target_modules: list[str] | None
) -> Any:
    """Wrap ``lm`` in a peft LoRA adapter (peft is optional)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("lora_r > 0 needs the optional package peft: pip install peft") from None
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
    )
    return get_peft_model(lm, config)


def build_models(
    lm: nn.Module,
    *,
    num_layers_unfrozen: int,
    separate_critic: bool,
    lora: dict[str, Any] | None = None,
) -> tuple[PolicyValueModel, Reference]:
    """The trained module and its reference for a freshly loaded causal LM ``lm``
    (``lora``: keyword arguments of ``apply_lora`` when the policy trains a LoRA adapter), with
    ``num_layers_unfrozen`` as ``rlhf_plugins.torch_helpers.freeze_bottom`` reads it."""
    disable_dropout(lm)
    hidden_size = lm.config.hidden_size
    if lora:
        peft_model = apply_lora(lm, **lora)
        lm = peft_model.get_base_model()
        reference: Reference = AdapterOffReference(peft_model)
    elif num_layers_unfrozen == -1:
        reference = FrozenCopyReference(lm)
    else:
        freeze_bottom(lm, num_layers_unfrozen)
        reference = (
            HydraReference(lm, num_layers_unfrozen) if num_layers_unfrozen else SharedReference()
        )
    critic = copy.deepcopy(lm.base_model).requires_grad_(True) if separate_critic else None
    head = MLPHead(hidden_size, 1).to(next(lm.parameters()).dtype)
    return PolicyValueModel(lm, head, critic), reference
