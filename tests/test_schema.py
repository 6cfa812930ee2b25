"""``rlhf schema``: a JSON Schema of recipes that the shipped recipes point to (Taplo's
``#:schema`` directive) and satisfy, and that rejects misspelled keys."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

jsonschema = pytest.importorskip("jsonschema")

THIRD_PARTY = """
from rlhf_plugins import hookimpl


@hookimpl
def register_reward_functions(register):
    register("extra-reward", lambda scale=1.0: None, description="A third party's reward.")
"""

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.toml"))
SHIPPED_SCHEMA = REPO_ROOT / "recipes" / "recipe.schema.json"
DIRECTIVE = "#:schema ./recipe.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict:
    from rlhf_plugins._engine.registry import load_registry
    from rlhf_plugins._engine.schema import recipe_schema

    made = recipe_schema(load_registry())
    jsonschema.Draft202012Validator.check_schema(made)
    return made


def builtin_schema() -> dict:
    """The schema of the built-in plugins alone, whatever else is installed: what the shipped
    recipe.schema.json holds."""
    from rlhf_plugins._engine.registry import load_registry
    from rlhf_plugins._engine.schema import recipe_schema

    registry = load_registry()
    for table in registry.components.values():
        for name in [n for n, c in table.items() if c.distribution != "rlhf-plugins"]:
            del table[name]
    return recipe_schema(registry)


def errors(schema: dict, data: dict) -> list[str]:
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(data)]


def test_the_cli_prints_the_schema(run_cli, schema, tmp_path):
    result = run_cli("schema", "-o", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text()) == schema


def test_the_shipped_schema_is_up_to_date():
    assert json.loads(SHIPPED_SCHEMA.read_text()) == builtin_schema(), (
        "run (with no third-party plugin installed): rlhf schema -o recipes/recipe.schema.json"
    )


def test_a_third_party_plugin_leaves_the_shipped_schema_up_to_date(plugin_dist, schema):
    plugin_dist("rlhf-extra", "rlhf_extra", THIRD_PARTY)
    from rlhf_plugins._engine.registry import load_registry
    from rlhf_plugins._engine.schema import recipe_schema

    assert recipe_schema(load_registry()) != schema, "the plugin is in the full schema"
    test_the_shipped_schema_is_up_to_date()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_names_and_satisfies_the_schema(recipe, schema):
    assert recipe.read_text().splitlines()[0] == DIRECTIVE
    assert errors(schema, tomllib.loads(recipe.read_text())) == []


@pytest.mark.parametrize(
    "path",
    [
        ("stages", "sft", "trainer_settings", "learning_rat"),
        ("stages", "sft", "policy", "n_layr"),
        ("stages", "sft", "polcy"),
        ("launch", "num_process"),
    ],
    ids=lambda p: ".".join(p),
)
def test_a_misspelled_key_is_rejected(schema, path):
    data = tomllib.loads((REPO_ROOT / "recipes" / "tiny_sft.toml").read_text())
    table = data
    for key in path[:-1]:
        table = table.setdefault(key, {})
    table[path[-1]] = 1
    assert errors(schema, data), f"{'.'.join(path)} was accepted"
