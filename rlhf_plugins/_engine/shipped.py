"""Recipes that ship inside installed packages (``rlhf recipes``, ``rlhf run NAME``,
``rlhf cp NAME FILE``), like torchtune's ``tune ls`` / ``tune cp``.

A distribution ships recipes by naming a package of ``.toml`` files in the entry-point group
``rlhf_plugins.recipes``; this project's own are the built-in ones. A recipe's name is its
file name without ``.toml``.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from rlhf_plugins._engine.errors import UserError
from rlhf_plugins._engine.settings import did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPES_GROUP = "rlhf_plugins.recipes"
SCHEMA_DIRECTIVE = "#:schema "
"""Taplo's first-line directive naming a recipe's JSON Schema."""


@dataclass(frozen=True)
class ShippedRecipe:
    name: str
    path: Path
    source: str
    """The distribution that ships it."""

    def head(self) -> dict:
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            return {}
        return data

    @property
    def stages(self) -> list[str]:
        return list(self.head().get("stages", {}))

    @property
    def requires(self) -> str:
        return str(self.head().get("recipe", {}).get("requires", ""))

    @property
    def description(self) -> str:
        return str(self.head().get("recipe", {}).get("description", ""))


def shipped_recipes() -> dict[str, ShippedRecipe]:
    """Every shipped recipe by name (the first distribution to ship a name wins)."""
    found: dict[str, ShippedRecipe] = {}
    for entry in sorted(metadata.entry_points(group=RECIPES_GROUP), key=lambda e: e.name):
        try:
            folder = Path(str(resources.files(entry.value)))
        except (ModuleNotFoundError, TypeError):
            continue
        source = entry.dist.metadata["Name"] if entry.dist else entry.name
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, ShippedRecipe(path.stem, path, source))
    return found


def find_recipe(argument: str) -> Path:
    """``argument`` as a recipe file: an existing path, or the name of a shipped recipe."""
    path = Path(argument)
    if path.exists() or path.suffix == ".toml" or "/" in argument:
        return path
    recipes = shipped_recipes()
    if argument in recipes:
        return recipes[argument].path
    raise UserError(
        f"{argument}: no such recipe file, and no shipped recipe of that name"
        f"{did_you_mean(argument, recipes) or ' (rlhf recipes lists them)'}"
    )


def copy_recipe(name: str, destination: Path) -> list[Path]:
    """Copy the shipped recipe ``name`` to ``destination``, with the DeepSpeed config and
    the ``#:schema`` file it names beside it (same relative paths); returns the files
    written. Never overwrites a different file."""
    recipes = shipped_recipes()
    if name not in recipes:
        hint = did_you_mean(name, recipes) or " (rlhf recipes lists them)"
        raise UserError(f"no shipped recipe '{name}'{hint}")
    recipe = recipes[name]
    if destination.is_dir():
        destination = destination / recipe.path.name
    files = [(recipe.path, destination)]
    deepspeed = recipe.head().get("launch", {}).get("deepspeed")
    first_line = recipe.path.read_text(encoding="utf-8").partition("\n")[0]
    schema = (
        first_line.removeprefix(SCHEMA_DIRECTIVE).strip()
        if first_line.startswith(SCHEMA_DIRECTIVE)
        else None
    )
    for relative in (deepspeed, schema):
        if isinstance(relative, str) and relative and not Path(relative).is_absolute():
            files.append((recipe.path.parent / relative, destination.parent / relative))
    for source, target in files:
        if target.exists() and target.read_bytes() != source.read_bytes():
            raise UserError(f"{target} exists; rlhf cp does not overwrite files")
    for source, target in files:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return [target for _, target in files]
