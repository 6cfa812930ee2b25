"""``rlhf serve-reward``: one registered reward function, built from a recipe table, served over
HTTP (the contract: ``rlhf_plugins._engine.reward_api``; docs/serving.md).

Requests are validated by FastAPI against ``ScoreRequest`` and queued; one worker thread (the
only one that ever calls the reward function: torch models are not safe to call from many
threads) joins the rows of queued requests into one call, up to ``max_batch_size`` rows or
``max_wait`` seconds after the first, and hands each request its own scores. FastAPI and
uvicorn (the ``serve`` extra) are imported only when a server starts.

With a token (``$RLHF_REWARD_TOKEN`` or ``--token-file``), every request but the open ones
(``OPEN_PATHS``: health and the OpenAPI documents) must carry ``Authorization: Bearer
<token>``, checked before its body is parsed; without one, a server listens on a loopback
address only, unless told ``insecure``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import math
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_plugins._engine.components import RewardFunction, reward_scores
from rlhf_plugins._engine.errors import UserError
from rlhf_plugins._engine.factories import describe
from rlhf_plugins._engine.recipe import Recipe, slot_tables
from rlhf_plugins._engine.registry import Registry
from rlhf_plugins._engine.reward_api import (
    API_VERSION,
    HEALTH_PATH,
    SCORE_PATH,
    BatchStats,
    ErrorResponse,
    Health,
    ScoreRequest,
    ScoreResponse,
)
from rlhf_plugins._engine.settings import did_you_mean

REWARD_SLOT = "reward_function"
TOKEN_ENV = "RLHF_REWARD_TOKEN"
"""The environment variable the server reads its token from (``remote-reward``'s default
``token_env``)."""
TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
"""What a token may hold: visible ASCII, as it travels in a header (no spaces, no newline)."""
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
OPEN_PATHS = frozenset({HEALTH_PATH, "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
"""Answered without a token: liveness checks and the API's description; nothing scores."""


@dataclass(frozen=True)
class Token:
    """The shared secret clients send as ``Authorization: Bearer <value>``; ``source`` says
    where it came from (``$RLHF_REWARD_TOKEN``, ``--token-file FILE``). Never printed."""

    value: str = field(repr=False)
    source: str


def server_token(token_file: Path | None, environ: dict[str, str] | None = None) -> Token | None:
    """The token from ``token_file`` (its text without the trailing newline), which wins over
    ``$RLHF_REWARD_TOKEN``, else from that variable, else ``None``. ``UserError`` for a file
    that cannot be read or is empty, an empty variable, or a token with characters other
    than visible ASCII."""
    environ = os.environ if environ is None else environ
    if token_file is not None:
        source = f"--token-file {token_file}"
        try:
            value = token_file.read_bytes().decode("ascii").rstrip("\r\n")
        except UnicodeDecodeError:
            value = " "  # refused below
        except OSError as exc:
            raise UserError(f"{source}: cannot read it ({exc.strerror or exc})") from None
        if not value:
            raise UserError(f"{source} is empty; write a token into it ({MAKE_TOKEN} > FILE)")
    elif TOKEN_ENV in environ:
        source, value = f"${TOKEN_ENV}", environ[TOKEN_ENV]
        if not value:
            raise UserError(
                f"${TOKEN_ENV} is set but empty; set a token ({MAKE_TOKEN}) or unset it"
            )
    else:
        return None
    if not TOKEN_CHARS.fullmatch(value):
        raise UserError(
            f"the token from {source} must be visible ASCII characters, without spaces or line "
            f"breaks ({MAKE_TOKEN} makes one)"
        )
    return Token(value, source)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or an address in 127.0.0.0/8 or ::1. Host names
    other than ``localhost`` are not looked up: they count as reachable from elsewhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: Token | None, *, insecure: bool) -> str | None:
    """``UserError`` when ``host`` is not a loopback address and there is no token, unless
    ``insecure``; then the warning to print (``None`` when there is nothing to warn about)."""
    if token is not None or is_loopback(host):
        return None
    if not insecure:
        raise UserError(
            f"refusing to listen on {host} without a token: set ${TOKEN_ENV} here and on the "
            f"clients (make one with {MAKE_TOKEN}) or pass --token-file FILE; --insecure "
            "listens without one"
        )
    return (
        f"warning: listening on {host} without a token (--insecure): anyone who can reach it "
        "can score"
    )


