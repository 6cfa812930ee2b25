"""Q-guided decoding: the causal LM's logits shifted by ``decode_beta * (min target Q - V)``.

The shift is a forward hook on the model's LM head, which receives exactly the final hidden
states the ILQL heads read; so Hugging Face ``generate`` (KV cache, top-k, temperature, EOS and
padding handling, ``logits_to_keep`` so only the last position is scored) does the rest.
Shifting the raw logits instead of trlX's ``log_softmax(logits)`` changes nothing after top-k and
softmax (the two differ by a constant per row), and with ``decode_beta = 0`` the logits are the
base model's bit for bit.
"""

from __future__ import annotations

import functools
from typing import Any

from rlhf_builtins.ilql.models import ILQLHeads

HEADS_ATTRIBUTE = "ilql_heads"


def attach_q_guidance(model: Any, heads: ILQLHeads, decode_beta: float) -> Any:
    """Make ``model`` (a causal LM) decode with Q guidance: ``heads`` become its submodule
    ``ilql_heads`` (so ``.to(device)`` moves them) in the LM head's dtype, and every LM-head
    output is shifted by ``decode_beta * advantage``. Returns ``model``."""
    lm_head = model.get_output_embeddings()
    model.add_module(
        HEADS_ATTRIBUTE, heads.to(device=lm_head.weight.device, dtype=lm_head.weight.dtype)
    )
    model.decode_beta = decode_beta

    def shift(module: Any, args: tuple, logits: Any) -> Any:
        advantage = heads.advantage(args[0].to(heads.v_head.dtype))
        return logits + decode_beta * advantage.to(logits.dtype)

    lm_head.register_forward_hook(shift)
    return model


def sampling_overrides(top_k: int | None, temperature: float | None) -> dict[str, Any]:
    """``generate`` keyword arguments that impose a policy's decoding settings. A temperature
    decides everything: 0 is argmax, a positive one samples from the top ``top_k`` tokens
    (``None`` or 0: all of them). Without one, ``top_k`` alone replaces the caller's top-k and
    the caller's other settings stay."""
    if temperature is None:
        return {} if top_k is None else {"top_k": top_k}
    if temperature == 0:
        return dict(do_sample=False, temperature=None, top_k=None, top_p=None)
    return dict(do_sample=True, temperature=temperature, top_k=top_k or 0, top_p=1.0)


def impose_sampling(model: Any, overrides: dict[str, Any]) -> Any:
    """Wrap ``model.generate`` so ``overrides`` win over the caller's keyword arguments."""
    if overrides:
        generate = model.generate

        @functools.wraps(generate)
        def guided_generate(*args: Any, **kwargs: Any) -> Any:
            return generate(*args, **{**kwargs, **overrides})

        model.generate = guided_generate
    return model
