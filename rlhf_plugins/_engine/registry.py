"""Plugin loading: entry points in the ``rlhf_plugins`` group, one by one.

A plugin that fails to import (or misspells a hook, or raises while registering) is recorded
with its error and skipped; it is fatal only for a recipe that uses one of its components.
``register`` checks what it is given (a misspelled capability keyword, a capability the kind
does not take, one that is not callable, a factory whose declaration cannot be read, such as
``Views`` on a parameter that is no dataset slot: a ``TypeError``, so the plugin's error). A
component name registered by two plugins is recorded as a conflict naming both.
"""

from __future__ import annotations

import difflib
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from rlhf_plugins._engine import hookspecs
from rlhf_plugins._engine.components import KINDS
from rlhf_plugins._engine.factories import describe

if TYPE_CHECKING:
    from rlhf_plugins._engine.lengths import Length
    from rlhf_plugins._engine.rules import Problem


@dataclass
class PluginInfo:
    """One entry point of the ``rlhf_plugins`` group and what it registered."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    """Registered names by plural kind (``trainers``, ``reward_functions``, ...), the keys
    ``rlhf list-plugins`` prints and ``--json`` writes."""
    error: str | None = None
    traceback: str | None = None
    refused: list[str] = field(default_factory=list)
    """Component names whose registration was refused (a misspelled capability keyword, a
    capability of another kind, ...): a recipe naming one is told this plugin's error."""

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "components": self.components,
            "error": self.error,
        }


ContextLength = Callable[[Mapping[str, Any], Path], "Length | None"]
"""``context_length(settings, base_dir) -> Length | None`` (a policy's capability)."""

SequenceLength = Callable[[Mapping[str, Any]], "Length | None"]
"""``sequence_length(settings) -> Length | None`` (a trainer's or evaluator's capability)."""

StageRules = Callable[[Mapping[str, Any], Mapping[str, Any]], Iterable["Problem"]]
"""``stage_rules(slots, settings) -> list[(key, message)]`` (a trainer's or evaluator's
capability)."""

ChatTemplate = Callable[[Mapping[str, Any], Path], "bool | None"]
"""``chat_template(settings, base_dir) -> bool | None`` (a policy's capability)."""

CAPABILITIES: dict[str, tuple[str, ...]] = {
    "context_length": ("policy",),
    "chat_template": ("policy",),
    "sequence_length": ("trainer", "evaluator"),
    "stage_rules": ("trainer", "evaluator"),
}
"""Each capability keyword of ``register`` -> the component kinds that may declare it."""

FLAGS: dict[str, tuple[str, ...]] = {
    "needs_critic": ("advantage_estimator", "policy_loss"),
    "group_relative": ("advantage_estimator",),
    "greedy_baseline": ("advantage_estimator",),
}
"""Each flag keyword of ``register`` (a ``bool``, default False) -> the kinds that declare it."""

VIEWS_KINDS = ("trainer", "evaluator")
"""The component kinds whose dataset slots may declare ``Views`` (their stages are checked)."""


