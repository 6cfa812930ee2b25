"""One run at a time per run directory, and signals that stop a run cleanly.

The lock is an OS file lock (``flock``) on ``<run dir>/.rlhf.lock``: the kernel releases it
when its holder exits, however it exits (kill -9 included), so a stale lock never blocks a
rerun. The file also records who holds it, for the message a second run prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from rlhf_plugins._engine.errors import UserError

LOCK_FILE = ".rlhf.lock"


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (schedulers such as SLURM
    and Kubernetes send it); it unwinds like Ctrl-C, exit code 143."""

    exit_code = 143


_terminated = False


def raise_terminated(signum: int, frame: object) -> None:
    global _terminated
    _terminated = True
    raise Terminated()


def was_terminated() -> bool:
    """True once SIGTERM arrived in this process: a library that turned the ``Terminated``
    it raised mid-I/O into another error (``OSError: Bad file descriptor``) still ends the
    stage as interrupted."""
    return _terminated


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While active, SIGTERM raises ``Terminated`` (like SIGINT raises ``KeyboardInterrupt``)."""
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _holder_info(handle: IO[str]) -> dict:
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except ValueError:
        return {}


def _holder(handle: IO[str]) -> str:
    info = _holder_info(handle)
    if not info:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host')}, started {started}: {info.get('command')}"


def lock_holder(run_dir: Path) -> dict | None:
    """Who holds ``run_dir``'s lock now (``pid``, ``host``, ``started``, ``command``), or
    None when no live run does."""
    try:
        handle = (run_dir / LOCK_FILE).open()
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_info(handle) or {"pid": "?"}
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def unwritable(run_dir: Path, exc: OSError) -> UserError:
    return UserError(
        f"cannot write the run directory {run_dir}: {exc.strerror or exc}; set "
        "recipe.output_dir (e.g. --set recipe.output_dir=/path/with/space) to a writable "
        "directory with free space"
    )


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the lock of ``run_dir`` (created if needed) for the duration of the block.

    Raises ``UserError`` when ``run_dir`` cannot be created or written (naming it and the
    setting to change), or when another live run holds the lock (naming its pid)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = (run_dir / LOCK_FILE).open("a+")
    except OSError as exc:
        raise unwritable(run_dir, exc) from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{run_dir} is in use by another run ({_holder(handle)}); wait for it to "
                "finish or stop it, or set recipe.output_dir to another directory"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "started": time.time(),
                        "command": " ".join(["rlhf", *sys.argv[1:]]),
                    }
                )
            )
            handle.flush()
        except OSError as exc:
            raise unwritable(run_dir, exc) from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
