"""The architecture as tests (docs/architecture.md): every module of ``rlhf_plugins`` is described
there, its import graph has no cycles, plugins and examples import only the public API (names in
``__all__``), ``import rlhf_plugins`` stays free of torch and transformers, and every public name
is documented in docs/plugins.md.

``python tests/test_architecture.py`` prints the import graph (``module -> deps``) and its
cycles.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "rlhf_plugins"
PUBLIC_MODULES = (PACKAGE, f"{PACKAGE}.torch_helpers")
ARCHITECTURE_MD = REPO_ROOT / "docs" / "architecture.md"
PLUGINS_MD = REPO_ROOT / "docs" / "plugins.md"
PUBLIC_API_HEADING = "## The public API"


# --- modules and their imports -----------------------------------------------------------------


def module_files(root: Path = REPO_ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` on disk, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST, *, type_checking: bool = False) -> Iterator[ast.stmt]:
    """Every ``import`` and ``from ... import`` in ``tree`` in source order, inside functions and
    classes too; the body of ``if TYPE_CHECKING:`` only when ``type_checking`` (its ``else``
    always)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and is_type_checking(node.test) and not type_checking:
            stack.extend(reversed(node.orelse))
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def absolute_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from`` import reads, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_modules(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports: ``import a.b.c`` and ``from a.b.c import
    x`` name ``a.b.c`` (or ``a.b.c.x`` when that is a module itself), ``from a.b import c`` names
    ``a.b.c`` when ``c`` is a module, else ``a.b`` (the package's ``__init__``). The parent
    packages Python initialises on the way are not counted."""
    deps = set()
    for node in import_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            source = absolute_from(node, module, is_package)
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                for alias in node.names
            ]
        deps.update(target for target in targets if target in known)
    return deps


def import_graph() -> dict[str, set[str]]:
    """``module -> the modules of rlhf_plugins it imports`` (imports inside functions
    counted, those under ``if TYPE_CHECKING:`` not)."""
    files = module_files()
    known = set(files)
    return {
        module: imported_modules(
            ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py", known
        )
        for module, path in files.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one: Tarjan's
    algorithm, then a path back to the component's first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)

    found = []
    for component in components:
        start = component[0]
        if len(component) == 1 and start not in graph.get(start, ()):
            continue
        found.append(path_back(graph, start, set(component)))
    return sorted(found)


def path_back(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest path from ``start`` back to itself through ``within``."""
    queue = [[start, dep] for dep in sorted(graph[start]) if dep in within]
    seen = set()
    while queue:
        path = queue.pop(0)
        if path[-1] == start:
            return path
        if path[-1] in seen:
            continue
        seen.add(path[-1])
        queue.extend([*path, dep] for dep in sorted(graph[path[-1]]) if dep in within)
    raise AssertionError(f"no cycle through {start}")


def public_names(module: str) -> list[str]:
    """``__all__`` of a public module, read from its source (no torch imported)."""
    path = module_files()[module]
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{path} has no __all__")


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.find(heading + "\n")
    assert start >= 0, f"no section {heading!r}"
    end = re.search(rf"^#{{1,{level}}} ", text[start + len(heading) :], re.MULTILINE)
    return text[start : start + len(heading) + end.start()] if end else text[start:]


# --- tests -------------------------------------------------------------------------------------


def test_every_module_is_in_architecture_md():
    text = ARCHITECTURE_MD.read_text()
    missing = [
        module
        for module, path in module_files().items()
        if f"`{path.relative_to(REPO_ROOT).as_posix()}`" not in text and f"`{module}`" not in text
    ]
    assert not missing, f"docs/architecture.md does not describe: {', '.join(missing)}"


def test_architecture_md_names_only_modules_that_exist():
    text = ARCHITECTURE_MD.read_text()
    named = set(re.findall(rf"`({PACKAGE}/[\w/]+\.py)`", text))
    stale = sorted(path for path in named if not (REPO_ROOT / path).is_file())
    assert not stale, f"docs/architecture.md names modules that do not exist: {', '.join(stale)}"


def test_import_graph_has_no_cycles():
    graph = import_graph()
    assert graph.get(f"{PACKAGE}.cli"), "the graph found no imports"
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in found)


def test_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"], ["d", "d"]]


def test_imports_under_type_checking_are_not_counted_and_those_in_functions_are():
    source = (
        "from typing import TYPE_CHECKING\n"
        "from rlhf_plugins._engine import errors, hookspecs\n"
        "if TYPE_CHECKING:\n    from rlhf_plugins._engine.recipe import Recipe\n"
        "else:\n    import rlhf_plugins._engine.rundir\n"
        "def f():\n    from rlhf_plugins._engine.runner import Runner\n"
        "    from rlhf_plugins import UserError\n"
        "    from . import ranks\n"
        "    from .. import torch_helpers\n"
    )
    engine = "rlhf_plugins._engine"
    known = {"rlhf_plugins", "rlhf_plugins.torch_helpers", engine}
    known |= {f"{engine}.{m}" for m in ("errors", "recipe", "rundir", "runner", "ranks")}
    deps = imported_modules(ast.parse(source), f"{engine}.x", False, known)
    assert deps == known - {f"{engine}.recipe"}, deps  # hookspecs: not in known, so the package
    package = imported_modules(ast.parse("from . import ranks, stuff"), engine, True, known)
    assert package == {f"{engine}.ranks", engine}


def plugin_files() -> list[Path]:
    return sorted(
        path
        for folder in ("plugins", "examples")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def test_plugins_and_examples_import_only_the_public_api():
    allowed = {module: set(public_names(module)) for module in PUBLIC_MODULES}
    problems = []
    for path in plugin_files():
        where = path.relative_to(REPO_ROOT)
        for node in import_nodes(ast.parse(path.read_text(), str(path)), type_checking=True):
            line = f"{where}:{node.lineno}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    if top == PACKAGE and alias.name not in allowed:
                        problems.append(f"{line}: import {alias.name}")
            elif not node.level and (node.module or "").split(".")[0] == PACKAGE:
                if node.module not in allowed:
                    problems.append(f"{line}: from {node.module} import ...")
                    continue
                problems += [
                    f"{line}: {alias.name} is not in {node.module}.__all__"
                    for alias in node.names
                    if alias.name not in allowed[node.module]
                ]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "_engine":
                problems.append(f"{where}:{node.lineno}: ._engine")
    assert not problems, "plugins and examples use only the public API:\n" + "\n".join(problems)


def test_import_rlhf_plugins_imports_neither_torch_nor_transformers():
    heavy = ("torch", "transformers", "trl", "datasets", "deepspeed", "wandb")
    code = f"import sys, {PACKAGE}\nprint(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def test_every_public_name_is_documented_once():
    reference = section(PLUGINS_MD.read_text(), PUBLIC_API_HEADING)
    entries = re.findall(r"^- `([\w.]+)", reference, re.MULTILINE)
    public = [name for module in PUBLIC_MODULES for name in public_names(module)]
    missing = [name for name in public if name not in entries]
    twice = sorted({name for name in entries if entries.count(name) > 1})
    extra = sorted(set(entries) - set(public))
    assert not missing, f"docs/plugins.md ({PUBLIC_API_HEADING}) lacks: {', '.join(missing)}"
    assert not twice, f"documented more than once: {', '.join(twice)}"
    assert not extra, f"documented as API but not in any __all__: {', '.join(extra)}"


def main() -> None:
    graph = import_graph()
    prefix = f"{PACKAGE}."
    for module in sorted(graph):
        deps = ", ".join(sorted(d.removeprefix(prefix) for d in graph[module])) or "-"
        print(f"{module.removeprefix(prefix)} -> {deps}")
    found = cycles(graph)
    print(f"cycles: {len(found)}")
    for cycle in found:
        print("  " + " -> ".join(cycle))


if __name__ == "__main__":
    main()