@dataclass(frozen=True)
class Component:
    """A registered factory, what it declared at registration and where it came from.

    The capabilities (``register(name, factory, *, context_length=..., sequence_length=...,
    stage_rules=...)``) are what the engine must know about a component without calling its
    factory; each is None when not declared, and is checked at registration: a callable, on a
    kind that takes it (``CAPABILITIES``).
    """

    kind: str
    name: str
    factory: Callable
    description: str
    plugin: str
    distribution: str | None
    version: str | None
    context_length: ContextLength | None = None
    """A policy's ``context_length(settings, base_dir) -> Length | None``: the model's positions
    from its recipe settings alone. ``settings`` are the policy table's settings as its
    factory's declaration resolves them (defaults filled in; ``use`` and slots dropped);
    ``base_dir`` is the recipe's directory. Called by ``rlhf validate`` for every policy slot of
    a stage whose tables are otherwise valid, before anything is built: nothing may be loaded
    or downloaded, so it returns None when the settings do not tell (a hub id, ``from_stage``).
    The stage checks again with the loaded model (``fit_max_length``, ``prompt_budget``)."""
    chat_template: ChatTemplate | None = None
    """A policy's ``chat_template(settings, base_dir) -> bool | None``: whether its tokenizer
    has a chat template, from its recipe settings alone (as ``context_length``: nothing loaded,
    None when the settings do not tell). ``rlhf validate`` reports a policy that answers False
    in a stage whose dataset has ``chat = true``; ``rlhf_plugins.saved_chat_template`` reads
    a local directory's or GGUF file's."""
    sequence_length: SequenceLength | None = None
    """A trainer's or evaluator's ``sequence_length(settings) -> Length | None``: the longest
    sequence the stage's settings make (``settings`` resolved with their defaults), None when
    it adapts to the model. Called by ``rlhf validate`` for a stage whose tables are otherwise
    valid; every policy of the stage whose ``context_length`` is shorter is reported, naming
    both numbers. ``max_length_setting`` and ``generation_settings`` cover the common cases."""
    needs_critic: bool = False
    """An advantage estimator's or policy loss's: it reads values from a learned critic (the
    engine then trains a value head); ``rlhf validate`` reports it with an engine that has
    none."""
    group_relative: bool = False
    """An advantage estimator's: it compares the completions of one prompt (a group), so the
    engine must sample several per prompt (``num_generations`` of at least 2)."""
    greedy_baseline: bool = False
    """An advantage estimator's: it compares each completion with the greedy completion of its
    prompt (ReMax), so the engine also decodes one greedy answer per prompt, scores it like the
    samples and hands the scores in (``AdvantageInputs.baseline_scores``)."""
    stage_rules: StageRules | None = None
    """A trainer's or evaluator's ``stage_rules(slots, settings) -> list[(key, message)]``:
    rules across a stage's slots and settings. ``slots`` maps each slot the recipe filled to
    its resolved table (``use`` plus the component's settings, defaults filled in; a list or
    dict of such tables for a list or dict slot), ``settings`` holds the stage's settings with
    their defaults. Each problem is ``(key, message)``, the key relative to the stage
    (``reward``, ``trainer_settings.reward_weights``; ``""`` for the stage itself). Called by
    ``rlhf validate`` only for a stage whose tables are otherwise valid; its problems are
    reported with the others."""

    @property
    def flags(self) -> dict[str, bool]:
        """The flags this component set (``{"needs_critic": True}``); unset ones are left out."""
        return {flag: True for flag in FLAGS if getattr(self, flag)}

    @property
    def origin(self) -> str:
        dist = f" ({self.distribution} {self.version})" if self.distribution else ""
        return f"plugin '{self.plugin}'{dist}"


