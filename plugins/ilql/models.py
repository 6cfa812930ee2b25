"""ILQL heads on a causal-LM trunk, and the saved layout.

``ILQLHeads``: a V head, one or two Q heads over the vocabulary and their target copies
(no gradients; Polyak-averaged toward the Q heads). Each head is trlX's MLP
(``rlhf_plugins.torch_helpers.MLPHead``: hidden -> 2*hidden -> out, trlX's state-dict keys).
``ILQLModel`` runs the trunk once and applies the LM head and the ILQL heads only at the state
positions of a batch, and gives per taken action what the objective reads: Q values through
``MLPHead``'s one-output path, log-probabilities under the LM and under softmax(Q) a chunk of
positions at a time (``rlhf_plugins.torch_helpers.token_logprobs``), so no
``[batch, actions, vocabulary]`` tensor is held.

Saved layout of a stage directory: the causal LM via ``save_pretrained`` (so ``hf-causal-lm``
with ``from_stage`` loads it as a plain model), the tokenizer, and beside them
``ilql_heads.safetensors`` plus ``ilql_heads.json`` (head shapes).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlhf_builtins.ilql.maths import polyak_update
from rlhf_plugins.torch_helpers import MLPHead, token_logprobs

HEADS_WEIGHTS = "ilql_heads.safetensors"
HEADS_CONFIG = "ilql_heads.json"


@dataclass(frozen=True)
class HeadsConfig:
    hidden_size: int
    vocab_size: int
    two_qs: bool


class ILQLHeads(nn.Module):
    """V, Q and target Q heads over final hidden states."""

    def __init__(self, config: HeadsConfig):
        super().__init__()
        self.config = config
        self.v_head = MLPHead(config.hidden_size, 1)
        count = 2 if config.two_qs else 1
        self.q_heads = nn.ModuleList(
            MLPHead(config.hidden_size, config.vocab_size) for _ in range(count)
        )
        self.target_q_heads = copy.deepcopy(self.q_heads).requires_grad_(False)

    def forward(
        self, states: Tensor, actions: Tensor
    ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...], Tensor]:
        """``states [B, S, H]`` (hidden states at the state positions), ``actions [B, A]`` with
        ``A = S - 1``. Returns ``values [B, S]``; for each Q head, Q at the taken actions and
        their log-probabilities under softmax(Q) (``[B, A]`` each); and the min target Q at the
        taken actions (``[B, A]``)."""
        values = self.v_head(states).squeeze(-1)
        action_states = states[:, :-1]
        q_taken = tuple(head(action_states, actions) for head in self.q_heads)
        q_logprobs = tuple(token_logprobs(action_states, actions, head) for head in self.q_heads)
        with torch.no_grad():
            target_q = torch.stack([head(action_states, actions) for head in self.target_q_heads])
        return values, q_taken, q_logprobs, target_q.min(dim=0).values

    def advantage(self, hidden: Tensor) -> Tensor:
        """``min target Q(s, .) - V(s)`` over the vocabulary for every position of ``hidden``
        (``[..., H] -> [..., V]``): the decoding shift."""
        target_q = torch.stack([head(hidden) for head in self.target_q_heads]).min(dim=0).values
        return target_q - self.v_head(hidden)

    def sync_targets(self, alpha: float) -> None:
        """Polyak step of every target head toward its Q head."""
        polyak_update(
            list(self.target_q_heads.parameters()), list(self.q_heads.parameters()), alpha
        )


def heads_for(model: Any, two_qs: bool) -> ILQLHeads:
    """Freshly initialised heads sized for ``model``'s final hidden state and LM head, in the
    LM head's dtype and device."""
    lm_head = model.get_output_embeddings()
    config = HeadsConfig(
        hidden_size=lm_head.in_features, vocab_size=lm_head.out_features, two_qs=two_qs
    )
    return ILQLHeads(config).to(device=lm_head.weight.device, dtype=lm_head.weight.dtype)


def gather_positions(hidden: Tensor, indices: Tensor) -> Tensor:
    """``hidden[b, indices[b, i]]`` for every row: ``[B, L, H]``, ``[B, S]`` -> ``[B, S, H]``."""
    return hidden.gather(1, indices.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


@dataclass
class ILQLOutputs:
    """Per taken action (``[B, A]``): its log-probability under the LM, Q and log-probability
    under softmax(Q) for each Q head, the min target Q; and the values at every state
    (``[B, S]``). The arguments of ``maths.ilql_objective``."""

    lm_logprobs: Tensor
    q_taken: tuple[Tensor, ...]
    q_logprobs: tuple[Tensor, ...]
    target_q: Tensor
    values: Tensor


class ILQLModel(nn.Module):
    """A causal LM (``base``) with ILQL ``heads``; one module so that DDP and DeepSpeed wrap
    both. The forward pass runs the trunk (``base.base_model``) once and evaluates the LM
    head and the ILQL heads at the state positions only."""

    def __init__(self, base: Any, heads: ILQLHeads):
        super().__init__()
        self.base = base
        self.heads = heads

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, state_indices: Tensor, actions: Tensor
    ) -> ILQLOutputs:
        trunk = self.base.base_model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        )
        states = gather_positions(trunk.last_hidden_state, state_indices)
        lm_logprobs = token_logprobs(states[:, :-1], actions, self.base.get_output_embeddings())
        values, q_taken, q_logprobs, target_q = self.heads(
            states.to(self.heads.v_head.dtype), actions
        )
        return ILQLOutputs(
            lm_logprobs=lm_logprobs,
            q_taken=q_taken,
            q_logprobs=q_logprobs,
            target_q=target_q,
            values=values,
        )


def save_ilql_model(
    directory: Path, model: ILQLModel, state: dict[str, Tensor] | None = None
) -> None:
    """Save ``model`` into ``directory``: its causal LM with ``save_pretrained`` and the heads
    beside it. ``state`` is the full ``ILQLModel`` state dict when it has to come from
    elsewhere (e.g. gathered across DeepSpeed ranks); by default the model's own."""
    from safetensors.torch import save_file

    state = model.state_dict() if state is None else state
    base = {k.removeprefix("base."): v for k, v in state.items() if k.startswith("base.")}
    heads = {
        k.removeprefix("heads."): v.detach().contiguous().cpu()
        for k, v in state.items()
        if k.startswith("heads.")
    }
    directory.mkdir(parents=True, exist_ok=True)
    model.base.save_pretrained(directory, state_dict=base)
    save_file(heads, str(directory / HEADS_WEIGHTS))
    (directory / HEADS_CONFIG).write_text(json.dumps(asdict(model.heads.config), indent=2) + "\n")


def has_heads(directory: Path) -> bool:
    return (directory / HEADS_WEIGHTS).is_file() and (directory / HEADS_CONFIG).is_file()


def load_heads(directory: Path) -> ILQLHeads:
    """The heads saved in ``directory`` (float32, on the CPU)."""
    from safetensors.torch import load_file

    config = HeadsConfig(**json.loads((directory / HEADS_CONFIG).read_text()))
    heads = ILQLHeads(config)
    heads.load_state_dict(load_file(str(directory / HEADS_WEIGHTS)))
    return heads