@dataclass
class ServedReward:
    """A built reward function, the recipe table it was built from and where that table is
    (``"stages.ppo.reward of recipes/tiny_ppo.toml"``)."""

    reward: RewardFunction
    table: dict[str, Any]
    source: str


def reward_tables(recipe: Recipe, registry: Registry, stage: str) -> dict[str, dict[str, Any]]:
    """The reward-function tables of ``stage``'s slots by key (``reward``, ``rewards[0]``)."""
    if stage not in recipe.stages:
        hint = did_you_mean(stage, recipe.stages) or f" (stages: {', '.join(recipe.stages)})"
        raise UserError(f"{recipe.path}: no stage '{stage}'{hint}")
    spec = recipe.stages[stage]
    params = describe(registry.get(spec.kind, spec.component).factory).slots
    return {
        key: table
        for name, value in spec.slots.items()
        if params[name].slot == REWARD_SLOT
        for key, table in slot_tables(name, params[name], value)
    }


def from_stages(table: Any) -> list[str]:
    """Every ``from_stage`` named in a component table, its nested components included."""
    if isinstance(table, list):
        return [name for item in table for name in from_stages(item)]
    if not isinstance(table, dict):
        return []
    found = [table["from_stage"]] if "from_stage" in table else []
    return found + [name for value in table.values() for name in from_stages(value)]


def reward_table(recipe: Recipe, registry: Registry, target: str) -> tuple[str, dict[str, Any]]:
    """``(where, table)``: the reward-function table at ``target`` of a validated recipe:
    ``STAGE`` (when the stage has one), ``STAGE.SLOT`` (``ppo.reward``, ``grpo.rewards[0]``)
    or one nested in it (``ppo.reward.base``); ``UserError`` naming the choices otherwise."""
    stage, _, key = target.partition(".")
    tables = reward_tables(recipe, registry, stage)
    if not tables:
        raise UserError(f"{recipe.path}: stage '{stage}' has no reward function")
    if not key and len(tables) > 1:
        raise UserError(f"stage '{stage}' has several reward functions; name one: {stage}.SLOT")
    slot, *nested = key.split(".") if key else [next(iter(tables))]
    if slot not in tables:
        choices = ", ".join(f"{stage}.{k}" for k in tables)
        raise UserError(f"stage '{stage}' has no reward function '{slot}' (it has: {choices})")
    table = tables[slot]
    for part in nested:
        param = describe(registry.get(REWARD_SLOT, table["use"]).factory).slots.get(part)
        if param is None or param.slot != REWARD_SLOT or param.container or part not in table:
            raise UserError(f"{target}: '{table['use']}' has no reward function '{part}'")
        table = table[part]
    return f"stages.{stage}.{'.'.join([slot, *nested])}", table


def served_reward(recipe: Recipe, registry: Registry, target: str) -> ServedReward:
    """Build the reward function at ``target`` (see ``reward_table``) as ``rlhf run`` builds
    it for that stage: ``from_stage`` reads the stage's output under the recipe's run
    directory, which must have finished (``UserError`` otherwise)."""
    from rlhf_plugins._engine.building import Builder
    from rlhf_plugins._engine.rundir import read_state

    where, table = reward_table(recipe, registry, target)
    stage = target.partition(".")[0]
    builder = Builder(recipe, registry)
    for name in from_stages(table):
        if read_state(builder.stage_dir(name)).get("status") != "finished":
            raise UserError(
                f"{where} reads stage '{name}', which has not finished in "
                f"{builder.stage_dir(name)}; run the recipe up to it first (rlhf run {recipe.path})"
            )
    context = builder.stage_context(recipe.stages[stage])
    reward = builder.component(REWARD_SLOT, table, context)
    return ServedReward(reward, table, f"{where} of {recipe.path}")