@dataclass
class Registry:
    """Everything the installed plugins registered, by kind and name."""

    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    components: dict[str, dict[str, Component]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    conflicts: dict[tuple[str, str], list[Component]] = field(default_factory=dict)
    plugin_manager: pluggy.PluginManager = field(default_factory=lambda: _plugin_manager())

    @property
    def hooks(self) -> Any:
        """The lifecycle hooks (``hooks.rlhf_stage_start(stage=...)``) of every loaded plugin
        and of the loggers registered for the current run."""
        return self.plugin_manager.hook

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind, sorted."""
        return sorted(self.components[kind])

    def get(self, kind: str, name: str) -> Component | None:
        return self.components[kind].get(name)

    def conflict(self, kind: str, name: str) -> str | None:
        """A message naming every plugin that registered ``name``, or None."""
        rivals = self.conflicts.get((kind, name))
        if not rivals:
            return None
        origins = " and ".join(c.origin for c in rivals)
        return f"{kind.replace('_', ' ')} '{name}' is registered by both {origins}"

    def failed_plugin_for(self, name: str) -> PluginInfo | None:
        """A plugin that failed to load or to register ``name``, named by the refused name, else
        guessed as the home of an unknown component name."""
        for info in self.plugins.values():
            if info.error and name in info.refused:
                return info
        for info in self.plugins.values():
            if info.error and name in (
                info.name,
                info.module.rsplit(".", 1)[-1].removeprefix("rlhf_"),
            ):
                return info
        failed = [i for i in self.plugins.values() if i.error]
        return failed[0] if len(failed) == 1 else None

    def add(self, component: Component) -> None:
        table = self.components[component.kind]
        existing = table.get(component.name)
        if existing is None:
            table[component.name] = component
            return
        key = (component.kind, component.name)
        rivals = self.conflicts.setdefault(key, [existing])
        rivals.append(component)
        message = self.conflict(component.kind, component.name)
        for rival in rivals:
            owner = self.plugins[rival.plugin]
            owner.error = (
                message
                if owner.error is None or "registered by both" in owner.error
                else owner.error
            )


def _entry_points() -> list[metadata.EntryPoint]:
    seen: dict[tuple[str, str], metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=hookspecs.PROJECT):
        seen.setdefault((ep.name, ep.value), ep)
    return sorted(seen.values(), key=lambda ep: ep.name)


def _describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_registry(extra_modules: Iterable[tuple[str, ModuleType]] = ()) -> Registry:
    """Load every installed plugin (plus ``extra_modules``, as ``(name, module)`` pairs)."""
    registry = Registry()
    pm = registry.plugin_manager

    candidates: list[tuple[PluginInfo, Callable[[], object]]] = []
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.metadata["Name"] if dist else None,
            version=dist.version if dist else None,
        )
        candidates.append((info, ep.load))
    for name, module in extra_modules:
        candidates.append((PluginInfo(name=name, module=module.__name__), lambda m=module: m))

    for info, load in candidates:
        registry.plugins[info.name] = info
        try:
            module = load()
            pm.register(module, name=info.name)
        except Exception as exc:
            info.error = f"failed to import: {_describe_error(exc)}"
            info.traceback = traceback.format_exc()
            continue
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            pm.unregister(name=info.name)
            info.error = f"unknown hook: {exc}"
            continue
        _register_components(pm, registry, info)
    return registry


def checked_capabilities(kind: str, name: str, **capabilities: Any) -> dict[str, Any]:
    """The capabilities a component of ``kind`` declared (``context_length=...``, ...), each
    checked: a ``TypeError`` when one is neither callable nor None, or when ``kind`` does not
    take it (``CAPABILITIES``)."""
    for keyword, value in capabilities.items():
        if value is None:
            continue
        kinds = CAPABILITIES[keyword]
        if kind not in kinds:
            takers = " and ".join(
                KINDS[k].removeprefix("register_").replace("_", " ") for k in kinds
            )
            raise TypeError(
                f"{keyword} is a capability of {takers} only; "
                f"{kind.replace('_', ' ')} '{name}' cannot declare it"
            )
        if not callable(value):
            raise TypeError(
                f"{keyword} of {kind.replace('_', ' ')} '{name}' must be callable or None, "
                f"got {value!r}"
            )
    return capabilities


def checked_flags(kind: str, name: str, **flags: Any) -> dict[str, bool]:
    """The flags a component of ``kind`` declared (``needs_critic=True``, ...), each checked:
    a ``TypeError`` when one is not a ``bool``, or is set on a kind that does not take it
    (``FLAGS``)."""
    label = kind.replace("_", " ")
    for keyword, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{keyword} of {label} '{name}' must be True or False, got {value!r}")
        if value and kind not in FLAGS[keyword]:
            takers = " and ".join(k.replace("_", " ") + "s" for k in FLAGS[keyword])
            raise TypeError(f"{keyword} is a flag of {takers} only; {label} '{name}' cannot set it")
    return flags


def checked_declaration(kind: str, name: str, factory: Callable) -> None:
    """``factory``'s declaration read once at registration (``describe``): a ``TypeError``
    naming the component when it cannot be (``Views`` on a parameter that is no dataset slot,
    or naming no view), or when a component of a kind other than ``VIEWS_KINDS`` declares
    ``Views``."""
    label = kind.replace("_", " ")
    try:
        views = describe(factory).views
    except TypeError as exc:
        raise TypeError(f"{label} '{name}': {exc}") from None
    if views and kind not in VIEWS_KINDS:
        on = ", ".join(f"'{slot}'" for slot in views)
        raise TypeError(
            f"Views is a declaration of trainers and evaluators only; {label} '{name}' cannot "
            f"declare it (parameter {on})"
        )


def register_keywords(kind: str) -> list[str]:
    """The keywords ``register`` takes for a component of ``kind``."""
    declared = {**CAPABILITIES, **FLAGS}
    return ["description"] + [k for k, kinds in declared.items() if kind in kinds]


def _register_components(pm: pluggy.PluginManager, registry: Registry, info: PluginInfo) -> None:
    plugin = pm.get_plugin(info.name)
    for kind, hook_name in KINDS.items():
        impls = [i for i in getattr(pm.hook, hook_name).get_hookimpls() if i.plugin is plugin]
        if not impls:
            continue
        info.hooks.append(hook_name)
        names = info.components.setdefault(hook_name.removeprefix("register_"), [])
        register = _register_function(registry, info, kind, names)
        for impl in impls:
            try:
                impl.function(register=register)
            except Exception as exc:
                info.error = f"{hook_name} raised {_describe_error(exc)}"
                info.traceback = traceback.format_exc()


def _register_function(
    registry: Registry, info: PluginInfo, kind: str, names: list[str]
) -> Callable[..., None]:
    """The ``register`` callable the ``register_*`` hook of ``kind`` of ``info``'s plugin
    receives: ``register(name, factory, *, description="", **capabilities)``."""
    label = kind.replace("_", " ")

    def register(
        name: str,
        factory: Callable,
        *,
        description: str = "",
        context_length: ContextLength | None = None,
        chat_template: ChatTemplate | None = None,
        sequence_length: SequenceLength | None = None,
        stage_rules: StageRules | None = None,
        needs_critic: bool = False,
        group_relative: bool = False,
        greedy_baseline: bool = False,
        **unknown: Any,
    ) -> None:
        try:
            if unknown:
                valid = register_keywords(kind)
                given = ", ".join(
                    f"'{k}'{difflib_hint(k, ['description', *CAPABILITIES, *FLAGS])}"
                    for k in unknown
                )
                raise TypeError(
                    f"register() of {label} '{name}' got unknown keyword {given}; "
                    f"a {label} takes {', '.join(valid)}"
                )
            if not isinstance(name, str) or not name:
                raise ValueError(f"component names must be non-empty strings, got {name!r}")
            if not callable(factory):
                raise TypeError(f"factory for '{name}' is not callable")
            if not isinstance(description, str):
                raise TypeError(f"description of '{name}' must be a string, got {description!r}")
            capabilities = checked_capabilities(
                kind,
                name,
                context_length=context_length,
                chat_template=chat_template,
                sequence_length=sequence_length,
                stage_rules=stage_rules,
            )
            capabilities.update(
                checked_flags(
                    kind,
                    name,
                    needs_critic=needs_critic,
                    group_relative=group_relative,
                    greedy_baseline=greedy_baseline,
                )
            )
            checked_declaration(kind, name, factory)
        except (TypeError, ValueError):
            if isinstance(name, str):
                info.refused.append(name)
            raise
        names.append(name)
        registry.add(
            Component(
                kind=kind,
                name=name,
                factory=factory,
                description=description or docstring_summary(factory),
                plugin=info.name,
                distribution=info.distribution,
                version=info.version,
                **capabilities,
            )
        )

    return register


def docstring_summary(factory: Callable[..., Any]) -> str:
    """The first paragraph of ``factory``'s docstring on one line ("" without one)."""
    paragraph = (factory.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(paragraph.split())


def difflib_hint(word: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
