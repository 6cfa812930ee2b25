"""TOML recipes: loading, ``--set`` overrides and validation that reports every problem at once.

A recipe never executes code: it only names installed components.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_plugins._engine.chat import CHAT_KEY
from rlhf_plugins._engine.errors import UserError
from rlhf_plugins._engine.factories import (
    RESERVED_COMPONENT_KEYS,
    FactorySpec,
    Param,
    describe,
    validate_settings,
)
from rlhf_plugins._engine.lengths import policy_reports, stage_needs, too_long
from rlhf_plugins._engine.recipe_tables import STAGE_NAME, LaunchConfig, LoggingConfig, RecipeHead
from rlhf_plugins._engine.registry import Component, Registry
from rlhf_plugins._engine.rules import stage_problems
from rlhf_plugins._engine.settings import Settings, did_you_mean
from rlhf_plugins._engine.typecheck import check_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_LEVEL_KEYS = {"recipe", "launch", "logging", "stages"}
STAGE_KEYS = {
    "trainer",
    "evaluator",
    "needs",
    "trainer_settings",
    "evaluator_settings",
    "description",
}


@dataclass(frozen=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class RecipeError(UserError):
    """Every problem found in one recipe, printed together."""

    def __init__(self, path: Path | str, problems: list[Problem]):
        self.path = Path(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{path}: {len(problems)} {noun}:\n{lines}")


@dataclass
class StageSpec:
    """One validated stage."""

    name: str
    kind: str
    component: str
    settings: dict[str, Any]
    slots: dict[str, Any]
    needs: list[str]
    table: dict[str, Any]
    resolved: dict[str, Any] = field(default_factory=dict)
    """The stage as it runs: every component's and the stage's settings with defaults filled
    in, and the plugin (distribution and version) behind each component. The stage hash is
    taken over it, so a plugin upgrade that changes a default reruns the stage."""


@dataclass
class Recipe:
    """A validated recipe; ``stages`` are in execution order."""

    path: Path
    name: str
    stages: dict[str, StageSpec]
    seed: int
    output_dir: Path
    launch: LaunchConfig
    logging: LoggingConfig
    data: dict[str, Any] = field(repr=False)

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    @property
    def base_dir(self) -> Path:
        """Relative input paths in the recipe are relative to this directory."""
        return self.path.parent


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], value). The value is a TOML literal; anything
    that is not one is taken as a plain string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set expects KEY.PATH=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    """Apply ``--set`` overrides in place, creating tables as needed."""
    for text in overrides:
        keys, value = parse_override(text)
        table = data
        for i, key in enumerate(keys[:-1]):
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                where = ".".join(keys[: i + 1])
                raise UserError(f"--set {text!r}: '{where}' is a value, not a table")
        table[keys[-1]] = value


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(path, [Problem("", f"not valid TOML: {exc}")]) from None


def load_recipe(path: Path | str, registry: Registry, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe; raise ``RecipeError`` listing every problem."""
    path = Path(path)
    data = read_toml(path)
    apply_overrides(data, list(overrides))
    checker = _Checker(path, registry)
    recipe = checker.check(data)
    if checker.problems:
        raise RecipeError(path, checker.problems)
    return recipe


