"""Run a validated recipe: stages in order, outputs under ``runs/<recipe>/<stage>/``.

Each stage directory holds a ``stage_state.json`` with the hash of the stage's resolved config
(its table, the recipe seed and the run ids of the stages it needs). A finished stage with the
same hash is skipped; an interrupted one with the same hash resumes; ``force`` reruns.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rlhf_plugins.console import summary_table
from rlhf_plugins.errors import StageFailed, UserError
from rlhf_plugins.nodes import check_ranks_agree
from rlhf_plugins.recipe import Recipe, StageSpec
from rlhf_plugins.registry import Registry
from rlhf_plugins.runlock import Terminated, lock_holder, was_terminated
from rlhf_plugins.settings import (
    RESERVED_COMPONENT_KEYS,
    FactorySpec,
    describe,
    did_you_mean,
)
from rlhf_plugins.stage import (
    StageContext,
    checkpoint_step,
    forget_stage_configuration,
    free_memory,
    is_main_process,
    wait_for_everyone,
    write_json_atomically,
)

STATE_FILE = "stage_state.json"
RESOLVED_FILE = "resolved_stage.json"

Echo = Callable[[str], None]


RESUMABLE = ("running", "interrupted", "failed")


def read_state(stage_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((stage_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_state(stage_dir: Path, state: dict[str, Any]) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(stage_dir / STATE_FILE, state)


def record_stop(stage_dir: Path, state: dict[str, Any]) -> None:
    """Record how a stage stopped, if the disk lets us: on a full disk the state stays
    ``running``, which resumes the same way."""
    with contextlib.suppress(OSError):
        write_state(stage_dir, state)


def clear_stage_dir(out: Path) -> None:
    """Make ``out`` an empty stage directory. Only a directory this project made (it holds a
    state file) is ever emptied; anything else there stops the run with a ``UserError``."""
    if out.is_symlink():
        raise UserError(
            f"{out} is a symbolic link; rlhf neither writes through nor deletes links. "
            "Remove the link or set recipe.output_dir to another directory"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a stage directory; move it away")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    if not (out / STATE_FILE).is_file():
        raise UserError(
            f"{out} holds files that rlhf did not write (no {STATE_FILE}); it will not delete "
            "them: move them away or set recipe.output_dir to another directory"
        )
    shutil.rmtree(out)
    out.mkdir(parents=True)


def disk_full(exc: BaseException) -> bool:
    """True when ``exc`` or an exception it came from says the disk (or quota) is full;
    torch's writer reports it only as an ``unexpected pos`` failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if "No space left on device" in text or "unexpected pos" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def stage_error(stage: str, out: Path, exc: Exception) -> UserError:
    """The one-line error that a stage's exception ends the run with: a full disk says so,
    a ``UserError`` stays as it is, anything else becomes ``StageFailed`` (exit 1)."""
    if disk_full(exc):
        return StageFailed(
            f"stage '{stage}' failed: the disk is full while writing to {out} "
            f"({free_space(out)}); free space (old checkpoints, other runs) or set "
            "recipe.output_dir to a larger disk, then rerun the same command to resume"
        )
    if isinstance(exc, UserError):
        return exc
    return StageFailed(f"stage '{stage}' failed: {type(exc).__name__}: {exc}")


