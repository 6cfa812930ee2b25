"""Docs that cannot drift (datasette's tests/test_docs.py style): every setting of every built-in
component is in a generated table that is up to date, and every hook and CLI command is
documented, every hook with its full signature."""

from __future__ import annotations

import re

import click
import pytest

from rlhf_plugins._engine import hookspecs
from rlhf_plugins._engine.components import KINDS
from rlhf_plugins._engine.docs import marked_components, render
from rlhf_plugins._engine.registry import load_registry
from rlhf_plugins.cli import cli
from tests.conftest import REPO_ROOT

DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
BUILT_IN = "rlhf-plugins"


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def built_in_components(registry) -> list[tuple[str, str]]:
    return [
        (kind, name)
        for kind in KINDS
        for name in registry.names(kind)
        if registry.get(kind, name).distribution == BUILT_IN
    ]


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_generated_settings_tables_are_up_to_date(page, registry):
    text = page.read_text()
    assert render(text, registry) == text, (
        f"{page.name}: run python -m rlhf_plugins._engine.docs docs/*.md"
    )


def test_every_built_in_component_has_a_settings_table(registry):
    documented = {pair for page in DOCS for pair in marked_components(page.read_text())}
    missing = [f"{kind} {name}" for kind, name in built_in_components(registry)]
    missing = [m for m in missing if tuple(m.split(" ", 1)) not in documented]
    assert not missing, f"no <!-- settings: ... --> table for: {', '.join(missing)}"


def test_every_setting_has_help(registry):
    from rlhf_plugins._engine.factories import describe, setting_docs

    silent = [
        f"{kind} {name}: {doc.name}"
        for kind, name in built_in_components(registry)
        for doc in setting_docs(describe(registry.get(kind, name).factory).model)
        if not doc.help
    ]
    assert not silent, "settings without a description: " + "; ".join(silent)


def hook_signatures(registry) -> list[str]:
    """``name(arg, ...)`` of every hook specification, read from pluggy's parsed specs."""
    callers = vars(registry.plugin_manager.hook).values()
    return sorted(
        f"{caller.name}({', '.join(caller.spec.argnames)})"
        for caller in callers
        if getattr(caller, "spec", None) is not None and caller.spec.namespace is hookspecs
    )


def test_every_hook_is_documented_with_its_signature(registry):
    """docs/plugins.md shows every hook with all its arguments (datasette's test_docs.py):
    a hook or an argument added, renamed or removed in ``hookspecs`` fails here until the
    docs say so."""
    signatures = hook_signatures(registry)
    specs = [name for name in dir(hookspecs) if name.startswith(("register_", "rlhf_"))]
    assert specs and {sig.split("(")[0] for sig in signatures} == set(specs), (signatures, specs)
    plugins_md = (REPO_ROOT / "docs" / "plugins.md").read_text()
    missing = [sig for sig in signatures if f"`{sig}`" not in plugins_md]
    assert not missing, f"docs/plugins.md does not show: {', '.join(missing)}"


def test_every_cli_command_is_documented():
    readme = (REPO_ROOT / "README.md").read_text()
    commands = cli.commands if isinstance(cli, click.Group) else {}
    missing = [name for name in commands if not re.search(rf"rlhf {name}\b", readme)]
    assert not missing, f"README does not show: {', '.join(missing)}"
