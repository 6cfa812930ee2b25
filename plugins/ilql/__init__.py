"""Trainer ``ilql`` and policy ``ilql``: Implicit Language Q-Learning (Snell et al., 2022, as
trlX implemented it) from any dataset's ``offline`` view (prompt, completion, reward), and
Q-guided decoding with the trained heads.

This hook module imports nothing heavy; the implementation lives in the modules beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from rlhf_builtins.ilql.settings import ILQLSettings
from rlhf_plugins import (
    AttnImplementation,
    Dataset,
    Length,
    LocalPath,
    ModelDtype,
    Policy,
    StageFn,
    UserError,
    Views,
    hookimpl,
    max_length_setting,
    saved_model_context,
)

OfflineDataset = Annotated[Dataset, Views("offline")]
"""The dataset slots of the ``ilql`` trainer: the ``offline`` view (prompt, completion,
reward)."""


@hookimpl
def register_trainers(register):
    register(
        "ilql",
        ilql_trainer,
        description="Offline RL (ILQL): V/Q heads, expectile, CQL and AWAC losses.",
        sequence_length=max_length_setting,
    )


@hookimpl
def register_policies(register):
    register(
        "ilql",
        ilql_policy,
        description="A saved ILQL model decoding with Q guidance (decode_beta sweeps).",
        context_length=saved_ilql_context,
    )


def ilql_trainer(
    policy: Policy,
    dataset: OfflineDataset,
    eval_dataset: OfflineDataset | None = None,
    *,
    settings: ILQLSettings,
) -> StageFn:
    """Train V, Q and target-Q heads and the LM of ``policy`` on ``dataset`` (offline view:
    prompt, completion, reward; rewards standardised over the dataset when
    ``normalize_rewards``). Actions are the completion tokens plus EOS; the reward sits on the
    last one.

    Loss = Q regression to ``r + gamma * V(s')`` + expectile V regression toward min target Q
    (``tau``) + ``cql_scale`` * CQL + ``awac_scale`` * LM loss weighted by
    ``exp(awac_beta * (Q - V))``. Target heads move by Polyak averaging (``alpha``) every
    ``target_sync_steps`` optimizer steps. Episodes over ``max_length`` tokens (unset: the
    model's context; above it: an error) lose prompt tokens from the left. With
    ``eval_dataset``, every loss term is evaluated every ``eval_steps`` and at the end. Saves
    the causal LM (loadable by ``hf-causal-lm``), the tokenizer and the heads (``ilql``
    policy) into the stage directory. ``settings`` (``ILQLSettings``) were validated whole."""
    from rlhf_builtins.ilql.trainer import ILQLStage

    return ILQLStage(policy, dataset, eval_dataset, settings)


def ilql_policy(
    from_stage: str | None = None,
    path: Annotated[
        LocalPath | None, Field(description="a directory an ilql stage wrote (or from_stage)")
    ] = None,
    decode_beta: Annotated[
        float | Annotated[list[float], Field(min_length=1)],
        Field(description="advantage weight of Q-guided decoding; a list: one variant per beta"),
    ] = 1.0,
    top_k: Annotated[
        int | None,
        Field(ge=0, description="when set, imposed top-k (0: off); unset: the caller's"),
    ] = None,
    temperature: Annotated[
        float | None,
        Field(ge=0, description="when set, imposed temperature (0: argmax); unset: the caller's"),
    ] = None,
    dtype: ModelDtype = None,
    attn_implementation: AttnImplementation = None,
) -> Policy:
    """The ILQL model saved by an ``ilql`` stage (``from_stage``) or in a directory (``path``).
    Its ``generate`` shifts the LM logits by ``decode_beta * (min target Q - V)``; a list of
    betas gives one variant per beta (labelled ``beta=<value>``) for evaluators to sweep.
    ``temperature`` and ``top_k``, when set, replace the caller's sampling settings.
    ``dtype`` and ``attn_implementation``, when set, win over what the stage asks for, as in
    ``hf-causal-lm``."""
    if (from_stage is None) == (path is None):
        raise UserError("ilql policy takes exactly one of 'from_stage' or 'path'")
    from rlhf_builtins.ilql.policy import ILQLPolicy, ILQLPolicySweep

    directory = Path(from_stage or path)
    chosen = dict(dtype=dtype, attn_implementation=attn_implementation)
    common = dict(
        top_k=top_k,
        temperature=temperature,
        chosen={key: value for key, value in chosen.items() if value is not None},
    )
    if isinstance(decode_beta, list):
        return ILQLPolicySweep(directory, decode_betas=[float(b) for b in decode_beta], **common)
    return ILQLPolicy(directory, decode_beta=float(decode_beta), **common)


def saved_ilql_context(settings: dict[str, Any], base_dir: Path) -> Length | None:
    """The ``ilql`` policy's positions when ``path`` is given (its config.json); None for
    ``from_stage`` (known once the model loads)."""
    return saved_model_context(settings["path"], base_dir)
