"""Evaluator ``rouge``: generate summaries with each policy it is given and compare them with
ROUGE-1/2/L against the reference summaries and, with a reward function, by mean reward and
mean reward delta over the reference (the results table of "Learning to summarize from human
feedback").

This hook module imports nothing heavy; the evaluator lives in ``rlhf_rouge.evaluator``.
"""

from __future__ import annotations

from typing import Any

from rlhf_plugins import Dataset, Policy, RewardFunction, StageFn, UserError, hookimpl
from rlhf_plugins.context import generation_settings

RESERVED_LABELS = ("reference",)
"""Policy labels the evaluator uses for itself (``reference/reward`` is the references' row)."""


@hookimpl
def register_evaluators(register):
    register(
        "rouge",
        rouge,
        description="ROUGE-1/2/L, mean reward and reward delta of each policy's summaries.",
    )


def rouge(
    policies: dict[str, Policy],
    dataset: Dataset,
    reward: RewardFunction | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    max_prompt_length: int | None = None,
    max_new_tokens: int = 50,
    do_sample: bool = False,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    num_samples_shown: int = 3,
) -> StageFn:
    """Evaluate every policy in ``policies`` (label -> policy) on the first ``limit`` rows of
    ``dataset`` (the ``prompts`` view: ``prompt`` and ``reference`` columns; every other column
    is passed to ``reward`` as a keyword list). A policy with a ``variants()`` method is
    evaluated once per variant, labelled ``<label>[<variant>]``.

    Generation: ``batch_size`` prompts at a time, greedy unless ``do_sample`` (then
    ``temperature``, ``top_k`` (0 = off), ``top_p``), at most ``max_new_tokens``, prompts
    left-truncated to ``max_prompt_length`` tokens (unset: to the model's context minus
    ``max_new_tokens``). Writes ``eval.json`` and
    ``eval.md`` (showing ``num_samples_shown`` sample summaries) into the stage directory and
    returns flat metrics such as ``sft/rouge1`` and ``sft/reward``.
    """
    from rlhf_plugins.generation import SamplingSettings
    from rlhf_rouge.evaluator import RougeEvaluator

    sampling = SamplingSettings(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )
    evaluator = RougeEvaluator(
        policies,
        dataset,
        reward,
        sampling=sampling,
        limit=limit,
        batch_size=batch_size,
        max_prompt_length=max_prompt_length,
        num_samples_shown=num_samples_shown,
    )
    _check_settings(evaluator)
    return evaluator


rouge.sequence_length = generation_settings


def _check_settings(evaluator: Any) -> None:
    """Raise one ``UserError`` listing every out-of-range setting of ``evaluator``."""
    problems = []
    if not evaluator.policies:
        problems.append("'policies' is empty; give at least one, e.g. { sft = { use = ... } }")
    problems += [
        f"a policy cannot be labelled '{label}' (reserved for the reference summaries)"
        for label in evaluator.policies
        if label in RESERVED_LABELS
    ]
    sampling = evaluator.sampling
    positive = dict(
        batch_size=evaluator.batch_size,
        max_new_tokens=sampling.max_new_tokens,
        limit=evaluator.limit,
        max_prompt_length=evaluator.max_prompt_length,
    )
    problems += [
        f"'{name}' must be at least 1, got {value}"
        for name, value in positive.items()
        if value is not None and value < 1
    ]
    if sampling.top_k < 0:
        problems.append(f"'top_k' must be 0 (off) or more, got {sampling.top_k}")
    if evaluator.num_samples_shown < 0:
        problems.append(f"'num_samples_shown' must be 0 or more, got {evaluator.num_samples_shown}")
    if sampling.do_sample and sampling.temperature <= 0:
        problems.append(f"'temperature' must be above 0 when sampling, got {sampling.temperature}")
    if not 0 < sampling.top_p <= 1:
        problems.append(f"'top_p' must be in (0, 1], got {sampling.top_p}")
    if problems:
        raise UserError("rouge evaluator: " + "; ".join(problems))
