"""Per-token quantities of next-token distributions, computed chunk by chunk over positions:
the log-probability of each taken token (``token_logprobs``), with the entropy
(``token_logprobs_and_entropy``), and the exact KL between two models (``token_kl``).

A caller passes hidden states and the head that maps them to logits (an LM head, a Q head), or
logits and no head. At most ``LOGITS_CHUNK_ELEMENTS`` float32 logits exist at a time (one chunk
of positions), never ``[positions, vocabulary]`` for a whole batch: on a 49,152-token
vocabulary a batch of 4 x 512 positions is 400 MB per float32 copy, and a plain
``log_softmax(logits.float()).gather(...)`` makes several. Under autograd each chunk is
checkpointed: its logits are recomputed in the backward pass instead of being kept for it. The
results equal ``log_softmax(logits.float() / temperature).gather(-1, tokens)`` to float
rounding, gradients included (tests/test_logprobs.py).

``trl_logprob_tiles`` applies the same bound to TRL's fused LM head (the SFT, DPO, KTO, GRPO
and RLOO losses) where it runs without Triton.

Import this module inside a factory's body or a plugin's implementation module: it imports
torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

LOGITS_CHUNK_ELEMENTS = 1 << 23
"""Logits computed at once (8M: 32 MiB in float32), e.g. 170 positions of a 49,152 vocabulary."""

DEFAULT_CHUNK_POSITIONS = 256
"""Positions per chunk when the head's output size cannot be read before running it."""

Head = Callable[[Tensor], Tensor]


