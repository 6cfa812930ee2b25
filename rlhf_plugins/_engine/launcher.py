"""Relaunch ``rlhf run`` under ``accelerate launch``: N processes on this machine, or this
machine's share of a run on several machines (gloo ranks on CPU)."""

from __future__ import annotations

import codecs
import collections
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rlhf_plugins._engine.ranks import is_main_process
from rlhf_plugins._engine.recipe_tables import MULTI_MACHINE_PORT, LaunchConfig
from rlhf_plugins._engine.runlock import Terminated

LAUNCHED_ENV = "RLHF_PLUGINS_LAUNCHED"
STOP_GRACE_SECONDS = 60
RANK_STDOUT_ENV = "RLHF_RANK_STDOUT"
RANK_STDERR_ENV = "RLHF_RANK_STDERR"
RANK_REPORTS_ENV = "RLHF_RANK_REPORTS"
"""Set for the ranks ``relaunch`` starts: where they write their output (the terminal of
``rlhf run`` or a FIFO it relays), and the folder where each rank leaves the line and exit
code it ended with, so that ``rlhf run`` prints them once instead of the launcher's trace."""
INTERRUPTED_CODES = (130, 143)
LAUNCHER_LINES_KEPT = 200


def already_launched() -> bool:
    """True inside a process that a launcher (ours or anyone's) started as one rank."""
    return bool(os.environ.get(LAUNCHED_ENV) or os.environ.get("LOCAL_RANK"))


def needs_launcher(launch: LaunchConfig) -> bool:
    """True when ``rlhf run`` must start its ranks through ``accelerate launch``."""
    if already_launched():
        return False
    machines = launch.resolved()
    return (
        machines.num_processes > 1
        or machines.num_machines > 1
        or launch.deepspeed is not None
        or launch.config_file is not None
    )


def holds_run_lock(launch: LaunchConfig) -> bool:
    """True in the one process of a run that locks its run directory: rank 0 of an outside
    launcher, or our ``rlhf run`` on machine rank 0 (the machines share the directory, so
    machine rank 1 would find the lock of rank 0 held). Never in a rank we launched."""
    if os.environ.get(LAUNCHED_ENV):
        return False
    if already_launched():
        return is_main_process()
    return launch.resolved().machine_rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_flags(launch: LaunchConfig) -> list[str]:
    """``accelerate launch`` flags for the machines and processes. With a config file only the
    fields ``[launch]`` sets explicitly are passed (they win over the file); without one all.
    On one machine a free port unless ``[launch]`` or the file gives one (two runs at once must
    not meet on Accelerate's default port)."""
    explicit = launch.model_fields_set if launch.config_file is not None else None
    machines = launch.resolved()
    port = machines.main_process_port
    if port is None and machines.num_machines == 1:
        port = _free_port()
        explicit = None if explicit is None else {*explicit, "main_process_port"}
    elif port is None and explicit is None:
        port = MULTI_MACHINE_PORT
    values = {
        "num_processes": machines.num_processes,
        "num_machines": machines.num_machines,
        "machine_rank": machines.machine_rank if machines.num_machines > 1 else None,
        "main_process_ip": machines.main_process_ip,
        "main_process_port": port,
    }
    flags = []
    for key, value in values.items():
        if value is not None and (explicit is None or key in explicit):
            flags += [f"--{key}", str(value)]
    return flags


def launch_command(launch: LaunchConfig, cli_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command line and environment that rerun ``cli_args`` as this
    machine's ranks (``launch.resolved().processes_per_machine`` of them)."""
    import torch

    env = {**os.environ, LAUNCHED_ENV: "1"}
    machines = launch.resolved()
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if launch.config_file is not None:
        cmd += ["--config_file", str(launch.config_file)]
    cmd += machine_flags(launch)
    cmd += ["--mixed_precision", launch.mixed_precision, "--dynamo_backend", "no"]
    if launch.deepspeed is not None:
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(launch.deepspeed)]
        if machines.num_machines > 1:
            # torchrun on every machine, as for plain ranks (not pdsh and a hostfile)
            cmd += ["--deepspeed_multinode_launcher", "standard"]
    elif launch.config_file is None and machines.num_processes > 1:
        cmd.append("--multi_gpu")
    if not torch.cuda.is_available():
        if launch.deepspeed is None:
            env["ACCELERATE_USE_CPU"] = "1"
        env.setdefault("DS_ACCELERATOR", "cpu")
        per_machine = max(1, machines.processes_per_machine)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // per_machine)))
    cmd += ["-m", "rlhf_plugins.cli", *cli_args]
    return cmd, env


def launching_line(launch: LaunchConfig) -> str:
    """What ``rlhf run`` prints before it starts this machine's ranks."""
    machines = launch.resolved()
    if machines.num_machines == 1:
        return f"launching {machines.num_processes} processes with Accelerate"
    return (
        f"launching {machines.processes_per_machine} of {machines.num_processes} processes "
        f"with Accelerate on machine rank {machines.machine_rank} of {machines.num_machines}"
    )


@dataclass
class LaunchOutcome:
    """How the launched ranks ended: the exit code ``rlhf run`` should end with and the lines
    it prints for them (empty when they succeeded)."""

    code: int
    lines: list[str] = field(default_factory=list)


