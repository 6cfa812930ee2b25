"""Evaluator ``rouge``: generate summaries with each policy it is given and compare them with
ROUGE-1/2/L against the reference summaries and, with a reward function, by mean reward and
mean reward delta over the reference (the results table of "Learning to summarize from human
feedback").

This hook module imports nothing heavy; the evaluator lives in ``rlhf_builtins.rouge.evaluator``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from rlhf_plugins import (
    Dataset,
    Policy,
    RewardFunction,
    Settings,
    StageFn,
    UserError,
    Views,
    generation_settings,
    hookimpl,
)

RESERVED_LABELS = ("reference",)
"""Policy labels the evaluator uses for itself (``reference/reward`` is the references' row)."""


@hookimpl
def register_evaluators(register):
    register(
        "rouge",
        rouge,
        description="ROUGE-1/2/L, mean reward and reward delta of each policy's summaries.",
        sequence_length=generation_settings,
    )


class RougeSettings(Settings):
    """What to evaluate and how to generate (greedy unless ``do_sample``)."""

    limit: int | None = Field(
        None, ge=1, description="evaluate the first limit rows of the dataset (unset: all)"
    )
    batch_size: int = Field(16, ge=1, description="prompts generated and scored together")
    max_prompt_length: int | None = Field(
        None,
        ge=1,
        description="prompt tokens kept, cut from the left (unset: the context minus max_new_tokens)",
    )
    max_new_tokens: int = Field(50, ge=1, description="most tokens generated per summary")
    do_sample: bool = Field(False, description="sample (temperature, top_k, top_p); else greedy")
    top_k: int = Field(0, ge=0, description="top-k when sampling (0: off)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus probability when sampling")
    temperature: float = Field(1.0, ge=0, description="sampling temperature (> 0 when sampling)")
    num_samples_shown: int = Field(3, ge=0, description="sample summaries shown in eval.md")

    @model_validator(mode="after")
    def _temperature_samples(self) -> RougeSettings:
        if self.do_sample and self.temperature == 0:
            raise ValueError("do_sample needs a temperature above 0 (temperature = 0 is greedy)")
        return self


def rouge(
    policies: dict[str, Policy],
    dataset: Annotated[Dataset, Views("prompts")],
    reward: RewardFunction | None = None,
    reference: Policy | None = None,
    *,
    settings: RougeSettings,
) -> StageFn:
    """Evaluate every policy in ``policies`` (label -> policy; at least one, none labelled
    ``reference``) on the first ``limit`` rows of ``dataset`` (the ``prompts`` view:
    ``prompt`` and ``reference`` columns; every other column is passed to ``reward`` as a
    keyword list). A policy with a ``variants()`` method is evaluated once per variant,
    labelled ``<label>[<variant>]``. With a ``reference`` policy (e.g. the SFT policy) each
    policy's KL to it is reported too (``kl`` per sample, ``kl_per_token``; exact per-token
    KL along the policy's own completions, ``rlhf_builtins.rouge.kl``), so that algorithms can be
    compared by reward at a given KL.

    Generation: ``batch_size`` prompts at a time, at most ``max_new_tokens``, prompts
    left-truncated to ``max_prompt_length`` tokens (unset: to the model's context minus
    ``max_new_tokens``). Writes ``eval.json`` and ``eval.md`` (showing ``num_samples_shown``
    sample summaries) into the stage directory and returns flat metrics such as
    ``sft/rouge1`` and ``sft/reward``. ``settings`` were validated whole.
    """
    _check_policies(policies)
    from rlhf_builtins.rouge.evaluator import RougeEvaluator
    from rlhf_plugins.torch_helpers import SamplingSettings

    sampling = SamplingSettings(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
    )
    return RougeEvaluator(
        policies,
        dataset,
        reward,
        reference=reference,
        sampling=sampling,
        limit=settings.limit,
        batch_size=settings.batch_size,
        max_prompt_length=settings.max_prompt_length,
        num_samples_shown=settings.num_samples_shown,
    )


def _check_policies(policies: dict[str, Policy]) -> None:
    """Raise one ``UserError`` when ``policies`` is empty or uses a reserved label (a rule on
    the slot, which no settings declaration sees)."""
    problems = []
    if not policies:
        problems.append("'policies' is empty; give at least one, e.g. { sft = { use = ... } }")
    problems += [
        f"a policy cannot be labelled '{label}' (reserved for the reference summaries)"
        for label in policies
        if label in RESERVED_LABELS
    ]
    if problems:
        raise UserError("rouge evaluator: " + "; ".join(problems))
