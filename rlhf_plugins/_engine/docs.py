"""Settings tables in the docs, generated from the components' declarations.

A docs page marks where a component's table goes; everything between the two markers is
rewritten from the declaration (type, default, constraint, help), so docs and code cannot
drift:

    <!-- settings: trainer ppo -->
    <!-- /settings -->

A recipe's own tables are marked the same way: ``<!-- settings: table launch -->``.

``python -m rlhf_plugins._engine.docs docs/*.md`` rewrites the tables; ``--check`` only reports pages
whose tables are out of date (exit 1), as the test suite does.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from rlhf_plugins._engine.factories import describe, setting_docs
from rlhf_plugins._engine.recipe_tables import LaunchConfig
from rlhf_plugins._engine.registry import Registry, load_registry
from rlhf_plugins._engine.settings import Settings

MARKED = re.compile(
    r"(<!-- settings: (?P<kind>[a-z_ ]+?) (?P<name>[\w.+-]+) -->\n)(?P<body>.*?)(<!-- /settings -->)",
    re.DOTALL,
)
KIND_WORDS = {"reward function": "reward_function"}
RECIPE_TABLES: dict[str, type[Settings]] = {"launch": LaunchConfig}
"""The recipe tables a page can mark as ``table <name>``."""


def settings_table(registry: Registry, kind: str, name: str) -> str:
    """The markdown table of one component's settings, or of a recipe table (``table``)."""
    if kind == "table":
        model = RECIPE_TABLES[name]
    else:
        component = registry.get(KIND_WORDS.get(kind, kind), name)
        if component is None:
            raise KeyError(f"no {kind} '{name}' is installed")
        model = describe(component.factory).model
    rows = ["| setting | type | default | constraint | meaning |", "|---|---|---|---|---|"]
    for doc in setting_docs(model):
        cells = [f"`{doc.name}`", doc.type, doc.default, doc.constraint, doc.help]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def render(text: str, registry: Registry) -> str:
    """``text`` with every marked settings table regenerated."""

    def table(match: re.Match) -> str:
        body = settings_table(registry, match["kind"], match["name"])
        return match.group(1) + body + match.group(5)

    return MARKED.sub(table, text)


def marked_components(text: str) -> list[tuple[str, str]]:
    """The ``(kind, name)`` of every table a page marks."""
    return [(KIND_WORDS.get(m["kind"], m["kind"]), m["name"]) for m in MARKED.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the settings tables of docs pages.")
    parser.add_argument("pages", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="report stale pages, change none")
    args = parser.parse_args(argv)
    registry = load_registry()
    stale = []
    for page in args.pages:
        text = page.read_text()
        fresh = render(text, registry)
        if fresh != text:
            stale.append(page)
            if not args.check:
                page.write_text(fresh)
    for page in stale:
        print(f"{page}: settings tables {'out of date' if args.check else 'rewritten'}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