class ScoringError(Exception):
    """A request that got no scores; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass
class _Pending:
    request: ScoreRequest
    future: Future


_STOP = object()
"""Queued by ``Batcher.stop``, last: the worker answers 503 to any request it had taken
but not yet started scoring, then ends."""


class Batcher:
    """Scores requests in one worker thread, joining queued requests into one call of
    ``reward``: the first waiting request, then those that arrive within ``max_wait``
    seconds of it while the rows stay within ``max_batch_size`` and the column names match.
    A request is never split (one larger than ``max_batch_size`` is scored alone).
    ``stats`` counts what was scored. ``stop`` (shutdown begins) lets the call in progress
    finish and answers every other request, queued or later, with 503."""

    def __init__(self, reward: RewardFunction, *, max_batch_size: int, max_wait: float):
        self.reward = reward
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._carry: Any = None
        self._closed = False
        self._lock = threading.Lock()  # nothing is queued after _STOP
        self._thread = threading.Thread(target=self._work, name="reward-worker", daemon=True)
        self._thread.start()

    def submit(self, request: ScoreRequest) -> Future:
        """A future of the request's scores (``None`` for a non-finite one; no rows: no
        call), or of a ``ScoringError``: 500 when the reward function failed, 503 once
        stopping (``stop``)."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                future.set_exception(_stopping())
            elif not len(request):
                future.set_result([])
            else:
                self._queue.put(_Pending(request, future))
        return future

    def stop(self) -> None:
        """Stop accepting: the call in progress finishes and answers its requests; those
        still queued and any submitted later get 503 (which ``remote-reward`` retries)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            while True:  # answered now, not after the call in progress
                try:
                    self._refuse([self._queue.get_nowait()])
                except queue.Empty:
                    break
            self._queue.put(_STOP)

    def close(self, *, wait: bool = True) -> None:
        """``stop``, then (unless not ``wait``) wait for the call in progress to finish."""
        self.stop()
        if wait:
            self._thread.join()

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            if self._closed:
                self._refuse(batch)
            else:
                self._score(batch)

    def _refuse(self, batch: list[_Pending]) -> None:
        for pending in batch:
            if pending.future.set_running_or_notify_cancel():
                pending.future.set_exception(_stopping())

    def _next_batch(self) -> list[_Pending] | None:
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is _STOP:
            return None
        batch, rows = [first], len(first.request)
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP or not self._joins(first, item, rows):
                self._carry = item
                break
            batch.append(item)
            rows += len(item.request)
        return batch

    def _joins(self, first: _Pending, item: _Pending, rows: int) -> bool:
        same_columns = item.request.columns.keys() == first.request.columns.keys()
        return same_columns and rows + len(item.request) <= self.max_batch_size

    def _score(self, batch: list[_Pending]) -> None:
        # a request whose caller has gone (its future cancelled) is dropped; the rest can no
        # longer be cancelled
        batch = [pending for pending in batch if pending.future.set_running_or_notify_cancel()]
        if not batch:
            return
        requests = [pending.request for pending in batch]
        prompts = [p for r in requests for p in r.prompt_values()]
        completions = [c for r in requests for c in r.completions]
        columns = {
            name: [v for r in requests for v in r.columns[name]] for name in requests[0].columns
        }
        try:
            scores, problem = reward_scores(
                self.reward, prompts, completions, columns, finite=False
            )
        except Exception as exc:
            scores, problem = None, f"raised {type(exc).__name__}: {exc}"
        self._count(len(batch), len(prompts), failed=scores is None)
        if scores is None:
            for pending in batch:
                pending.future.set_exception(ScoringError(f"the reward function {problem}", 500))
            return
        start = 0
        for pending in batch:
            end = start + len(pending.request)
            pending.future.set_result([s if math.isfinite(s) else None for s in scores[start:end]])
            start = end

    def _count(self, requests: int, rows: int, *, failed: bool) -> None:
        s = self.stats
        s.requests += requests
        s.rows += rows
        s.batches += 1
        s.failed_batches += failed
        s.largest_batch_requests = max(s.largest_batch_requests, requests)
        s.largest_batch_rows = max(s.largest_batch_rows, rows)


def _stopping() -> ScoringError:
    return ScoringError("the server is stopping", 503)


def validation_message(errors: list[dict[str, Any]]) -> str:
    """FastAPI's validation errors of a request body as one line."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error["loc"][1:])
        if error["type"] == "json_invalid":
            parts.append(f"the body is not valid JSON ({error.get('ctx', {}).get('error', '')})")
        elif not where and error["type"] == "model_attributes_type":
            parts.append("the body must be a JSON object (Content-Type: application/json)")
        else:
            parts.append(f"{where or 'the body'}: {error['msg'].removeprefix('Value error, ')}")
    return "malformed request: " + "; ".join(parts)


