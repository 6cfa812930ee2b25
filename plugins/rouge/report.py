"""``eval.json`` (every policy's metrics and samples) and ``eval.md`` (a comparison table in
the shape of the "Learning to summarize" results table, plus a few sample summaries)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_plugins import display_text

HEADERS = {
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "rouge_avg": "Average",
    "words": "Words",
    "reward": "Mean reward",
    "reward_delta": "Reward Δ",
    "kl": "KL",
    "kl_per_token": "KL/token",
}
"""Table columns: metric key -> header."""
FORMATS = {"words": "{:.1f}", "reward_delta": "{:+.3f}", "kl_per_token": "{:.4f}"}
"""Number formats that differ from three decimals."""


@dataclass(frozen=True)
class Evaluation:
    """What one evaluator run found.

    ``results`` maps each label to ``{"policy": name, "metrics": {...}, "samples": [...]}``
    (samples in row order for every label); ``reference`` holds the reference summaries' mean
    ``reward`` and ``words`` when a reward function was given; ``settings`` the decoding and
    data settings.
    """

    title: str
    results: Mapping[str, Mapping[str, Any]]
    reference: Mapping[str, float] | None
    settings: Mapping[str, Any]
    num_samples_shown: int


def write_reports(output_dir: Path, evaluation: Evaluation) -> None:
    """Write ``eval.json`` and ``eval.md`` into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "settings": dict(evaluation.settings),
        "reference": evaluation.reference,
        "policies": evaluation.results,
    }
    (output_dir / "eval.json").write_text(json.dumps(payload, indent=2, allow_nan=False))
    (output_dir / "eval.md").write_text(markdown(evaluation))


def markdown(evaluation: Evaluation) -> str:
    """The ``eval.md`` text."""
    results, reference, settings = evaluation.results, evaluation.reference, evaluation.settings
    keys = [k for k in HEADERS if any(k in r["metrics"] for r in results.values())]
    samples = next(iter(results.values()))["samples"] if results else []
    decoding = "greedy"
    if settings["do_sample"]:
        decoding = (
            f"sampled (temperature {settings['temperature']}, top_k {settings['top_k']},"
            f" top_p {settings['top_p']})"
        )
    lines = [
        f"# Evaluation: {evaluation.title}",
        "",
        f"{len(samples)} prompts; {decoding} decoding, at most {settings['max_new_tokens']} "
        "new tokens. ROUGE F-measures (rouge-score, stemmed) against the reference summaries.",
        "",
        "| Policy | Model | " + " | ".join(HEADERS[k] for k in keys) + " |",
        "| --- | --- |" + " ---: |" * len(keys),
    ]
    for label, result in results.items():
        lines.append(_row(label, _cell(result["policy"]), result["metrics"], keys))
    if reference is not None:
        known = {"words": reference["words"], "reward": reference["reward"], "reward_delta": 0.0}
        lines.append(_row("reference summaries", "-", known, keys))
    lines += ["", *_samples_section(results, samples[: evaluation.num_samples_shown])]
    return "\n".join(lines).rstrip() + "\n"


def _row(label: str, model: str, metrics: Mapping[str, float], keys: list[str]) -> str:
    cells = [_number(FORMATS.get(key, "{:.3f}"), metrics.get(key)) for key in keys]
    return f"| {label} | {model} | " + " | ".join(cells) + " |"


def _samples_section(
    results: Mapping[str, Mapping[str, Any]], shown: list[dict[str, Any]]
) -> list[str]:
    if not shown:
        return []
    lines = ["## Samples", ""]
    for position, sample in enumerate(shown):
        lines += [
            f"### Sample {position + 1}",
            "",
            "```text",
            display_text(sample["prompt"]).strip(),
            "```",
            "",
            f"- **reference**: {_inline(sample['reference'])}",
        ]
        for label, result in results.items():
            lines.append(f"- **{label}**: {_inline(result['samples'][position]['generated'])}")
        lines.append("")
    return lines


def _number(fmt: str, value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else fmt.format(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _inline(text: str) -> str:
    return " ".join(text.split()) or "(empty)"