class _Relay:
    """A FIFO whose bytes a thread copies to ``stream`` (text, decoded incrementally) until
    every writer has closed it."""

    def __init__(self, path: Path, stream: IO[str]):
        os.mkfifo(path)
        self.reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        # held open until close(), so the FIFO does not end before the ranks have opened it
        self.keeper = os.open(path, os.O_WRONLY)
        fcntl.fcntl(
            self.reader, fcntl.F_SETFL, fcntl.fcntl(self.reader, fcntl.F_GETFL) & ~os.O_NONBLOCK
        )
        self.stream = stream
        self.thread = threading.Thread(target=self.copy, daemon=True)
        self.thread.start()

    def copy(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := os.read(self.reader, 65536):
            self.stream.write(decoder.decode(chunk))
            self.stream.flush()

    def close(self) -> None:
        os.close(self.keeper)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            os.close(self.reader)


class RankConsole:
    """Where the launched ranks' output goes, apart from the launcher's own: each rank points
    its stdout and stderr at this process's terminal (when it is one) or at a FIFO relayed to
    this process's streams, and leaves its last line and exit code in a reports folder."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rlhf-ranks-"))
        self.env: dict[str, str] = {RANK_REPORTS_ENV: str(self.folder)}
        self.relays: list[_Relay] = []
        for key, stream in ((RANK_STDOUT_ENV, sys.stdout), (RANK_STDERR_ENV, sys.stderr)):
            terminal = _terminal_of(stream)
            if terminal is not None:
                self.env[key] = terminal
                continue
            path = self.folder / key.lower()
            self.relays.append(_Relay(path, stream))
            self.env[key] = str(path)

    def reports(self) -> list[dict]:
        """What the ranks reported, first written first."""
        found = []
        for path in self.folder.glob("rank-*.json"):
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(path.read_text()))
        return sorted(found, key=lambda r: r.get("time", 0))

    def close(self) -> None:
        for relay in self.relays:
            relay.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _terminal_of(stream: IO[str]) -> str | None:
    try:
        return os.ttyname(stream.fileno()) if stream.isatty() else None
    except (OSError, ValueError, AttributeError):
        return None


def attach_rank_console() -> None:
    """In a rank ``relaunch`` started: write stdout and stderr where ``rlhf run`` shows them,
    past the launcher (whose own output ``rlhf run`` keeps back)."""
    for fd, key in ((1, RANK_STDOUT_ENV), (2, RANK_STDERR_ENV)):
        path = os.environ.get(key)
        if not path:
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        target = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)


def report_rank_end(line: str, code: int) -> bool:
    """In a rank ``relaunch`` started: leave the line it would print and its exit code for
    ``rlhf run`` to print once for all ranks. False (nothing written) elsewhere."""
    folder = os.environ.get(RANK_REPORTS_ENV)
    if not folder or not Path(folder).is_dir():
        return False
    rank = os.environ.get("RANK", str(os.getpid()))
    report = {"line": line, "code": code, "rank": rank, "time": time.time()}
    path = Path(folder) / f"rank-{rank}.json"
    try:
        path.with_suffix(".tmp").write_text(json.dumps(report))
        path.with_suffix(".tmp").replace(path)
    except OSError:
        return False
    return True


def outcome(code: int, reports: list[dict], launcher_lines: list[str]) -> LaunchOutcome:
    """The exit code and lines of a launch that exited with ``code``: the ranks' own lines,
    each once, and the code of the first rank that failed (a rank the launcher stopped because
    another failed reports an interruption, which is not the cause); when no rank said why, the
    launcher's own output and its code."""
    if code == 0:
        return LaunchOutcome(0)
    causes = [r for r in reports if r["code"] not in INTERRUPTED_CODES] or reports
    if causes:
        return LaunchOutcome(causes[0]["code"], list(dict.fromkeys(r["line"] for r in causes)))
    return LaunchOutcome(
        code, [*launcher_lines, f"error: the launched run exited with code {code}"]
    )


def relaunch(launch: LaunchConfig, cli_args: list[str], *, show_launcher: bool) -> LaunchOutcome:
    """Run ``rlhf <cli_args>`` as this machine's ranks of the run; return how they ended.

    The ranks' output reaches this process's stdout and stderr as it comes; the launcher's own
    (torchrun's agent log and its ``ChildFailedError`` trace) only with ``show_launcher``, or
    when no rank said why the launch failed.

    Ctrl-C or SIGTERM arriving here is passed on to the launcher (which stops the ranks, and
    they record the stage as interrupted); once it has exited the interrupt is re-raised."""
    cmd, env = launch_command(launch, cli_args)
    console = RankConsole()
    kept: collections.deque[str] = collections.deque(maxlen=LAUNCHER_LINES_KEPT)
    quiet = {} if show_launcher else {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    try:
        process = subprocess.Popen(
            cmd, env={**env, **console.env}, text=True, errors="replace", **quiet
        )
        reader = threading.Thread(target=_keep_lines, args=(process.stdout, kept), daemon=True)
        reader.start()
        try:
            code = process.wait()
        except KeyboardInterrupt as exc:
            process.send_signal(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
        reader.join(timeout=10)
        return outcome(code, console.reports(), list(kept))
    finally:
        console.close()


def _keep_lines(stream: IO[str] | None, kept: collections.deque[str]) -> None:
    for line in stream or ():
        kept.append(line.rstrip("\n"))
