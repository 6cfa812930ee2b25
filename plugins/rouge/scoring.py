"""ROUGE per sample and the per-policy summary metrics (no torch).

ROUGE is ``rouge-score``'s F-measure with its default tokenizer (lower-case, alphanumeric
tokens) and the Porter stemmer, as in "Learning to summarize from human feedback" and trlX.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_fmeasures(generated: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """``{"rouge1": f, "rouge2": f, "rougeL": f}`` for each (generated, reference) pair."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    rows = []
    for prediction, target in zip(generated, references, strict=True):
        scores = scorer.score(target, prediction)
        rows.append({name: float(scores[name].fmeasure) for name in ROUGE_TYPES})
    return rows


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for an empty sequence."""
    return math.fsum(values) / len(values) if values else math.nan


def summary_metrics(samples: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means over ``samples`` (records with ``generated`` and the ROUGE keys, plus ``reward``
    and ``reference_reward`` when a reward function was given): ``rouge1``, ``rouge2``,
    ``rougeL``, ``rouge_avg`` (mean of the three), ``words`` (generated length in words) and,
    with rewards, ``reward`` and ``reward_delta`` (mean of reward - reference reward), and
    with a reference policy, ``kl`` (mean KL per sample) and ``kl_per_token`` (all the
    samples' KL over all their tokens)."""
    metrics = {name: mean([s[name] for s in samples]) for name in ROUGE_TYPES}
    metrics["rouge_avg"] = mean([metrics[name] for name in ROUGE_TYPES])
    metrics["words"] = mean([len(s["generated"].split()) for s in samples])
    if samples and "reward" in samples[0]:
        metrics["reward"] = mean([s["reward"] for s in samples])
        metrics["reward_delta"] = mean([s["reward"] - s["reference_reward"] for s in samples])
    if samples and "kl" in samples[0]:
        metrics["kl"] = mean([s["kl"] for s in samples])
        tokens = sum(s["kl_tokens"] for s in samples)
        metrics["kl_per_token"] = math.fsum(s["kl"] for s in samples) / tokens if tokens else 0.0
    return metrics
