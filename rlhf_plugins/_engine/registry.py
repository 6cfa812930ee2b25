"""Plugin loading: entry points in the ``rlhf_plugins`` group, one by one.

A plugin that fails to import (or misspells a hook, or raises while registering) is recorded
with its error and skipped; it is fatal only for a recipe that uses one of its components.
A component name registered by two plugins is recorded as a conflict naming both.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from rlhf_plugins._engine import hookspecs
from rlhf_plugins._engine.components import KINDS


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


@dataclass(frozen=True)
class Component:
    """A registered factory and where it came from."""

    kind: str
    name: str
    factory: Callable
    description: str
    plugin: str
    distribution: str | None
    version: str | None

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
        """A plugin that failed to load, guessed as the home of an unknown component name."""
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


def _register_components(pm: pluggy.PluginManager, registry: Registry, info: PluginInfo) -> None:
    plugin = pm.get_plugin(info.name)
    for kind, hook_name in KINDS.items():
        impls = [i for i in getattr(pm.hook, hook_name).get_hookimpls() if i.plugin is plugin]
        if not impls:
            continue
        info.hooks.append(hook_name)
        names = info.components.setdefault(hook_name.removeprefix("register_"), [])

        def register(
            name: str,
            factory: Callable,
            *,
            description: str = "",
            _kind: str = kind,
            _names: list[str] = names,
        ) -> None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"component names must be non-empty strings, got {name!r}")
            if not callable(factory):
                raise TypeError(f"factory for '{name}' is not callable")
            _names.append(name)
            registry.add(
                Component(
                    kind=_kind,
                    name=name,
                    factory=factory,
                    description=description or (factory.__doc__ or "").strip().split("\n")[0],
                    plugin=info.name,
                    distribution=info.distribution,
                    version=info.version,
                )
            )

        for impl in impls:
            try:
                impl.function(register=register)
            except Exception as exc:
                info.error = f"{hook_name} raised {_describe_error(exc)}"
                info.traceback = traceback.format_exc()
