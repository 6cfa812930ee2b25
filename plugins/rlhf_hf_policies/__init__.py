"""Policies: ``hf-causal-lm`` (a hub id, local directory or earlier stage's output) and
``tiny-causal-lm`` (a small GPT-J/GPT-2/GPT-NeoX built from a config, with a BPE tokenizer
trained on the stage's datasets, for offline runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from rlhf_plugins import Policy, StageContext, UserError, hookimpl
from rlhf_plugins.context import Length, saved_model_context


@hookimpl
def register_policies(register):
    register(
        "hf-causal-lm",
        hf_causal_lm,
        description="A causal LM loaded with from_pretrained (hub id, local dir or from_stage).",
    )
    register(
        "tiny-causal-lm",
        tiny_causal_lm,
        description="A tiny causal LM built from a config, tokenizer trained on the stage data.",
    )


def hf_causal_lm(
    stage: StageContext | None = None,
    model: str | None = None,
    from_stage: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Policy:
    """A causal LM from a hub id or local directory (``model``), or from the output directory
    of an earlier stage (``from_stage``). A relative local ``model`` directory is relative to
    the recipe file. ``trust_remote_code`` stays off unless set."""
    if (model is None) == (from_stage is None):
        raise UserError("hf-causal-lm takes exactly one of 'model' or 'from_stage'")
    from rlhf_hf_policies.policies import PretrainedPolicy

    if model is not None and stage is not None:
        model = str(stage.local_path(model) or model)
    return PretrainedPolicy(
        model or from_stage, revision=revision, trust_remote_code=trust_remote_code
    )


def pretrained_context(settings: dict[str, Any], base_dir: Path) -> Length | None:
    """``hf-causal-lm``'s positions when ``model`` is a local directory (its config.json);
    None for a hub id or ``from_stage`` (known once the model loads)."""
    return saved_model_context(settings["model"], base_dir)


hf_causal_lm.context_length = pretrained_context


def tiny_causal_lm(
    stage: StageContext,
    architecture: Literal["gptj", "gpt2", "gpt_neox"] = "gptj",
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    vocab_size: int = 1024,
    max_positions: int = 512,
    tokenizer_samples: int = 5000,
) -> Policy:
    """A randomly initialised model of ``architecture`` with a byte-level BPE tokenizer trained
    on up to ``tokenizer_samples`` rows of the stage's datasets (every string column). The
    tokenizer is saved under the stage output so later stages reuse it."""
    from rlhf_hf_policies.policies import TinyPolicy

    return TinyPolicy(
        stage,
        architecture=architecture,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        vocab_size=vocab_size,
        max_positions=max_positions,
        tokenizer_samples=tokenizer_samples,
    )


def tiny_context(settings: dict[str, Any], base_dir: Path) -> Length:
    """``tiny-causal-lm``'s positions: its ``max_positions`` setting."""
    return Length(settings["max_positions"], f"max_positions = {settings['max_positions']}")


tiny_causal_lm.context_length = tiny_context