def free_space(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"


def stage_dirs(run_dir: Path) -> list[Path]:
    """The stage directories of a run (those with a state file), in the recipe's order (each
    state records its stage's ``position`` in the recipe that last ran it); stages without one
    come last, in the order they started."""
    found = [(p, read_state(p)) for p in run_dir.iterdir() if (p / STATE_FILE).is_file()]

    def order(pair: tuple[Path, dict[str, Any]]) -> tuple[float, float, str]:
        position = pair[1].get("position")
        known = isinstance(position, int) and not isinstance(position, bool)
        return (position if known else math.inf, pair[1].get("started_at") or 0, pair[0].name)

    return [path for path, _ in sorted(found, key=order)]


def run_overview(directory: Path) -> list[tuple[str, str, str, str, str, str]]:
    """One row per stage of every run under ``directory``: run, stage, status (``running
    (pid N)`` for a live run, ``killed, resumes`` for a stage left running by a dead one),
    steps, wall time and the first final metrics."""
    rows = []
    for run_dir in sorted(p for p in directory.glob("*") if p.is_dir()):
        holder = lock_holder(run_dir)
        for stage_dir in stage_dirs(run_dir):
            state = read_state(stage_dir)
            status = state.get("status", "?")
            if status == "running":
                status = f"running (pid {holder['pid']})" if holder else "killed, resumes"
            metrics = state.get("metrics") or {}
            seconds = state.get("seconds")
            rows.append(
                (
                    run_dir.name,
                    stage_dir.name,
                    status,
                    str(metrics.get("steps", "-")),
                    f"{seconds:.0f}s" if isinstance(seconds, (int, float)) else "-",
                    _format_metrics({k: v for k, v in metrics.items() if k != "steps"}, 3),
                )
            )
    return rows


def stage_hash(recipe: Recipe, spec: StageSpec, upstream_run_ids: Mapping[str, str]) -> str:
    payload = {
        "stage": spec.resolved,
        "seed": recipe.seed,
        "needs": dict(sorted(upstream_run_ids.items())),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _format_metrics(metrics: Mapping[str, Any], most: int = 8) -> str:
    parts = []
    for key, value in list(metrics.items())[:most]:
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


class Runner:
    """Runs the stages of one recipe. ``echo`` prints progress lines (main process only)."""

    def __init__(self, recipe: Recipe, registry: Registry, echo: Echo = print):
        self.recipe = recipe
        self.registry = registry
        self._echo = echo
        self.summary: list[tuple[str, str, str, str]] = []
        """One row per stage this run reached: name, status, wall time, key figures."""

    def echo(self, line: str) -> None:
        if is_main_process():
            self._echo(line)

    def stage_dir(self, name: str) -> Path:
        return self.recipe.run_dir / name

    def run(self, *, force: bool = False, only: str | None = None) -> dict[str, dict]:
        """Run every stage (or ``only`` one); return each stage's final metrics. First the
        ranks check that they share the run directory and resolve the recipe alike
        (``rlhf_plugins.nodes``); the recipe's loggers are registered for the run, and the
        run's lifecycle hooks are called."""
        stages = self.recipe.stages
        if only is not None and only not in stages:
            raise UserError(
                f"--only: no stage '{only}' in {self.recipe.path}{did_you_mean(only, stages)}"
            )
        check_ranks_agree(self.recipe, only=only, force=force)
        loggers = self.start_loggers() if is_main_process() else []
        results: dict[str, dict] = {}
        status = "failed"
        try:
            self.call_hook("rlhf_run_start", recipe=self.recipe, run_dir=self.recipe.run_dir)
            self.run_stages(results, force=force, only=only)
            status = "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            self.call_hook(
                "rlhf_run_end",
                recipe=self.recipe,
                run_dir=self.recipe.run_dir,
                status=status,
                results=results,
            )
            for logger in loggers:
                self.registry.plugin_manager.unregister(logger)
            if is_main_process():
                for line in summary_table(self.summary) if self.summary else ():
                    self.echo(line)
                self.write_report()
        return results

    def write_report(self) -> None:
        """``report.html`` / ``report.md`` of the run; a failure here is only a warning."""
        from rlhf_plugins.report import write_report

        try:
            path = write_report(self.recipe.run_dir)
        except Exception as exc:
            self.echo(f"warning: the report was not written ({type(exc).__name__}: {exc})")
        else:
            self.echo(f"report: {path}")

    def call_hook(self, name: str, **kwargs: Any) -> None:
        """Call a lifecycle hook on the main process."""
        if is_main_process():
            getattr(self.registry.hooks, name)(**kwargs)

    def start_loggers(self) -> list[Any]:
        """Build the recipe's ``[logging] loggers`` and register them for this run."""
        built = []
        for table in self.recipe.logging.loggers:
            component = self.registry.get("logger", table["use"])
            spec = describe(component.factory)
            values = {k: v for k, v in table.items() if k not in RESERVED_COMPONENT_KEYS}
            try:
                logger = component.factory(**spec.arguments_for(values, self.recipe.base_dir))
            except UserError:
                raise
            except Exception as exc:
                raise StageFailed(
                    f"starting logger '{table['use']}' failed: {type(exc).__name__}: {exc}"
                ) from exc
            self.registry.plugin_manager.register(logger)
            built.append(logger)
        return built

    def run_stages(self, results: dict[str, dict], *, force: bool, only: str | None) -> None:
        stages = self.recipe.stages
        run_ids: dict[str, str] = {}
        finished: set[str] = set()
        total = len(stages) if only is None else 1
        position = 0
        for index, (name, spec) in enumerate(stages.items()):
            # stages come in dependency order, so every need already has its run id here
            state = read_state(self.stage_dir(name))
            config_hash = stage_hash(self.recipe, spec, {n: run_ids[n] for n in spec.needs})
            if only is not None and name != only:
                run_ids[name] = state.get("run_id", "")
                if state.get("status") == "finished":
                    finished.add(name)
                continue
            position += 1
            label = f"[{position}/{total}] {name} ({spec.kind} '{spec.component}')"
            if (
                not force
                and state.get("status") == "finished"
                and state.get("config_hash") == config_hash
            ):
                self.echo(f"{label}: finished and unchanged, skipped (--force reruns it)")
                old = state.get("metrics") or {}
                self.summary.append((name, "skipped", "-", _format_metrics(old, 4)))
                run_ids[name] = state["run_id"]
                results[name] = state.get("metrics") or {}
                finished.add(name)
                continue
            missing = [n for n in spec.needs if n not in finished]
            if missing:
                raise UserError(
                    f"stage '{name}' needs {', '.join(missing)}, which has not finished; "
                    "run the whole recipe first"
                )
            resume = (
                not force
                and state.get("status") in RESUMABLE
                and state.get("config_hash") == config_hash
            )
            self.echo(f"{label}: {'resuming' if resume else 'running'}")
            metrics, run_id = self.run_stage(spec, config_hash, resume=resume, position=index)
            free_memory()
            run_ids[name] = run_id
            results[name] = metrics
            finished.add(name)

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

    def run_stage(
        self, spec: StageSpec, config_hash: str, *, resume: bool, position: int
    ) -> tuple[dict, str]:
        """Run one stage (``position``: its index in the recipe, kept in its state so that
        reports and ``rlhf runs`` list stages in the recipe's order)."""
        out = self.stage_dir(spec.name)
        # every rank has read this stage's old state (skip/resume) before rank 0 replaces it
        wait_for_everyone()
        running = {
            "status": "running",
            "position": position,
            "config_hash": config_hash,
            "started_at": time.time(),
            "stage": spec.table,
        }
        seed = self.recipe.seed
        context = self.stage_context(spec, resume=resume)
        if is_main_process():
            if resume:
                self.prepare_resume(context)
            else:
                clear_stage_dir(out)
            write_state(out, running)
            write_json_atomically(out / RESOLVED_FILE, self.resolved(spec))
        wait_for_everyone()
        from accelerate.utils import set_seed

        set_seed(seed)
        started = time.monotonic()
        self.call_hook("rlhf_stage_start", stage=context)
        try:
            component = self.registry.get(spec.kind, spec.component)
            factory_spec = describe(component.factory)
            slots = {
                key: self.build_slot(factory_spec, key, value, context)
                for key, value in spec.slots.items()
            }
            context.components.update(slots)
            settings = factory_spec.arguments_for(spec.settings, self.recipe.base_dir)
            stage_fn = component.factory(**slots, **settings)
            metrics = dict(stage_fn(context) or {})
        except KeyboardInterrupt:
            self.stopped(context, running, started, "interrupted")
            raise
        except Exception as exc:
            if was_terminated():
                self.stopped(context, running, started, "interrupted")
                raise Terminated() from exc
            error = stage_error(spec.name, out, exc)
            self.stopped(context, running, started, "failed", error=str(error))
            if error is exc:
                raise
            raise error from exc
        finally:
            forget_stage_configuration()
        wait_for_everyone()
        run_id = uuid.uuid4().hex[:12]
        elapsed = time.monotonic() - started
        if is_main_process():
            write_state(
                out,
                {
                    "status": "finished",
                    "position": position,
                    "config_hash": config_hash,
                    "run_id": run_id,
                    "started_at": running["started_at"],
                    "seconds": round(elapsed, 2),
                    "finished_at": time.time(),
                    "metrics": metrics,
                    "stage": spec.table,
                },
            )
        self.stage_ended(context, "finished", metrics, started)
        figures = f": {_format_metrics(metrics, 5)}" if metrics else ""
        self.echo(f"    done in {elapsed:.1f}s{figures} -> {out}")
        wait_for_everyone()
        # all ranks must agree on the run id that downstream hashes read
        return metrics, read_state(out).get("run_id", run_id)

    def stopped(
        self, context: StageContext, running: dict, started: float, status: str, **extra: str
    ) -> None:
        """Record a stage that did not finish (``interrupted`` or ``failed``) and tell the
        hooks."""
        if is_main_process():
            stop = {"status": status, **extra, "stopped_at": time.time()}
            record_stop(context.output_dir, {**running, **stop})
        self.stage_ended(context, status, {}, started)

    def stage_ended(
        self, context: StageContext, status: str, metrics: dict, started: float
    ) -> None:
        seconds = time.monotonic() - started
        self.summary.append((context.name, status, f"{seconds:.0f}s", _format_metrics(metrics, 4)))
        self.call_hook(
            "rlhf_stage_end", stage=context, status=status, metrics=metrics, seconds=seconds
        )

    def resolved(self, spec: StageSpec) -> dict[str, Any]:
        """The stage as it runs, for its directory: the recipe's head, launch and logging
        tables and the stage with every setting resolved and the plugins behind it."""
        data = self.recipe.data
        return {
            "recipe": {**data.get("recipe", {}), "path": str(self.recipe.path)},
            "launch": data.get("launch", {}),
            "logging": data.get("logging", {}),
            "stages": {spec.name: spec.resolved},
        }

    def prepare_resume(self, context: StageContext) -> None:
        """Drop incomplete checkpoints and metrics logged after the newest complete one, and
        say where the stage continues from (main process)."""
        chosen, removed = context.prepare_resume()
        for path in removed:
            self.echo(f"    removed {path.name}: incomplete (interrupted while it was saved)")
        if chosen is None:
            self.echo("    no complete checkpoint: the stage starts from its first step")
        else:
            self.echo(f"    continuing from {chosen.name} (step {checkpoint_step(chosen)})")

    def build_slot(self, spec: FactorySpec, key: str, value: Any, stage: StageContext) -> Any:
        param = spec.params[key]
        if param.container == "list":
            return [self.build_component(param.slot, item, stage) for item in value]
        if param.container == "dict":
            return {
                label: self.build_component(param.slot, item, stage)
                for label, item in value.items()
            }
        return self.build_component(param.slot, value, stage)

    def build_component(self, kind: str, table: dict, stage: StageContext) -> Any:
        """Build one component table (nested components first) with its factory."""
        component = self.registry.get(kind, table["use"])
        spec = describe(component.factory)
        values = {k: v for k, v in table.items() if k not in RESERVED_COMPONENT_KEYS}
        kwargs = {
            key: self.build_slot(spec, key, values.pop(key), stage)
            for key in list(values)
            if key in spec.slots
        }
        kwargs.update(spec.arguments_for(values, self.recipe.base_dir))
        if "from_stage" in table:
            kwargs["from_stage"] = str(self.stage_dir(table["from_stage"]))
        for name, param in spec.params.items():
            if param.injected:
                kwargs[name] = stage
        try:
            return component.factory(**kwargs)
        except UserError:
            raise
        except Exception as exc:
            raise StageFailed(
                f"building {kind.replace('_', ' ')} '{table['use']}' for stage "
                f"'{stage.name}' failed: {type(exc).__name__}: {exc}"
            ) from exc
