"""Loading pretrained models and tokenizers the way recipes name them: dtype by name, the
attention implementation, and GGUF files dequantized into plain weights that ``save_pretrained``
writes as safetensors (``load_pretrained``, ``load_pretrained_tokenizer``)."""

from __future__ import annotations

from typing import Any

from rlhf_plugins._engine.errors import UserError

GGUF_STATE = {"hf_quantizer": None, "is_quantized": False, "quantization_method": None}
"""What ``from_pretrained`` sets on a model loaded with a quantizer, and its plain values."""


def torch_dtype(dtype: Any) -> Any:
    """A dtype name (``bfloat16``) as a ``torch.dtype``; ``auto``, None and torch dtypes pass."""
    if isinstance(dtype, str) and dtype != "auto":
        import torch

        found = getattr(torch, dtype, None)
        if not isinstance(found, torch.dtype):
            raise UserError(f"unknown dtype '{dtype}'")
        return found
    return dtype


def dequantizing_config() -> Any:
    """transformers' ``GgufConfig(dequantize=True)``: every GGUF weight unpacked into a plain
    tensor at load, never kept in GGUF blocks (older transformers always dequantize: None)."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return None
    return GgufConfig(dequantize=True)


def forget_gguf(model: Any) -> Any:
    """Drop what transformers keeps of a GGUF load from ``model`` (its dequantized weights
    stay): the quantizer and the ``quantization_config`` that make ``save_pretrained`` refuse
    ("quantized with gguf and is not serializable") and would follow into ``config.json``.
    The model has no plain ``from_pretrained`` source any more, so its ``name_or_path`` is
    cleared too: a trainer that would reload it from there (TRL's reference) saves it first."""
    for module in (model, *getattr(model, "modules", lambda: ())()):
        state = vars(module)
        for name, plain in GGUF_STATE.items():
            if name in state:
                state[name] = plain
    config = getattr(model, "config", None)
    configs = [config] if config is not None else []
    if config is not None and hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for each in configs:
        if "quantization_config" in vars(each):
            del each.quantization_config
    if config is not None:
        config._name_or_path = ""
    return model


def load_pretrained(
    auto_class: Any,
    source: str,
    *,
    gguf_file: str | None = None,
    dtype: Any = None,
    attn_implementation: str | None = None,
    **kwargs: Any,
) -> Any:
    """``auto_class.from_pretrained(source, **kwargs)`` with ``dtype`` by name (``bfloat16``,
    ``auto``, a ``torch.dtype``; None: transformers' default), ``attn_implementation`` when
    set, and ``gguf_file`` (a GGUF file in ``source``, a directory or hub id) dequantized into
    plain weights that ``save_pretrained`` writes as safetensors (``forget_gguf``). An
    attention implementation that is not installed is a ``UserError``."""
    if dtype is not None:
        kwargs["dtype"] = torch_dtype(dtype)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
        if (config := dequantizing_config()) is not None:
            kwargs.setdefault("quantization_config", config)
    try:
        model = auto_class.from_pretrained(source, **kwargs)
    except ImportError as exc:
        if attn_implementation is None:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{source}: attn_implementation = '{attn_implementation}' cannot load here ({first})"
        ) from exc
    return forget_gguf(model) if gguf_file is not None else model


def load_pretrained_tokenizer(source: str, *, gguf_file: str | None = None, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained(source, **kwargs)``, from ``gguf_file`` when set, padding
    with EOS when it has no pad token; its chat template comes with it and ``save_pretrained``
    keeps it."""
    from transformers import AutoTokenizer

    from rlhf_plugins._engine.generation import ensure_pad_token

    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    return ensure_pad_token(AutoTokenizer.from_pretrained(source, **kwargs))
