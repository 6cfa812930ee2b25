"""Policy ``ilql``: a saved ILQL model (causal LM + heads) that decodes with Q guidance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_builtins.ilql.decoding import attach_q_guidance, impose_sampling, sampling_overrides
from rlhf_builtins.ilql.models import HEADS_WEIGHTS, ILQLHeads, has_heads, load_heads
from rlhf_plugins import Policy, UserError
from rlhf_plugins.torch_helpers import ensure_pad_token, load_pretrained


def beta_label(beta: float) -> str:
    """``beta=1``, ``beta=0.5``: the variant label of one decode_beta."""
    return f"beta={beta:g}"


class ILQLPolicy:
    """The ILQL model saved in ``directory``. ``load_model()`` returns the causal LM with the
    heads attached (submodule ``ilql_heads``) whose ``generate`` shifts the logits by
    ``decode_beta * (min target Q - V)`` and applies the policy's ``top_k``/``temperature``
    when set; ``chosen`` (``dtype``, ``attn_implementation``) overrides what the caller asks
    for. ``load_parts()`` returns the plain LM and the heads (to train further)."""

    def __init__(
        self,
        directory: Path,
        *,
        decode_beta: float,
        top_k: int | None,
        temperature: float | None,
        chosen: dict[str, Any] | None = None,
    ):
        if not has_heads(directory):
            raise UserError(
                f"ilql policy: {directory} has no {HEADS_WEIGHTS}: not the output "
                "of an ilql stage (use hf-causal-lm for a plain causal LM)"
            )
        self.directory = directory
        self.decode_beta = decode_beta
        self.top_k = top_k
        self.temperature = temperature
        self.chosen = dict(chosen or {})
        self.name = f"{directory} ({beta_label(decode_beta)})"

    def load_tokenizer(self) -> Any:
        return ensure_pad_token(AutoTokenizer.from_pretrained(self.directory))

    def load_parts(
        self, auto_class: Any = AutoModelForCausalLM, **kwargs: Any
    ) -> tuple[Any, ILQLHeads]:
        model = load_pretrained(
            auto_class,
            str(self.directory),
            **(kwargs | self.chosen),
        )
        return model, load_heads(self.directory)

    def load_model(self, auto_class: Any = AutoModelForCausalLM, **kwargs: Any) -> Any:
        model, heads = self.load_parts(auto_class, **kwargs)
        attach_q_guidance(model, heads, self.decode_beta)
        return impose_sampling(model, sampling_overrides(self.top_k, self.temperature))


class ILQLPolicySweep:
    """Several decode_betas of one saved ILQL model: evaluators expand ``variants()``, one
    ``ILQLPolicy`` per beta labelled ``beta=<value>``."""

    def __init__(
        self,
        directory: Path,
        *,
        decode_betas: list[float],
        **settings: Any,
    ):
        self.policies = {
            beta_label(b): ILQLPolicy(directory, decode_beta=b, **settings) for b in decode_betas
        }
        self.name = f"{directory} (decode_beta sweep {', '.join(f'{b:g}' for b in decode_betas)})"
        self.directory = directory

    def variants(self) -> dict[str, Policy]:
        return dict(self.policies)

    def load_tokenizer(self) -> Any:
        return next(iter(self.policies.values())).load_tokenizer()

    def load_model(self, auto_class: Any = AutoModelForCausalLM, **kwargs: Any) -> Any:
        raise UserError(
            f"ilql policy {self.directory}: decode_beta is a list "
            f"({', '.join(self.policies)}); only an evaluator that expands "
            "variants() can use it; give one decode_beta here"
        )