class BearerGuard:
    """ASGI middleware: a request to any path but ``OPEN_PATHS`` without ``Authorization:
    Bearer <token>`` (compared in constant time) is answered 401 without its body being
    parsed, and reported to ``refused`` as who asked for what and why, never with the
    header. The body is read and dropped first (up to ``DRAIN_LIMIT`` bytes): a client
    still sending it would otherwise see the connection close, not the answer."""

    DRAIN_LIMIT = 64 * 2**20

    def __init__(self, app: Any, token: Token, refused: Callable[[str], None]):
        self.app = app
        self.expected = token.value.encode()
        self.refused = refused

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            why = self._problem(dict(scope["headers"]).get(b"authorization"))
            if why is not None:
                await self._drain(receive)
                await self._refuse(scope, why)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _drain(self, receive: Any) -> None:
        read = 0
        while read <= self.DRAIN_LIMIT:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return
            read += len(message.get("body", b""))

    def _problem(self, header: bytes | None) -> str | None:
        scheme, _, credentials = (header or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not credentials.strip():
            return "no token"
        if not hmac.compare_digest(credentials.strip(), self.expected):
            return "wrong token"
        return None

    def _refuse(self, scope: Any, why: str) -> Any:
        from fastapi.responses import JSONResponse

        client = ":".join(map(str, scope.get("client") or ("unknown",)))
        path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")[:200]  # one line
        self.refused(f"refused {scope['method']} {path} from {client} (401: {why})")
        if why == "no token":
            message, challenge = "a token is required: send Authorization: Bearer <token>", "Bearer"
        else:
            message, challenge = "the token was not accepted", 'Bearer error="invalid_token"'
        return JSONResponse(
            status_code=401, content={"error": message}, headers={"WWW-Authenticate": challenge}
        )


def create_app(
    served: ServedReward,
    batcher: Batcher,
    token: Token | None = None,
    refused: Callable[[str], None] = print,
) -> Any:
    """The FastAPI application: ``POST /v1/score`` and ``GET /v1/health``; every error is
    an ``ErrorResponse``. With a ``token``, every path but ``OPEN_PATHS`` needs it
    (``BearerGuard``, which reports each refusal to ``refused``)."""
    from fastapi import FastAPI, Security
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPBearer
    from starlette.exceptions import HTTPException

    app = FastAPI(title="rlhf serve-reward", version=str(API_VERSION))
    statuses = (400, 500, 503) if token is None else (400, 401, 500, 503)
    errors = {status: {"model": ErrorResponse} for status in statuses}
    guarded: dict[str, Any] = {}
    if token is not None:
        app.add_middleware(BearerGuard, token=token, refused=refused)
        # declares the scheme in the OpenAPI document (and /docs' Authorize button); the
        # check itself is BearerGuard's, before the body is parsed
        guarded["dependencies"] = [Security(HTTPBearer(auto_error=False))]

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": message})

    @app.exception_handler(RequestValidationError)
    async def _malformed(request, exc):
        return error(400, validation_message(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(ScoringError)
    async def _not_scored(request, exc):
        return error(exc.status, str(exc))

    @app.post(SCORE_PATH, response_model=ScoreResponse, responses=errors, **guarded)
    async def score(request: ScoreRequest) -> ScoreResponse:
        """One score per row of the request."""
        return ScoreResponse(scores=await asyncio.wrap_future(batcher.submit(request)))

    @app.get(HEALTH_PATH, response_model=Health)
    async def health() -> Health:
        """The reward function served and what the worker has scored."""
        return Health(
            status="ok",
            api_version=API_VERSION,
            reward=served.table,
            source=served.source,
            max_batch_size=batcher.max_batch_size,
            max_wait_ms=batcher.max_wait * 1000,
            batching=batcher.stats.model_copy(),
        )

    return app


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (port 0: any free one); ``UserError`` when the
    address cannot be used (in use, not this machine's)."""
    sock = None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(
    served: ServedReward,
    *,
    host: str,
    port: int,
    max_batch_size: int,
    max_wait_ms: float,
    token: Token | None = None,
    echo: Callable[[str], None] = print,
) -> BatchStats:
    """Serve ``served`` on ``host:port`` until Ctrl-C or SIGTERM; then stop accepting (new
    connections are refused; requests still queued and any more on open connections get
    503), finish the reward call in progress and answer its requests, and return what was
    scored. A second Ctrl-C stops at once. With a ``token``, requests without it get 401
    and a line on ``echo`` (``BearerGuard``). ``UserError`` when FastAPI or uvicorn is
    missing or the address cannot be used."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise UserError(
            f"rlhf serve-reward needs FastAPI and uvicorn ({exc}): "
            'pip install "rlhf-plugins[serve]"'
        ) from None
    with contextlib.ExitStack() as cleanup:  # whatever fails, the socket and worker go
        sock = cleanup.enter_context(listening_socket(host, port))
        batcher = Batcher(served.reward, max_batch_size=max_batch_size, max_wait=max_wait_ms / 1000)
        server = None
        # after a second Ctrl-C (uvicorn's force_exit) the call in progress is not waited
        # for: the worker is a daemon thread and goes with the process
        cleanup.callback(lambda: batcher.close(wait=not getattr(server, "force_exit", False)))
        config = uvicorn.Config(  # no access log: nothing prints a request's headers
            create_app(served, batcher, token=token, refused=echo),
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        bound = sock.getsockname()
        address = f"http://{'[' + bound[0] + ']' if ':' in bound[0] else bound[0]}:{bound[1]}"
        echo(f"serving reward function '{served.table['use']}' ({served.source})")
        echo(f"  POST {address}{SCORE_PATH}   GET {address}{HEALTH_PATH}")
        echo(f"  batches of up to {max_batch_size} rows, {max_wait_ms:g} ms wait; Ctrl-C stops")
        if token is None:
            echo(f"  no token required (set ${TOKEN_ENV} or --token-file to require one)")
        else:
            echo(
                f"  {SCORE_PATH} needs Authorization: Bearer <the token from {token.source}>; "
                f"{HEALTH_PATH} is open"
            )
        server = _server_class(uvicorn)(config, batcher)
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the signal it handled
            server.run(sockets=[sock])
    return batcher.stats


def _server_class(uvicorn: Any) -> type:
    """``uvicorn.Server`` that stops ``batcher`` when shutdown begins, before it closes the
    listening socket and waits for the requests in flight: those waiting in the queue are
    answered 503 at once rather than scored for callers that will retry anyway."""

    class StoppingServer(uvicorn.Server):
        def __init__(self, config: Any, batcher: Batcher):
            super().__init__(config)
            self.batcher = batcher

        async def shutdown(self, sockets: Any = None) -> None:
            self.batcher.stop()
            await super().shutdown(sockets=sockets)

    return StoppingServer
