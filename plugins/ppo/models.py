"""The trained module (causal LM + value head, optionally a separate critic) and the three kinds
of reference model.

``PolicyValueModel.forward`` runs the trunk once and returns the log-probabilities of the
response tokens and the values only at the positions that predict them: the LM head runs on
those positions alone, a chunk of positions at a time
(``rlhf_plugins.torch_helpers.token_logprobs``), so no ``[batch, positions, vocabulary]``
logits are ever held.

References (all frozen; ``run`` returns policy log-probabilities, values and reference
log-probabilities of the response tokens):

- ``HydraReference`` (``num_layers_unfrozen = k >= 1``): the policy trains only its top ``k``
  blocks, final norm and (untied) LM head; everything below is frozen, embeddings included
  (``rlhf_plugins.torch_helpers.freeze_bottom``). The reference holds frozen copies of exactly the
  trainable part. In one policy forward the input of block ``n - k`` is captured and replayed
  through the copies, so reference log-probabilities equal a full frozen copy's and cost
  ``k / n`` of a forward.
- ``SharedReference`` (``k = 0``): the whole LM is frozen and only the value head trains, so
  the policy is its own reference (a hydra with nothing copied).
- ``FrozenCopyReference`` (``k = -1``): a full frozen copy of the initial policy.
- ``AdapterOffReference`` (LoRA policy): the same model with its adapter switched off.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
    token_logprobs,
    token_logprobs_and_entropy,
)


@dataclass(frozen=True)
class Responses:
    """The response tokens of a batch and how to score them: ``tokens [batch, length]``
    start at position ``start`` of the inputs; log-probabilities are of the logits divided by
    ``temperature``."""

    start: int
    tokens: torch.Tensor
    temperature: float = 1.0

    def states(self, hidden: torch.Tensor) -> torch.Tensor:
        """The hidden states at the positions predicting the response tokens."""
        return hidden[:, self.start - 1 : -1]

    def logprobs(self, head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the tokens under ``head`` on the whole sequence's ``hidden``."""
        return token_logprobs(self.states(hidden), self.tokens, head, temperature=self.temperature)


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
        responses: torch.Tensor,
        temperature: float = 1.0,
        entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(logprobs, values, entropy)`` at the positions predicting the response tokens
        (``responses``, from position ``response_start`` on), ``[batch, response_length]``
        each (float32): the log-probabilities of the tokens under the logits divided by
        ``temperature``, the values, and with ``entropy`` the entropy of that distribution (no
        gradient; else None)."""
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        scored = Responses(response_start, responses, temperature)
        states = scored.states(trunk_hidden(self.trunk, inputs))
        head = self.policy.get_output_embeddings()
        if entropy:
            logprobs, entropies = token_logprobs_and_entropy(
                states, responses, head, temperature=temperature
            )
        else:
            logprobs = token_logprobs(states, responses, head, temperature=temperature)
            entropies = None
        if self.critic is not None:
            states = scored.states(trunk_hidden(self.critic, inputs))
        values = self.value_head(states).squeeze(-1)
        return logprobs, values.float(), entropies


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


class Reference(nn.Module, ABC):
    """What every reference does: ``run`` scores the responses with the policy (one forward of
    the trained module) and with the reference."""

    def run(
        self, model: PolicyValueModel, inputs: dict[str, torch.Tensor], responses: Responses
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(policy log-probabilities, values, reference log-probabilities)`` of the
        response tokens, ``[batch, response_length]`` each."""
        with self.watching() as seen:
            logprobs, values, _ = model(
                **inputs,
                response_start=responses.start,
                responses=responses.tokens,
                temperature=responses.temperature,
            )
        return logprobs, values, self.logprobs(model, inputs, responses, seen, logprobs)

    @contextmanager
    def watching(self) -> Iterator[dict[str, Any]]:
        """Active during the policy's forward; yields what the reference keeps of it."""
        yield {}

    @abstractmethod
    def logprobs(
        self,
        model: PolicyValueModel,
        inputs: dict[str, torch.Tensor],
        responses: Responses,
        seen: dict[str, Any],
        policy_logprobs: torch.Tensor,
    ) -> torch.Tensor:
        """The reference's log-probabilities of the response tokens."""


class HydraReference(Reference):
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
    def watching(self) -> Iterator[dict[str, Any]]:
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

    def logprobs(self, model, inputs, responses, seen, policy_logprobs):
        """The captured input of block ``n - k`` through the frozen copies."""
        args, kwargs = list(seen["args"]), dict(seen["kwargs"])
        in_kwargs = "hidden_states" in kwargs
        hidden = kwargs["hidden_states"] if in_kwargs else args[0]
        for block in self.blocks:
            if in_kwargs:
                kwargs["hidden_states"] = hidden
            else:
                args[0] = hidden
            output = block(*args, **kwargs)
            hidden = output[0] if isinstance(output, tuple) else output
        states = self.norm(responses.states(hidden))
        return token_logprobs(
            states, responses.tokens, self.head, temperature=responses.temperature
        )


class SharedReference(Reference):
    """The policy itself, for a policy whose LM is frozen whole (``num_layers_unfrozen = 0``):
    its log-probabilities are the reference ones (holds no weights)."""

    def logprobs(self, model, inputs, responses, seen, policy_logprobs):
        return policy_logprobs


class FrozenCopyReference(Reference):
    """A full frozen copy of the initial policy."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = freeze(copy.deepcopy(lm))

    def logprobs(self, model, inputs, responses, seen, policy_logprobs):
        hidden = trunk_hidden(self.lm.base_model, inputs)
        return responses.logprobs(self.lm.get_output_embeddings(), hidden)


class AdapterOffReference(Reference):
    """The LoRA policy with its adapter switched off (holds no weights of its own)."""

    def __init__(self, peft_model: Any):
        super().__init__()
        self.peft_model = [peft_model]

    def logprobs(self, model, inputs, responses, seen, policy_logprobs):
        with self.peft_model[0].disable_adapter():
            hidden = trunk_hidden(model.trunk, inputs)
            return responses.logprobs(model.policy.get_output_embeddings(), hidden)


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
