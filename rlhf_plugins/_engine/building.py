"""Building components from recipe tables: the one place a factory is called with what a
recipe says. The runner builds each stage's slots and the ``[logging]`` loggers through it, the
reward server builds the reward function it serves, and tests build installed components with
``build_installed``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlhf_plugins._engine.chat import CHAT_KEY, as_conversations
from rlhf_plugins._engine.errors import StageFailed, UserError
from rlhf_plugins._engine.factories import RESERVED_COMPONENT_KEYS, FactorySpec, describe
from rlhf_plugins._engine.recipe import Recipe, StageSpec
from rlhf_plugins._engine.registry import Registry, load_registry
from rlhf_plugins._engine.stage_context import StageContext


def factory_arguments(
    factory: Any, given: Mapping[str, Any], settings: Mapping[str, Any], base_dir: Path | None
) -> dict[str, Any]:
    """``factory``'s keyword arguments: ``given`` (built slots, ``from_stage``, the running
    stage) as they are, ``settings`` through the factory's declaration (``TypeError`` naming
    every problem; ``rlhf validate`` has reported them before a run gets here)."""
    return {**given, **describe(factory).arguments_for(settings, base_dir)}


class Builder:
    """Builds the component tables of ``recipe`` with the factories in ``registry``."""

    def __init__(self, recipe: Recipe, registry: Registry):
        self.recipe = recipe
        self.registry = registry

    def stage_dir(self, name: str) -> Path:
        return self.recipe.run_dir / name

    def stage_context(self, spec: StageSpec, *, resume: bool = False) -> StageContext:
        """What the components of ``spec`` get when the stage runs (``resume``: it continues
        an interrupted run)."""
        return StageContext(
            recipe_name=self.recipe.name,
            name=spec.name,
            output_dir=self.stage_dir(spec.name),
            seed=self.recipe.seed,
            config=spec.table,
            inputs={n: self.stage_dir(n) for n in spec.needs},
            launch=self.recipe.launch,
            logging=self.recipe.logging,
            resume=resume,
            recipe_dir=self.recipe.base_dir,
            hooks=self.registry.hooks,
        )

    def slot(self, spec: FactorySpec, key: str, value: Any, stage: StageContext) -> Any:
        """The component(s) of slot ``key`` of a factory: one, a list or a dict of them."""
        param = spec.params[key]
        if param.container == "list":
            return [self.component(param.slot, item, stage) for item in value]
        if param.container == "dict":
            return {label: self.component(param.slot, item, stage) for label, item in value.items()}
        return self.component(param.slot, value, stage)

    def component(self, kind: str, table: dict, stage: StageContext) -> Any:
        """Build one component table (nested components first) with its factory."""
        component = self.registry.get(kind, table["use"])
        spec = describe(component.factory)
        values = {k: v for k, v in table.items() if k not in RESERVED_COMPONENT_KEYS}
        given = {
            key: self.slot(spec, key, values.pop(key), stage)
            for key in list(values)
            if key in spec.slots
        }
        if "from_stage" in table:
            given["from_stage"] = str(self.stage_dir(table["from_stage"]))
        given.update({name: stage for name, param in spec.params.items() if param.injected})
        try:
            built = component.factory(
                **factory_arguments(component.factory, given, values, self.recipe.base_dir)
            )
            return as_conversations(built) if table.get(CHAT_KEY) else built
        except UserError:
            raise
        except Exception as exc:
            raise StageFailed(
                f"building {kind.replace('_', ' ')} '{table['use']}' for stage "
                f"'{stage.name}' failed: {type(exc).__name__}: {exc}"
            ) from exc

    def loggers(self) -> list[Any]:
        """The recipe's ``[logging] loggers``, built (not yet registered for the run)."""
        built = []
        for table in self.recipe.logging.loggers:
            factory = self.registry.get("logger", table["use"]).factory
            values = {k: v for k, v in table.items() if k not in RESERVED_COMPONENT_KEYS}
            try:
                built.append(
                    factory(**factory_arguments(factory, {}, values, self.recipe.base_dir))
                )
            except UserError:
                raise
            except Exception as exc:
                raise StageFailed(
                    f"starting logger '{table['use']}' failed: {type(exc).__name__}: {exc}"
                ) from exc
        return built


def build_installed(kind: str, name: str, **values: Any) -> Any:
    """Build the installed component ``name`` of ``kind`` outside a recipe (tests, scripts):
    ``values`` holds its slots as built components, its injected parameters, ``from_stage`` and
    its settings; the settings go through the factory's declaration; the factory's own
    exceptions propagate unchanged."""
    factory = load_registry().get(kind, name).factory
    spec = describe(factory)
    given = {
        key: values.pop(key)
        for key, param in spec.params.items()
        if key in values and (param.slot or param.injected or key == "from_stage")
    }
    return factory(**factory_arguments(factory, given, values, None))
