"""Trainer ``ilql`` and policy ``ilql``: Implicit Language Q-Learning (Snell et al., 2022, as
trlX implemented it) from any dataset's ``offline`` view (prompt, completion, reward), and
Q-guided decoding with the trained heads.

This hook module imports nothing heavy; the implementation lives in the modules beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from rlhf_plugins import Dataset, Policy, StageFn, UserError, hookimpl
from rlhf_plugins.context import Length, max_length_setting, saved_model_context


@hookimpl
def register_trainers(register):
    register(
        "ilql",
        ilql_trainer,
        description="Offline RL (ILQL): V/Q heads, expectile, CQL and AWAC losses.",
    )


@hookimpl
def register_policies(register):
    register(
        "ilql",
        ilql_policy,
        description="A saved ILQL model decoding with Q guidance (decode_beta sweeps).",
    )


def ilql_trainer(
    policy: Policy,
    dataset: Dataset,
    eval_dataset: Dataset | None = None,
    tau: float = 0.7,
    gamma: float = 0.99,
    cql_scale: float = 0.1,
    awac_scale: float = 1.0,
    awac_beta: float = 0.0,
    alpha: float = 0.001,
    target_sync_steps: int = 5,
    two_qs: bool = True,
    num_layers_unfrozen: int = -1,
    normalize_rewards: bool = True,
    learning_rate: float = 5e-5,
    min_learning_rate: float = 0.0,
    lr_scheduler_type: Literal["cosine", "constant"] = "cosine",
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.95,
    adam_epsilon: float = 1e-8,
    weight_decay: float = 1e-6,
    max_grad_norm: float | None = None,
    num_train_epochs: float = 1.0,
    max_steps: int = -1,
    per_device_train_batch_size: int = 8,
    per_device_eval_batch_size: int = 16,
    max_length: int | None = None,
    logging_steps: int = 10,
    eval_steps: int | None = None,
    save_steps: int = 500,
    save_total_limit: int | None = 2,
) -> StageFn:
    """Train V, Q and target-Q heads and the LM of ``policy`` on ``dataset`` (offline view:
    prompt, completion, reward; rewards standardised over the dataset when
    ``normalize_rewards``). Actions are the completion tokens plus EOS; the reward sits on the
    last one.

    Loss = Q regression to ``r + gamma * V(s')`` + expectile V regression toward min target Q
    (``tau``) + ``cql_scale`` * CQL + ``awac_scale`` * LM loss weighted by
    ``exp(awac_beta * (Q - V))``. Target heads move by Polyak averaging (``alpha``) every
    ``target_sync_steps`` optimizer steps; ``two_qs`` uses two Q heads and their minimum.
    ``num_layers_unfrozen`` (trlX's): -1 trains the whole LM, ``k`` only its top ``k`` blocks,
    0 none (only the heads learn).

    Optimizer: AdamW (``adam_*``, ``weight_decay``), ``learning_rate`` annealed to
    ``min_learning_rate`` (cosine) or constant, optional ``max_grad_norm`` clipping. Length:
    ``max_steps`` when positive, else ``num_train_epochs``. Episodes over ``max_length`` tokens
    (unset: the model's context; above it: an error) lose prompt tokens from the left. Every term is logged each ``logging_steps``; with
    ``eval_dataset`` every ``eval_steps`` and at the end. Checkpoints every ``save_steps``
    (the last ``save_total_limit`` kept). Saves the causal LM (loadable by ``hf-causal-lm``),
    the tokenizer and the heads (``ilql`` policy) into the stage directory."""
    values = dict(locals())
    from rlhf_ilql.settings import ILQLSettings

    settings = ILQLSettings.from_values(values)
    from rlhf_ilql.training import ILQLStage

    return ILQLStage(policy, dataset, eval_dataset, settings)


ilql_trainer.sequence_length = max_length_setting


def ilql_policy(
    from_stage: str | None = None,
    path: Path | None = None,
    decode_beta: float | list[float] = 1.0,
    top_k: int | None = None,
    temperature: float | None = None,
) -> Policy:
    """The ILQL model saved by an ``ilql`` stage (``from_stage``) or in a directory (``path``).
    Its ``generate`` shifts the LM logits by ``decode_beta * (min target Q - V)``; a list of
    betas gives one variant per beta (labelled ``beta=<value>``) for evaluators to sweep.
    ``temperature`` (0 = argmax) and ``top_k`` (0 = off), when set, replace the caller's
    sampling settings; unset, the caller's apply."""
    if (from_stage is None) == (path is None):
        raise UserError("ilql policy takes exactly one of 'from_stage' or 'path'")
    betas = decode_beta if isinstance(decode_beta, list) else [decode_beta]
    if not betas:
        raise UserError("ilql policy: decode_beta is an empty list")
    if temperature is not None and temperature < 0:
        raise UserError(f"ilql policy: temperature must not be negative, got {temperature}")
    if top_k is not None and top_k < 0:
        raise UserError(f"ilql policy: top_k must not be negative, got {top_k}")
    from rlhf_ilql.policy import ILQLPolicy, ILQLPolicySweep

    directory = Path(from_stage or path)
    if isinstance(decode_beta, list):
        return ILQLPolicySweep(
            directory, decode_betas=[float(b) for b in betas], top_k=top_k, temperature=temperature
        )
    return ILQLPolicy(
        directory, decode_beta=float(decode_beta), top_k=top_k, temperature=temperature
    )


def saved_ilql_context(settings: dict[str, Any], base_dir: Path) -> Length | None:
    """The ``ilql`` policy's positions when ``path`` is given (its config.json); None for
    ``from_stage`` (known once the model loads)."""
    return saved_model_context(settings["path"], base_dir)


ilql_policy.context_length = saved_ilql_context