class _Checker:
    def __init__(self, path: Path, registry: Registry):
        self.path = path
        self.registry = registry
        self.problems: list[Problem] = []
        self.stage_order: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(Problem(key, message))

    def unknown_keys(self, table: dict, allowed: set[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                hint = did_you_mean(key, allowed) or f" (allowed: {', '.join(sorted(allowed))})"
                self.problem(f"{prefix}{key}", f"unknown key{hint}")

    def table(self, data: dict, key: str, required: bool = False) -> dict:
        value = data.get(key)
        if value is None:
            if required:
                self.problem(key, f"missing [{key}] table")
            return {}
        if not isinstance(value, dict):
            self.problem(key, f"must be a table, got {type(value).__name__}")
            return {}
        return value

    def check(self, data: dict) -> Recipe:
        self.unknown_keys(data, TOP_LEVEL_KEYS, "")
        if "recipe" not in data:
            self.problem("recipe", "missing [recipe] table")
        head = self.check_table(RecipeHead, self.table(data, "recipe"), "recipe")
        launch = self.check_table(LaunchConfig, self.table(data, "launch"), "launch")
        logging = self.check_table(LoggingConfig, self.table(data, "logging"), "logging")
        for i, table in enumerate(logging.loggers):
            self.check_component("logger", table, f"logging.loggers[{i}]", [], "")
        stages = self.check_stages(self.table(data, "stages", required=True))
        return Recipe(
            path=self.path,
            name=head.name or self.path.stem,
            seed=head.seed,
            output_dir=Path(head.output_dir),
            launch=launch,
            logging=logging,
            stages=stages,
            data=data,
        )

    def check_table(self, model: type[Settings], table: dict, prefix: str) -> Any:
        """``table`` validated against ``model``; the model's defaults when it is invalid."""
        validated, problems = validate_settings(model, table, self.path.parent)
        for key, message in problems:
            self.problem(f"{prefix}.{key}" if key else prefix, message.replace("setting", "key"))
        return validated if validated is not None else model()

    def check_stages(self, tables: dict) -> dict[str, StageSpec]:
        if not tables:
            if "stages" not in [p.key for p in self.problems]:
                self.problem("stages", "the recipe has no stages; add a [stages.<name>] table")
            return {}
        self.stage_order = list(tables)
        specs: dict[str, StageSpec] = {}
        for name, table in tables.items():
            prefix = f"stages.{name}"
            if not STAGE_NAME.match(name):
                self.problem(prefix, "stage names use letters, digits, '_', '-', '.'")
            if not isinstance(table, dict):
                self.problem(prefix, f"must be a table, got {type(table).__name__}")
                continue
            if spec := self.check_stage(name, table, prefix):
                specs[name] = spec
        return {name: specs[name] for name in self.ordered(specs) if name in specs}

    def check_stage(self, name: str, table: dict, prefix: str) -> StageSpec | None:
        kinds = [k for k in ("trainer", "evaluator") if k in table]
        if len(kinds) != 1:
            what = "both" if kinds else "neither"
            self.problem(
                prefix, f"a stage names exactly one of 'trainer' or 'evaluator' ({what} given)"
            )
            self.unknown_keys(table, STAGE_KEYS, f"{prefix}.")
            return None
        kind = kinds[0]
        component = self.lookup(kind, table[kind], f"{prefix}.{kind}")
        needs = table.get("needs", [])
        if check_value(needs, list[str]):
            self.problem(f"{prefix}.needs", f"must be a list of stage names, got {needs!r}")
            needs = []
        for need in needs:
            if need not in self.stage_order:
                self.problem(
                    f"{prefix}.needs",
                    f"unknown stage '{need}'{did_you_mean(need, self.stage_order)}",
                )
            elif need == name:
                self.problem(f"{prefix}.needs", "a stage cannot need itself")
        settings_key = f"{kind}_settings"
        other = "evaluator_settings" if kind == "trainer" else "trainer_settings"
        if other in table:
            self.problem(f"{prefix}.{other}", f"this stage runs a {kind}; use '{settings_key}'")
        settings = table.get(settings_key, {})
        if not isinstance(settings, dict):
            self.problem(f"{prefix}.{settings_key}", "must be a table")
            settings = {}
        slots = {k: v for k, v in table.items() if k not in STAGE_KEYS}
        needs = list(needs)
        resolved: dict[str, Any] = {kind: table[kind]}
        if component is not None:
            spec = describe(component.factory)
            known = len(self.problems)
            resolved["plugin"] = component.origin
            resolved.update(self.check_slots(spec, slots, prefix, needs, name))
            resolved[settings_key] = self.check_settings(spec, settings, f"{prefix}.{settings_key}")
            if len(self.problems) == known:
                self.check_context(
                    component, spec, slots, settings, prefix, f"{prefix}.{settings_key}"
                )
                self.check_chat_templates(spec, slots, prefix)
                stage_slots = {key: resolved[key] for key in slots}
                ruled = stage_problems(component, spec, stage_slots, resolved[settings_key])
                for key, message in ruled:
                    self.problem(f"{prefix}.{key}" if key else prefix, message)
        resolved["needs"] = needs
        return StageSpec(
            name=name,
            kind=kind,
            component=str(table[kind]),
            settings=settings,
            slots=slots,
            needs=needs,
            table=table,
            resolved=resolved,
        )

    def check_context(
        self,
        component: Component,
        spec: FactorySpec,
        slots: dict,
        settings: dict,
        prefix: str,
        key: str,
    ) -> None:
        """A problem for every policy of a valid stage whose context, known from its recipe
        table, is shorter than what the stage's settings need (the stage component's
        ``sequence_length`` and each policy's ``context_length``, ``rlhf_plugins._engine.lengths``)."""
        needed = stage_needs(component, settings, self.path.parent)
        if needed is None:
            return
        for where, table in kind_tables(spec, slots, "policy"):
            context = self.policy_reports("context_length", table)
            label = f"policy '{table['use']}' ({prefix}.{where})"
            if context is not None and (message := too_long(needed, context, label)):
                self.problem(key, message)

    def policy_reports(self, capability: str, table: dict) -> Any:
        """What the policy of ``table`` reports for its declared ``capability``."""
        policy = self.registry.get("policy", table["use"])
        return policy_reports(policy, capability, table, self.path.parent)

    def check_chat_templates(self, spec: FactorySpec, slots: dict, prefix: str) -> None:
        """A problem for every policy of a valid stage that reads a ``chat = true`` dataset and,
        by its declared ``chat_template``, has no chat template to render it with."""
        chats = [
            f"{prefix}.{where}"
            for where, table in kind_tables(spec, slots, "dataset")
            if table.get(CHAT_KEY) is True
        ]
        if not chats:
            return
        for where, table in kind_tables(spec, slots, "policy"):
            if self.policy_reports("chat_template", table) is False:
                self.problem(
                    f"{prefix}.{where}",
                    f"policy '{table['use']}' has no chat template, but {chats[0]} has "
                    "chat = true; use a model (or `tokenizer`) with one, or drop chat = true",
                )

    def lookup(self, kind: str, name: Any, key: str):
        if not isinstance(name, str):
            self.problem(key, f"expected a registered {kind} name, got {name!r}")
            return None
        if conflict := self.registry.conflict(kind, name):
            self.problem(key, conflict)
            return None
        component = self.registry.get(kind, name)
        if component is None:
            label = kind.replace("_", " ")
            hint = did_you_mean(name, self.registry.names(kind))
            failed = self.registry.failed_plugin_for(name)
            if failed and name in failed.refused:
                hint = f"; plugin '{failed.name}' failed to register it ({failed.error})"
            elif failed and not hint:
                hint = f"; plugin '{failed.name}' failed to load ({failed.error})"
            elif not hint:
                known = ", ".join(self.registry.names(kind)) or "none installed"
                hint = f" (installed: {known})"
            self.problem(key, f"unknown {label} '{name}'{hint}")
        return component

    def check_slots(
        self, spec: FactorySpec, slots: dict, prefix: str, needs: list[str], stage: str
    ) -> dict[str, Any]:
        """Check a stage's slots; returns them resolved."""
        resolved = {}
        for key, value in slots.items():
            param = spec.slots.get(key)
            if param is None:
                allowed = sorted(STAGE_KEYS | set(spec.slots))
                hint = did_you_mean(key, allowed) or f" (this stage takes: {', '.join(allowed)})"
                self.problem(f"{prefix}.{key}", f"unknown key{hint}")
                continue
            resolved[key] = self.check_slot(param, value, f"{prefix}.{key}", needs, stage)
        for key, param in spec.slots.items():
            if param.required and key not in slots:
                self.problem(
                    f"{prefix}.{key}",
                    f"missing required {param.slot.replace('_', ' ')}"
                    f' (a table like {{ use = "..." }})',
                )
        return resolved

    def check_slot(self, param: Param, value: Any, key: str, needs: list[str], stage: str) -> Any:
        """Check one slot's value (a component table, or a list or dict of them); returns it
        resolved."""
        if param.container == "list":
            if not isinstance(value, list):
                self.problem(key, "expected a list of component tables")
                return value
            return [
                self.check_component(param.slot, item, f"{key}[{i}]", needs, stage)
                for i, item in enumerate(value)
            ]
        if param.container == "dict":
            if not isinstance(value, dict) or "use" in value:
                self.problem(
                    key,
                    'expected a table of named component tables, e.g. { sft = { use = "..." } }',
                )
                return value
            return {
                label: self.check_component(param.slot, item, f"{key}.{label}", needs, stage)
                for label, item in value.items()
            }
        return self.check_component(param.slot, value, key, needs, stage)

    def check_component(self, kind: str, table: Any, key: str, needs: list[str], stage: str) -> Any:
        """Check one component table; returns it resolved (see ``StageSpec.resolved``)."""
        if not isinstance(table, dict) or "use" not in table:
            self.problem(key, f"expected a table with 'use' naming a {kind.replace('_', ' ')}")
            return table
        component = self.lookup(kind, table["use"], f"{key}.use")
        if component is None:
            return table
        spec = describe(component.factory)
        settings = {k: v for k, v in table.items() if k not in RESERVED_COMPONENT_KEYS}
        resolved: dict[str, Any] = {
            "use": table["use"],
            "plugin": component.origin,
            **component.flags,
        }
        if "from_stage" in table:
            self.check_from_stage(spec, table["from_stage"], f"{key}.from_stage", needs, stage)
            resolved["from_stage"] = table["from_stage"]
        if CHAT_KEY in table:
            self.check_chat_key(kind, table[CHAT_KEY], f"{key}.{CHAT_KEY}", resolved)
        slots = spec.slots
        for sub, value in settings.items():
            if sub in slots:
                resolved[sub] = self.check_slot(slots[sub], value, f"{key}.{sub}", needs, stage)
        resolved.update(
            self.check_settings(spec, {k: v for k, v in settings.items() if k not in slots}, key)
        )
        for name, param in slots.items():
            if param.required and name not in settings:
                self.problem(f"{key}.{name}", f"missing required {param.slot.replace('_', ' ')}")
        return resolved

    def check_chat_key(self, kind: str, value: Any, key: str, resolved: dict[str, Any]) -> None:
        if kind != "dataset":
            self.problem(key, "only a dataset table takes 'chat' (its prompts read as chat)")
        elif not isinstance(value, bool):
            self.problem(key, f"expected true or false, got {value!r}")
        else:
            resolved[CHAT_KEY] = value

    def check_from_stage(
        self, spec: FactorySpec, value: Any, key: str, needs: list[str], stage: str
    ) -> None:
        if not spec.accepts_from_stage:
            self.problem(key, "this component does not read another stage's output")
        elif not isinstance(value, str) or value not in self.stage_order:
            hint = did_you_mean(str(value), self.stage_order)
            self.problem(key, f"unknown stage {value!r}{hint}")
        elif self.stage_order.index(value) >= self.stage_order.index(stage):
            self.problem(key, f"stage '{value}' does not run before '{stage}'")
        elif value not in needs:
            needs.append(value)

    def check_settings(self, spec: FactorySpec, settings: dict, prefix: str) -> dict[str, Any]:
        """Validate ``settings`` against the factory's declaration; every problem is recorded
        under ``prefix``. Returns the resolved settings (defaults filled in, JSON values), or
        the given ones when they are invalid."""
        validated, problems = spec.validate(settings, self.path.parent)
        for key, message in problems:
            self.problem(f"{prefix}.{key}" if key else prefix, message)
        return settings if validated is None else validated.model_dump(mode="json")

    def ordered(self, specs: dict[str, StageSpec]) -> list[str]:
        """Declaration order, moved only as far as ``needs`` requires; cycles are problems."""
        order: list[str] = []
        state: dict[str, str] = {}

        def visit(name: str, trail: list[str]) -> None:
            if state.get(name) == "done" or name not in specs:
                return
            if state.get(name) == "active":
                cycle = " -> ".join([*trail[trail.index(name) :], name])
                self.problem(f"stages.{name}.needs", f"dependency cycle: {cycle}")
                return
            state[name] = "active"
            for need in specs[name].needs:
                visit(need, [*trail, name])
            state[name] = "done"
            order.append(name)

        for name in specs:
            visit(name, [])
        return order


def kind_tables(spec: FactorySpec, slots: dict, kind: str) -> list[tuple[str, dict]]:
    """``(key, table)`` of every component table of ``kind`` in a stage's filled ``slots``."""
    return [
        found
        for name, param in spec.slots.items()
        if param.slot == kind and name in slots
        for found in slot_tables(name, param, slots[name])
    ]


def slot_tables(name: str, param: Param, value: Any) -> list[tuple[str, dict]]:
    """``(key, table)`` for each component table a validated slot ``name`` holds: one
    (``policy``), a list (``policies[0]``) or a dict (``policies.sft``) of them."""
    if param.container == "list":
        return [(f"{name}[{i}]", table) for i, table in enumerate(value)]
    if param.container == "dict":
        return [(f"{name}.{label}", table) for label, table in value.items()]
    return [(name, value)]