def chunk_positions(vocab_size: int | None) -> int:
    """Positions per chunk for a head of ``vocab_size`` outputs (``DEFAULT_CHUNK_POSITIONS``
    when unknown)."""
    if not vocab_size:
        return DEFAULT_CHUNK_POSITIONS
    return max(1, LOGITS_CHUNK_ELEMENTS // vocab_size)


def head_size(head: Head | None, hidden: Tensor) -> int | None:
    """The number of logits ``head`` gives per position: the last dimension of ``hidden``
    without a head, else the ``out_features`` of the head (or of its last layer), else None."""
    if head is None:
        return hidden.shape[-1]
    size = getattr(head, "out_features", None)
    if size is None and isinstance(head, nn.Sequential) and len(head):
        size = getattr(head[-1], "out_features", None)
    return size if isinstance(size, int) else None


def token_logprobs(
    hidden: Tensor,
    tokens: Tensor,
    head: Head | None = None,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """``log_softmax(head(hidden).float() / temperature)[token]`` at every position
    (``hidden [..., H]``, ``tokens [...]`` -> ``[...]`` float32), ``chunk_size`` positions at a
    time (default: ``LOGITS_CHUNK_ELEMENTS`` logits); without ``head``, ``hidden`` holds the
    logits."""
    options = dict(temperature=temperature, chunk_size=chunk_size)
    return _token_statistics(hidden, tokens, head, entropy=False, **options)[0]


def token_logprobs_and_entropy(
    hidden: Tensor, tokens: Tensor, head: Head | None = None, **options: Any
) -> tuple[Tensor, Tensor]:
    """``token_logprobs`` (the same arguments) and the entropy of the same distribution at
    every position (without a gradient), from one pass of the head."""
    logprobs, entropy = _token_statistics(hidden, tokens, head, entropy=True, **options)
    return logprobs, entropy


def token_kl(
    hidden: Tensor,
    head: Head | None,
    ref_hidden: Tensor,
    ref_head: Head | None,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """The exact ``KL(p || q) = sum_v p(v) (log p(v) - log q(v))`` at every position, ``p`` from
    ``head(hidden)`` and ``q`` from ``ref_head(ref_hidden)`` (``[..., H]`` each -> ``[...]``
    float32); without a head, the hidden states are the logits."""
    rows = hidden.shape[:-1]

    def kl(states: Tensor, ref_states: Tensor) -> tuple[Tensor]:
        log_p = torch.log_softmax(_logits(head, states, 1.0), dim=-1)
        log_q = torch.log_softmax(_logits(ref_head, ref_states, 1.0), dim=-1)
        return ((log_p.exp() * (log_p - log_q)).sum(-1),)

    size = chunk_size or chunk_positions(head_size(head, hidden))
    flat = (hidden.reshape(-1, hidden.shape[-1]), ref_hidden.reshape(-1, ref_hidden.shape[-1]))
    needs_grad = _needs_grad((head, ref_head), flat)
    (result,) = _by_chunks(kl, flat, size, needs_grad)
    return result.view(rows)


def _logits(head: Head | None, hidden: Tensor, temperature: float) -> Tensor:
    logits = (hidden if head is None else head(hidden)).float()
    return logits / temperature if temperature != 1.0 else logits


def _token_statistics(
    hidden: Tensor,
    tokens: Tensor,
    head: Head | None,
    *,
    entropy: bool,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[Tensor, ...]:
    def statistics(states: Tensor, taken: Tensor) -> tuple[Tensor, ...]:
        logits = _logits(head, states, temperature)
        normaliser = torch.logsumexp(logits, dim=-1)
        logprobs = logits.gather(-1, taken.unsqueeze(-1)).squeeze(-1) - normaliser
        if not entropy:
            return (logprobs,)
        with torch.no_grad():
            expected = (torch.softmax(logits, dim=-1) * logits).sum(-1)
        return logprobs, normaliser.detach() - expected

    size = chunk_size or chunk_positions(head_size(head, hidden))
    flat = (hidden.reshape(-1, hidden.shape[-1]), tokens.reshape(-1))
    results = _by_chunks(statistics, flat, size, _needs_grad((head,), flat[:1]))
    return tuple(result.view(tokens.shape) for result in results)


def _needs_grad(heads: tuple[Head | None, ...], inputs: tuple[Tensor, ...]) -> bool:
    """True when autograd is on and an input or a head's parameter requires a gradient."""
    if not torch.is_grad_enabled():
        return False
    if any(t.requires_grad for t in inputs):
        return True
    return any(p.requires_grad for h in heads if isinstance(h, nn.Module) for p in h.parameters())


def _by_chunks(
    function: Callable[..., tuple[Tensor, ...]],
    inputs: tuple[Tensor, ...],
    size: int,
    needs_grad: bool,
) -> tuple[Tensor, ...]:
    """``function`` on consecutive slices of ``size`` rows of ``inputs``, its outputs joined;
    each call checkpointed when a gradient is needed (recomputed in the backward pass)."""
    rows = inputs[0].shape[0]
    parts: list[tuple[Tensor, ...]] = []
    for start in range(0, max(rows, 1), size):
        chunk = tuple(t[start : start + size] for t in inputs)
        if needs_grad:
            parts.append(checkpoint(function, *chunk, use_reentrant=False))
        else:
            parts.append(function(*chunk))
    return tuple(torch.cat(outputs) for outputs in zip(*parts, strict=True))


@contextmanager
def trl_logprob_tiles(device: Any) -> Iterator[None]:
    """While active, TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``, used by
    TRL's SFT, DPO, KTO, GRPO and RLOO trainers) computes at most about
    ``LOGITS_CHUNK_ELEMENTS`` logits at a time on ``device`` when that is not a Triton device
    (the CPU). There TRL folds each tile of 4,096 tokens x 32,768 vocabulary entries with
    plain torch operations, each making a tile-sized float32 copy: over 2 GB at once at a batch
    of 4 x 512 tokens, more than the logits it avoids. On CUDA and XPU (Triton kernels), or with
    a TRL without that head, nothing changes."""
    module = _trl_chunked_logprob()
    vocab_tile = _trl_vocab_tile()
    tokens = getattr(module, "TOKEN_CHUNK_SIZE", None)
    if (
        getattr(device, "type", str(device)) in ("cuda", "xpu")
        or not isinstance(tokens, int)
        or not isinstance(vocab_tile, int)
    ):
        yield
        return
    module.TOKEN_CHUNK_SIZE = max(1, min(tokens, LOGITS_CHUNK_ELEMENTS // vocab_tile))
    try:
        yield
    finally:
        module.TOKEN_CHUNK_SIZE = tokens


def _trl_chunked_logprob() -> Any:
    try:
        from trl.kernels import chunked_logprob
    except ImportError:
        return None
    return chunked_logprob


def _trl_vocab_tile() -> int | None:
    try:
        from trl.trainer import utils
    except ImportError:
        return None
    return getattr(utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", None)
