"""The ``rlhf`` command line. Exit codes: 0 ok, 1 a stage failed, 2 bad usage or bad recipe.

User errors print one message; ``--debug`` shows the traceback. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click

from rlhf_plugins import __version__
from rlhf_plugins._engine.components import KINDS
from rlhf_plugins._engine.console import table_lines
from rlhf_plugins._engine.errors import UserError
from rlhf_plugins._engine.registry import Component, load_registry
from rlhf_plugins._engine.runlock import Terminated, run_lock, sigterm_raises

# exit codes of launched ranks that mean the same to the user: bad recipe, interrupted
PASSED_ON_EXIT_CODES = (2, 130, 143)


def handle_errors(command: Callable) -> Callable:
    """Turn ``UserError`` into one message and its exit code; ``--debug`` keeps tracebacks."""

    @click.option("--debug", is_flag=True, help="Show full tracebacks.")
    @functools.wraps(command)
    def wrapper(*args, debug: bool, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            if debug:
                traceback.print_exc()
            end(f"error: {exc}", exc.exit_code)
        except KeyboardInterrupt as exc:
            cause = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            end(f"{cause}; run the same command again to resume", getattr(exc, "exit_code", 130))

    return wrapper


def end(line: str, code: int) -> NoReturn:
    """Exit with ``code`` after ``line`` on stderr; a rank that ``rlhf run`` launched leaves
    the line to it instead, which prints each rank's line once."""
    from rlhf_plugins._engine.launcher import report_rank_end

    if not report_rank_end(line, code):
        click.echo(line, err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rlhf")
def cli() -> None:
    """rlhf-plugins: run RLHF recipes (SFT -> reward model -> PPO/ILQL -> evaluation) built
    from installed plugins.

    \b
      rlhf list-plugins                      what is installed
      rlhf recipes                           the recipes that ship (rlhf run tiny_ppo)
      rlhf validate recipes/tiny_sft.toml    check a recipe without running it
      rlhf run recipes/tiny_sft.toml         run it; finished stages are skipped
      rlhf report runs/tiny_sft              report.html of a run (plots, tables)
      rlhf schema -o recipe.schema.json      a JSON Schema of recipes, for editors
      rlhf serve-reward tiny_ppo ppo.reward  a stage's reward function over HTTP
    """


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a recipe value (TOML literal), e.g. stages.sft.trainer_settings.learning_rate=1e-3.",
)


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@set_option
@handle_errors
def validate(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Check RECIPE (a file, or the name of a shipped recipe) and report every problem at
    once (exit 2), or print ok."""
    from rlhf_plugins._engine.recipe import load_recipe
    from rlhf_plugins._engine.shipped import find_recipe

    recipe = find_recipe(str(recipe))
    loaded = load_recipe(recipe, load_registry(), overrides)
    chain = " -> ".join(loaded.stages)
    click.echo(f"ok: {recipe} ({len(loaded.stages)} stages: {chain})")


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@set_option
@click.option("--force", is_flag=True, help="Rerun stages even when finished and unchanged.")
@click.option(
    "-v", "--verbose", is_flag=True, help="Show library progress bars, logs and warnings."
)
@click.option("--only", metavar="STAGE", help="Run one stage (its inputs must exist).")
@click.option(
    "--num-processes",
    type=click.IntRange(min=1),
    help="Processes to launch with Accelerate, in all across machines (default: [launch] "
    "num_processes or 1); same as --set launch.num_processes=N.",
)
@click.option(
    "--machine-rank",
    type=click.IntRange(min=0),
    help="This machine's rank in a run on [launch] num_machines machines (each machine runs "
    "the same command with its own rank; 0 is the main one); same as --set launch.machine_rank=N.",
)
@handle_errors
def run(
    recipe: Path,
    overrides: tuple[str, ...],
    force: bool,
    only: str | None,
    num_processes: int | None,
    machine_rank: int | None,
    verbose: bool,
) -> None:
    """Run RECIPE (a file, or the name of a shipped recipe: rlhf recipes): every stage in
    order, outputs under runs/<recipe>/<stage>/."""
    from rlhf_plugins._engine.console import VERBOSE_ENV, cpu_only_deepspeed, quiet_libraries
    from rlhf_plugins._engine.launcher import attach_rank_console

    attach_rank_console()
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    quiet_libraries()

    from rlhf_plugins._engine.launcher import (
        holds_run_lock,
        launching_line,
        needs_launcher,
        relaunch,
    )
    from rlhf_plugins._engine.ranks import is_main_process
    from rlhf_plugins._engine.recipe import load_recipe
    from rlhf_plugins._engine.runner import Runner
    from rlhf_plugins._engine.shipped import find_recipe

    debug = click.get_current_context().params["debug"]

    recipe = find_recipe(str(recipe))
    registry = load_registry()
    for key, value in (("num_processes", num_processes), ("machine_rank", machine_rank)):
        overrides += (f"launch.{key}={value}",) if value is not None else ()
    loaded = load_recipe(recipe, registry, overrides)
    lock = run_lock(loaded.run_dir) if holds_run_lock(loaded.launch) else contextlib.nullcontext()
    with sigterm_raises(), lock:
        if needs_launcher(loaded.launch):
            args = ["run", str(recipe), *(f"--set={o}" for o in overrides)]
            args += ["--force"] * force + (["--only", only] if only else [])
            args += ["--debug"] * debug
            args += ["--verbose"] * verbose
            click.echo(launching_line(loaded.launch))
            ended = relaunch(loaded.launch, args, show_launcher=debug or verbose)
            for line in ended.lines:
                click.echo(line, err=True)
            if ended.code != 0:
                sys.exit(ended.code if ended.code in PASSED_ON_EXIT_CODES else 1)
            return
        cpu_only_deepspeed()
        results = Runner(loaded, registry, echo=click.echo).run(force=force, only=only)
    if is_main_process():
        click.echo(f"finished {loaded.name}: {len(results)} stage(s) in {loaded.run_dir}")


@cli.command()
def recipes() -> None:
    """The recipes shipped with installed packages: name, stages, what each needs. Run one
    by name (rlhf run tiny_sft) or copy it to edit (rlhf cp tiny_sft my.toml)."""
    from rlhf_plugins._engine.shipped import shipped_recipes

    found = shipped_recipes()
    if not found:
        click.echo("no shipped recipes installed")
        return
    rows = [(r.name, " -> ".join(r.stages), r.requires or "-") for r in found.values()]
    for line in table_lines(("recipe", "stages", "needs"), rows):
        click.echo(line)


@cli.command()
@click.argument("name")
@click.argument("destination", type=click.Path(path_type=Path))
@handle_errors
def cp(name: str, destination: Path) -> None:
    """Copy the shipped recipe NAME to DESTINATION (a file or a directory) to edit it; a
    DeepSpeed config it names is copied beside it."""
    from rlhf_plugins._engine.shipped import copy_recipe

    for path in copy_recipe(name, destination):
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@handle_errors
def report(run_dir: Path) -> None:
    """Write RUN_DIR/report.html (plots, evaluation table, samples, resolved recipe; no
    network needed to view it) and RUN_DIR/report.md. Every run writes it at its end too."""
    from rlhf_plugins._engine.report import write_report

    click.echo(f"wrote {write_report(run_dir)}")


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path), default="runs")
def runs(directory: Path) -> None:
    """The runs under DIRECTORY (default: runs/): each stage's status, steps, wall time and
    first metrics. A live run shows its pid; a killed one shows as resumable."""
    from rlhf_plugins._engine.rundir import run_overview

    rows = run_overview(directory)
    if not rows:
        click.echo(f"no runs under {directory}")
        return
    for line in table_lines(("run", "stage", "status", "steps", "time", "metrics"), rows):
        click.echo(line)


@cli.command("serve-reward")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("target", metavar="STAGE[.SLOT]")
@set_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on (0: any free one).",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Most rows of queued requests joined into one call of the reward function.",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="How long the first queued request waits for others to join it.",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Read the token clients must send (Authorization: Bearer) from FILE instead of "
    "$RLHF_REWARD_TOKEN (FILE wins when both are there).",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Listen on an address other than loopback without a token (anyone who can reach it "
    "can score).",
)
@handle_errors
def serve_reward(
    recipe: Path,
    target: str,
    overrides: tuple[str, ...],
    host: str,
    port: int,
    max_batch_size: int,
    max_wait_ms: float,
    token_file: Path | None,
    insecure: bool,
) -> None:
    """Serve the reward function of RECIPE's stage STAGE (its slot SLOT, e.g. ppo.reward,
    or one nested in it, ppo.reward.base) over HTTP, built as rlhf run builds it (from_stage reads the recipe's run directory);
    the remote-reward reward function calls it. POST /v1/score, GET /v1/health
    (docs/serving.md). With a token ($RLHF_REWARD_TOKEN or --token-file), /v1/score needs
    Authorization: Bearer <token>; without one, only a loopback --host is allowed unless
    --insecure."""
    from rlhf_plugins._engine.console import cpu_only_deepspeed, quiet_libraries
    from rlhf_plugins._engine.recipe import load_recipe
    from rlhf_plugins._engine.reward_server import (
        check_exposure,
        serve,
        served_reward,
        server_token,
    )
    from rlhf_plugins._engine.shipped import find_recipe

    token = server_token(token_file)
    warning = check_exposure(host, token, insecure=insecure)
    if warning:
        click.echo(warning, err=True)
    quiet_libraries()
    cpu_only_deepspeed()
    registry = load_registry()
    loaded = load_recipe(find_recipe(str(recipe)), registry, overrides)
    with sigterm_raises():
        stats = serve(
            served_reward(loaded, registry, target),
            host=host,
            port=port,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            token=token,
            echo=click.echo,
        )
    click.echo(
        f"stopped; scored: requests {stats.requests}, rows {stats.rows}, calls {stats.batches}"
    )


@cli.command()
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Write to this file, not stdout."
)
@handle_errors
def schema(output: Path | None) -> None:
    """Print a JSON Schema of recipes for the installed plugins (for editors: Taplo's
    #:schema directive)."""
    from rlhf_plugins._engine.schema import recipe_schema

    text = json.dumps(recipe_schema(load_registry()), indent=1) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {output}")


@cli.command("list-plugins")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of plugins.")
@click.option("-v", "--verbose", is_flag=True, help="Also show each component's description.")
def list_plugins(as_json: bool, verbose: bool) -> None:
    """Show installed plugins, the hooks they implement and the components they register."""
    registry = load_registry()
    if as_json:
        click.echo(json.dumps([p.as_json() for p in registry.plugins.values()], indent=2))
        return
    rows = []
    for plugin in registry.plugins.values():
        version = plugin.version or "-"
        if plugin.error:
            rows.append((plugin.name, version, "ERROR", plugin.error))
        for kinds, names in plugin.components.items():
            rows.append((plugin.name, version, kinds, ", ".join(names)))
        if not plugin.components and not plugin.error:
            rows.append((plugin.name, version, "-", "(registers nothing)"))
    for line in table_lines(("plugin", "version", "hook", "components"), rows):
        click.echo(line)
    if verbose:
        for kind in KINDS:
            for name in registry.names(kind):
                click.echo("\n" + describe_component(registry.get(kind, name)))


def describe_component(component: Component) -> str:
    """A component's description, its slots (a dataset slot with the views it accepts), and
    every setting with type, default, constraint and help (read from its one declaration)."""
    from rlhf_plugins._engine.factories import describe, setting_docs

    lines = [
        f"{component.kind.replace('_', ' ')} '{component.name}' "
        f"({component.origin}): {component.description}"
    ]
    spec = describe(component.factory)
    for param in sorted(spec.slots.values(), key=lambda p: p.name):
        kind = f"{param.slot.replace('_', ' ')} component"
        if param.container:
            kind = f"{param.container} of {kind}s"
        views = f", view {' | '.join(map(repr, param.views))}" if param.views else ""
        needed = "required" if param.required else "optional"
        lines.append(f"    {param.name}: {kind}, {needed}{views}")
    for doc in setting_docs(spec.model):
        default = "required" if doc.default == "required" else f"default {doc.default}"
        detail = ", ".join(x for x in (doc.type, doc.constraint, default) if x)
        lines.append(f"    {doc.name}: {detail}" + (f" -- {doc.help}" if doc.help else ""))
    return "\n".join(lines)


def main() -> None:
    cli(prog_name="rlhf")


if __name__ == "__main__":
    main()
