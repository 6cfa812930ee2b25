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

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.toml"))
SHIPPED_SCHEMA = REPO_ROOT / "recipes" / "recipe.schema.json"
DIRECTIVE = "#:schema ./recipe.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict:
    from rlhf_plugins.registry import load_registry
    from rlhf_plugins.schema import recipe_schema

    made = recipe_schema(load_registry())
    jsonschema.Draft202012Validator.check_schema(made)
    return made


def errors(schema: dict, data: dict) -> list[str]:
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(data)]


def test_the_cli_prints_the_schema(run_cli, schema, tmp_path):
    result = run_cli("schema", "-o", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text()) == schema


def test_the_shipped_schema_is_up_to_date(schema):
    assert json.loads(SHIPPED_SCHEMA.read_text()) == schema, (
        "run: rlhf schema -o recipes/recipe.schema.json"
    )


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
