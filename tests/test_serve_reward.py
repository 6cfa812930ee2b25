"""``rlhf serve-reward`` and the ``remote-reward`` reward function: real servers on 127.0.0.1,
started through the CLI in a subprocess on a free port, ready once their health endpoint
answers."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

from rlhf_plugins._engine.components import reward_scores
from rlhf_plugins._engine.errors import RewardUnavailable, StageFailed
from rlhf_plugins._engine.reward_api import HEALTH_PATH, SCORE_PATH
from tests.conftest import build_component
from tests.test_grpo import save_tiny_reward_model

RECIPE = """
[recipe]
name = "served"
seed = 1

[stages.rm]
trainer = "reward-model"
policy = { use = "tiny-causal-lm", n_layer = 1, n_embd = 16, n_head = 2 }
dataset = { use = "tldr-synthetic", view = "comparisons" }

[stages.ppo]
trainer = "ppo"
policy = { use = "hf-causal-lm", from_stage = "rm" }
dataset = { use = "tldr-synthetic", view = "prompts" }
reward = { use = "delta-reward", base = { use = "gptj-reward-head", from_stage = "rm", batch_size = 4 } }
"""
ROWS = [(name, thing) for name in ("ann", "bob", "cy", "dee") for thing in ("cat", "job")]
PROMPTS = [f"POST: {name} lost a {thing}.\nTL;DR:" for name, thing in ROWS]
COMPLETIONS = [f" {name} lost the {thing}." for name, thing in ROWS]
REFERENCES = [" something was lost."] * len(PROMPTS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + HEALTH_PATH, timeout=5) as response:
            return json.load(response)

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def reward_server(
    recipe: Path, target: str, *args: str, port: int | None = None, env: dict | None = None
) -> Iterator[Server]:
    """``rlhf serve-reward RECIPE TARGET ARGS`` on 127.0.0.1:``port`` (a free one), yielded
    once healthy; stopped with SIGINT at the end if still running."""
    port = port or free_port()
    log = recipe.parent / f"server-{port}-{time.monotonic_ns()}.log"
    command = [sys.executable, "-m", "rlhf_plugins.cli", "serve-reward", str(recipe), target]
    with log.open("w") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port), *args],
            cwd=recipe.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"the server exited: {server.output()}"
            assert time.monotonic() < deadline, f"no health after 120 s: {server.output()}"
            try:
                server.health()
                break
            except OSError:
                time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)


def send(url: str, body: bytes, token: str | None = None) -> tuple[int, dict, Message]:
    """POST ``body`` to the score endpoint at ``url`` (with ``Authorization: Bearer token``):
    the status, the JSON answer and the answer's headers."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + SCORE_PATH, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc), exc.headers


def post(url: str, body: bytes) -> tuple[int, dict]:
    return send(url, body)[:2]


def with_reward(recipe: Path, table: str) -> Path:
    """``recipe`` (a ``toy`` one) with its reward table replaced by ``table``."""
    text = recipe.read_text()
    line = next(line for line in text.splitlines() if line.startswith("reward = "))
    recipe.write_text(text.replace(line, f"reward = {table}"))
    return recipe


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """The recipe RECIPE with its ``rm`` stage finished: a tiny reward model saved where
    ``rlhf run`` would have saved it."""
    root = tmp_path_factory.mktemp("served")
    (root / "served.toml").write_text(RECIPE)
    stage = root / "runs" / "served" / "rm"
    save_tiny_reward_model(stage, PROMPTS + COMPLETIONS + REFERENCES)
    (stage / "stage_state.json").write_text(json.dumps({"status": "finished"}))
    return root / "served.toml"


@pytest.fixture(scope="module")
def server(served) -> Iterator[Server]:
    with reward_server(served, "ppo.reward", "--max-wait-ms", "300") as running:
        yield running


@pytest.fixture(scope="module")
def local(served):
    """The same reward function, built in this process as the server builds it."""
    from rlhf_plugins._engine.recipe import load_recipe
    from rlhf_plugins._engine.registry import load_registry
    from rlhf_plugins._engine.reward_server import served_reward

    registry = load_registry()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(served.parent)  # where the run directory is, as for the server
        reward = served_reward(load_recipe(served, registry), registry, "ppo").reward
        reward(PROMPTS[:1], COMPLETIONS[:1], reference=REFERENCES[:1])  # loads the model
    return reward


def test_remote_scores_equal_local_ones(server, local):
    remote = build_component("reward_function", "remote-reward", url=server.url)
    expected = local(PROMPTS, COMPLETIONS, reference=REFERENCES)
    assert remote(PROMPTS, COMPLETIONS, reference=REFERENCES) == expected
    health = server.health()
    assert health["status"] == "ok" and health["api_version"] == 1
    assert health["reward"]["base"] == {
        "use": "gptj-reward-head",
        "from_stage": "rm",
        "batch_size": 4,
    }
    assert health["source"].startswith("stages.ppo.reward of ")
    startup = server.output()
    assert "serving reward function 'delta-reward'" in startup and server.url in startup


def test_concurrent_requests_are_batched_and_each_gets_its_own_scores(server, local):
    before = server.health()["batching"]
    start = threading.Barrier(len(PROMPTS))
    answers: dict[int, tuple[int, dict]] = {}

    def one(i: int) -> None:
        body = {"prompts": PROMPTS[i:], "completions": COMPLETIONS[i:]}
        body["columns"] = {"reference": REFERENCES[i:]}
        start.wait()
        answers[i] = post(server.url, json.dumps(body).encode())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, (status, answer) in answers.items():
        assert status == 200
        expected = local(PROMPTS[i:], COMPLETIONS[i:], reference=REFERENCES[i:])
        assert answer["scores"] == pytest.approx(expected, abs=1e-5)
    after = server.health()["batching"]
    assert after["requests"] - before["requests"] == len(PROMPTS)
    assert after["batches"] - before["batches"] < len(PROMPTS)
    assert after["largest_batch_requests"] > 1 and after["largest_batch_rows"] <= 32


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"prompts": ["a"', "the body is not valid JSON"),
        (b'{"prompts": ["a"]}', "completions: Field required"),
        (b'["a"]', "the body must be a JSON object"),
        (b'{"prompts": ["a", "b"], "completions": ["x"]}', "1 completions for 2 prompts"),
        (
            b'{"prompts": [1], "completions": ["x"]}',
            "prompts: prompt 0 is int: expected text or a list of {role, content} messages",
        ),
        (
            b'{"prompts": ["a"], "completions": ["x"], "columns": {"reference": []}}',
            "column 'reference' has 0 values for 1 prompts",
        ),
        (b'{"prompts": ["a"], "completion": ["x"]}', "completion: Extra inputs are not permitted"),
    ],
)
def test_a_malformed_request_gets_400_with_a_message(server, body, message):
    status, answer = post(server.url, body)
    assert status == 400 and message in answer["error"], answer


def test_zero_rows_are_answered_without_calling_the_reward_function(server):
    before = server.health()["batching"]["batches"]
    assert post(server.url, b'{"prompts": [], "completions": []}') == (200, {"scores": []})
    assert server.health()["batching"]["batches"] == before


def test_a_failing_reward_function_is_a_500_and_unavailable_to_remote_reward(server):
    body = json.dumps({"prompts": PROMPTS[:2], "completions": COMPLETIONS[:2]}).encode()
    status, answer = post(server.url, body)
    assert status == 500
    assert answer["error"].startswith("the reward function raised UserError: delta-reward needs")
    remote = build_component("reward_function", "remote-reward", url=server.url)
    scores, why = reward_scores(remote, PROMPTS[:2], COMPLETIONS[:2], {})
    assert scores is None and why.startswith("is unavailable (remote-reward: ")
    assert "answered 500 the reward function raised UserError" in why


def test_an_unreachable_server_is_retried_then_a_clear_error():
    from rlhf_builtins.rouge.evaluator import score_with

    url = f"http://127.0.0.1:{free_port()}"
    remote = build_component("reward_function", "remote-reward", url=url, retries=2, backoff=0.1)
    started = time.monotonic()
    with pytest.raises(RewardUnavailable, match=r"unreachable after 3 attempts \(.*refused"):
        remote(["a"], ["b"])
    assert time.monotonic() - started >= 0.3  # 0.1 s, then 0.2 s between the attempts
    with pytest.raises(StageFailed, match="rouge evaluator: the reward function is unavailable"):
        score_with(remote, ["a"], ["b"], {}, batch_size=1)


@contextmanager
def scripted_server(answers: list[bytes], tls: ssl.SSLContext | None = None) -> Iterator[dict]:
    """A TCP server on 127.0.0.1 that reads one request per connection and writes the next of
    ``answers`` raw, then closes; yields ``{"url", "connections"}``."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen = {"url": f"{'https' if tls else 'http'}://127.0.0.1:{listener.getsockname()[1]}"}
    seen["connections"] = 0

    def run() -> None:
        for answer in answers:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            seen["connections"] += 1
            try:
                if tls is not None:
                    conn = tls.wrap_socket(conn, server_side=True)
                conn.recv(65536)
                conn.sendall(answer)
            except OSError:  # the client refused the handshake
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the thread's accept()
        listener.close()
        thread.join(5)


def http_answer(body: bytes, length: int | None = None) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length or len(body)}"
    return head.encode() + b"\r\nConnection: close\r\n\r\n" + body


def test_an_answer_that_breaks_off_is_retried_like_an_unreachable_server():
    truncated = http_answer(b'{"sco', length=100)  # http.client.IncompleteRead
    garbled = b"garbage\r\n\r\n"  # http.client.BadStatusLine
    good = http_answer(b'{"scores": [0.5]}')
    with scripted_server([truncated, garbled, good]) as server:
        remote = build_component(
            "reward_function", "remote-reward", url=server["url"], retries=2, backoff=0
        )
        assert remote(["a"], ["b"]) == [0.5]
        assert server["connections"] == 3
    with scripted_server([truncated, truncated]) as server:
        remote = build_component(
            "reward_function", "remote-reward", url=server["url"], retries=1, backoff=0
        )
        with pytest.raises(RewardUnavailable, match=r"after 2 attempts \(IncompleteRead"):
            remote(["a"], ["b"])


def test_an_untrusted_tls_certificate_fails_at_once_without_retrying(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    make = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [*make, "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"],
        check=True,
        capture_output=True,
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with scripted_server([http_answer(b'{"scores": [0.5]}')] * 4, tls=tls) as server:
        remote = build_component(
            "reward_function", "remote-reward", url=server["url"], retries=3, backoff=1
        )
        started = time.monotonic()
        with pytest.raises(StageFailed, match=r"TLS certificate was not accepted .*self.signed"):
            remote(["a"], ["b"])
        assert time.monotonic() - started < 1  # no backoff: not retried
        assert server["connections"] == 1


def blocking_reward():
    """A reward function (scores: completion lengths) that sets ``calling`` when a call starts
    and returns once ``release`` is set; returns ``(reward, calling, release)``."""
    calling, release = threading.Event(), threading.Event()

    def reward(prompts, completions, **columns):
        calling.set()
        release.wait(10)
        return [float(len(c)) for c in completions]

    return reward, calling, release


def test_a_request_whose_caller_has_gone_is_dropped_and_the_worker_goes_on():
    from rlhf_plugins._engine.reward_api import ScoreRequest
    from rlhf_plugins._engine.reward_server import Batcher

    reward, calling, release = blocking_reward()
    batcher = Batcher(reward, max_batch_size=4, max_wait=0)
    try:
        busy = batcher.submit(ScoreRequest(prompts=["p"], completions=["x"]))
        assert calling.wait(10)
        gone = batcher.submit(ScoreRequest(prompts=["p"], completions=["xx"]))
        kept = batcher.submit(ScoreRequest(prompts=["p"], completions=["xxx"]))
        assert gone.cancel()  # queued behind the busy call: its caller gave up
        release.set()
        assert busy.result(10) == [1.0] and kept.result(10) == [3.0]
    finally:
        batcher.close()
    assert batcher.stats.requests == 2


def test_stopping_finishes_the_call_in_progress_and_answers_the_queued_503():
    from rlhf_plugins._engine.reward_api import ScoreRequest
    from rlhf_plugins._engine.reward_server import Batcher, ScoringError

    reward, calling, release = blocking_reward()
    batcher = Batcher(reward, max_batch_size=1, max_wait=0)
    busy = batcher.submit(ScoreRequest(prompts=["p"], completions=["x"]))
    assert calling.wait(10)
    queued = batcher.submit(ScoreRequest(prompts=["p"], completions=["xx"]))
    batcher.stop()
    late = batcher.submit(ScoreRequest(prompts=["p"], completions=["xxx"]))
    for future in (queued, late):
        with pytest.raises(ScoringError, match="the server is stopping") as stopping:
            future.result(10)  # answered while the call in progress still runs
        assert stopping.value.status == 503
    assert not busy.done()
    release.set()
    batcher.close()
    assert busy.result(0) == [1.0]
    assert batcher.stats.requests == 1 and batcher.stats.batches == 1


def test_ctrl_c_answers_the_request_in_flight_and_the_queued_one_503(toy):
    """A slow reward (2 s a call), batches of one row: request A is being scored, B waits
    behind it; Ctrl-C then lets A finish (200), answers B 503 without scoring it, and the
    server exits 0 having called the reward function once."""
    recipe = with_reward(toy(name="slow"), '{ use = "ppo-toy-reward", delay = 2.0 }')
    body = json.dumps({"prompts": ["p"], "completions": ["a"], "columns": {"reference": ["r"]}})
    answers: dict[str, tuple[int, dict]] = {}
    with reward_server(recipe, "ppo", "--max-batch-size", "1", "--max-wait-ms", "0") as server:

        def send(name: str) -> None:
            answers[name] = post(server.url, body.encode())

        first = threading.Thread(target=send, args=("in flight",))
        first.start()
        time.sleep(0.5)
        second = threading.Thread(target=send, args=("queued",))
        second.start()
        time.sleep(0.5)
        started = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        first.join(30)
        second.join(30)
        assert server.process.wait(timeout=30) == 0
        assert time.monotonic() - started < 3.5  # the queued request was not scored (2 s)
    assert answers["in flight"] == (200, {"scores": [pytest.approx(0.5)]})
    assert answers["queued"] == (503, {"error": "the server is stopping"})
    assert "stopped; scored: requests 1, rows 1, calls 1" in server.output()


def test_a_served_reward_that_is_unavailable_is_a_500_saying_so():
    from rlhf_plugins._engine.reward_api import ScoreRequest
    from rlhf_plugins._engine.reward_server import Batcher, ScoringError

    def reward(prompts, completions, **columns):
        raise RewardUnavailable("upstream down")

    batcher = Batcher(reward, max_batch_size=4, max_wait=0)
    try:
        future = batcher.submit(ScoreRequest(prompts=["p"], completions=["x"]))
        with pytest.raises(ScoringError, match=r"is unavailable \(upstream down\)") as failed:
            future.result(10)
        assert failed.value.status == 500
    finally:
        batcher.close()
    assert batcher.stats.failed_batches == 1


def test_the_served_reward_is_built_with_the_run_hooks(served, monkeypatch):
    from rlhf_plugins._engine.building import Builder
    from rlhf_plugins._engine.recipe import load_recipe
    from rlhf_plugins._engine.registry import load_registry
    from rlhf_plugins._engine.reward_server import served_reward

    contexts = []
    monkeypatch.setattr(
        Builder, "component", lambda self, kind, table, stage: contexts.append(stage)
    )
    monkeypatch.chdir(served.parent)
    registry = load_registry()
    served_reward(load_recipe(served, registry), registry, "ppo")
    assert contexts[0].hooks is registry.hooks and contexts[0].name == "ppo"


def test_a_target_names_a_slot_or_a_reward_function_nested_in_one(served):
    from rlhf_plugins._engine.recipe import load_recipe
    from rlhf_plugins._engine.registry import load_registry
    from rlhf_plugins._engine.reward_server import reward_table

    registry = load_registry()
    recipe = load_recipe(served, registry)
    where, table = reward_table(recipe, registry, "ppo")
    assert where == "stages.ppo.reward" and table["use"] == "delta-reward"
    where, table = reward_table(recipe, registry, "ppo.reward.base")
    assert where == "stages.ppo.reward.base" and table["use"] == "gptj-reward-head"


def test_serve_reward_refuses_what_it_cannot_serve(served, run_cli):
    result = run_cli("serve-reward", served, "ppx")
    assert result.exit_code == 2 and "no stage 'ppx'; did you mean 'ppo'?" in result.output
    result = run_cli("serve-reward", served, "ppo.rewards")
    assert result.exit_code == 2 and "(it has: ppo.reward)" in result.output
    result = run_cli("serve-reward", served, "ppo.reward.bas")
    assert result.exit_code == 2 and "'delta-reward' has no reward function 'bas'" in result.output
    result = run_cli("serve-reward", served, "rm")
    assert result.exit_code == 2 and "stage 'rm' has no reward function" in result.output
    result = run_cli("serve-reward", served, "ppo", "--set", 'recipe.output_dir="elsewhere"')
    assert result.exit_code == 2 and "reads stage 'rm', which has not finished" in result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        runs = f'recipe.output_dir="{served.parent / "runs"}"'
        result = run_cli("serve-reward", served, "ppo", "--port", port, "--set", runs)
    assert result.exit_code == 2 and "cannot listen on 127.0.0.1:" in result.output


def test_a_port_in_use_leaves_no_socket_open():
    import gc
    import warnings

    from rlhf_plugins._engine.errors import UserError
    from rlhf_plugins._engine.reward_server import listening_socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            with pytest.raises(UserError, match=r"cannot listen on 127\.0\.0\.1:"):
                listening_socket("127.0.0.1", taken.getsockname()[1])
            gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_server_that_fails_to_start_closes_its_socket_and_stops_its_worker(monkeypatch):
    from rlhf_plugins._engine import reward_server
    from rlhf_plugins._engine.reward_server import ServedReward, serve

    opened = []

    def listening(host, port):
        opened.append(reward_server.socket.create_server((host, port)))
        return opened[-1]

    def broken_app(served, batcher, **options):
        raise RuntimeError("no app")

    monkeypatch.setattr(reward_server, "listening_socket", listening)
    monkeypatch.setattr(reward_server, "create_app", broken_app)
    served = ServedReward(lambda prompts, completions, **c: [0.0] * len(c), {"use": "x"}, "here")
    with pytest.raises(RuntimeError, match="no app"):
        serve(served, host="127.0.0.1", port=0, max_batch_size=4, max_wait_ms=0, echo=print)
    assert opened[0].fileno() == -1  # closed
    assert not [t for t in threading.enumerate() if t.name == "reward-worker"]


def test_ppo_keeps_its_run_when_the_reward_server_fails_and_dies(toy, run_cli, tmp_path, caplog):
    """The server's reward raises at its call 2 (a 500: the chunk is skipped and counted) and
    the server dies at call 5 (after checkpoint-4: unreachable, retried, skipped, then the
    stage fails with its checkpoints); restarted, the rerun resumes and finishes."""
    scorer = toy(name="scorer")  # its ppo.reward is ppo-toy-reward
    port = free_port()
    remote = (
        f'{{ use = "remote-reward", url = "http://127.0.0.1:{port}", retries = 1, backoff = 0.05 }}'
    )
    recipe = with_reward(toy(name="remote"), remote)
    limit = "stages.ppo.trainer_settings.max_skipped_chunks=2"
    faults = {"PPO_TOY_FAIL_AT_CALL": "2", "PPO_TOY_EXIT_AT_CALL": "5"}
    with reward_server(scorer, "ppo", port=port, env=faults) as server:
        with caplog.at_level(logging.WARNING, logger="rlhf_builtins.ppo"):
            result = run_cli("run", recipe, "--set", limit)
        assert server.process.wait(timeout=30) == 1
    assert result.exit_code == 1
    assert "unusable scores for 2 chunks in a row (max_skipped_chunks)" in result.output
    assert "raised RuntimeError: interrupted at reward call 2)); 1 skipped so far" in caplog.text
    assert "unreachable after 2 attempts" in caplog.text and "3 skipped so far" in caplog.text
    out = tmp_path / "runs" / "remote" / "ppo"
    assert json.loads((out / "stage_state.json").read_text())["status"] == "failed"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    with reward_server(scorer, "ppo", port=port) as server:
        result = run_cli("run", recipe, "--set", limit)
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=30) == 0
    assert "stopped; scored: requests 2, rows 8, calls 2" in server.output()
    assert result.exit_code == 0 and "resuming" in result.output
    final = json.loads((out / "stage_state.json").read_text())["metrics"]
    assert final["resumed_from_step"] == 4 and final["steps"] == 8
    assert final["skipped_chunks"] == 1  # the 500 before the checkpoint


TOKEN = "Zm9vYmFy-test-token_0123456789"
ZERO_ROWS = b'{"prompts": [], "completions": []}'


@pytest.fixture(scope="module")
def token_server(served) -> Iterator[Server]:
    """``served``'s ``ppo.reward`` on every address behind ``TOKEN``, read from a
    ``--token-file``, which wins over ``$RLHF_REWARD_TOKEN`` (``"ignored"``)."""
    token_file = served.parent / "token"
    token_file.write_text(TOKEN + "\n")
    args = ("--host", "0.0.0.0", "--token-file", str(token_file))
    with reward_server(served, "ppo.reward", *args, env={"RLHF_REWARD_TOKEN": "ignored"}) as up:
        yield up


def refusals(server: Server) -> int:
    return server.output().count("(401: ")


def test_a_token_server_answers_401_without_the_token_and_never_shows_it(token_server, local):
    rows = {"prompts": PROMPTS[:2], "completions": COMPLETIONS[:2]}
    body = json.dumps({**rows, "columns": {"reference": REFERENCES[:2]}}).encode()
    status, answer, headers = send(token_server.url, body)
    assert (status, headers["WWW-Authenticate"]) == (401, "Bearer")
    assert answer == {"error": "a token is required: send Authorization: Bearer <token>"}
    # 2 MiB that is not JSON: refused before the body is parsed (else a 400)
    status, answer, headers = send(token_server.url, b"{" * 2**21, token=TOKEN[:-1])
    assert (status, answer) == (401, {"error": "the token was not accepted"})
    assert headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    status, answer, _ = send(token_server.url, body, token=TOKEN)
    expected = local(PROMPTS[:2], COMPLETIONS[:2], reference=REFERENCES[:2])
    assert status == 200 and answer["scores"] == pytest.approx(expected, abs=1e-5)
    assert send(token_server.url, ZERO_ROWS, token="ignored")[0] == 401  # the file won
    assert token_server.health()["status"] == "ok"  # open: no token
    output = token_server.output()
    token_file = token_server.log.with_name("token")
    assert (
        f"/v1/score needs Authorization: Bearer <the token from --token-file {token_file}>"
        in output
    )
    assert re.search(r"refused POST /v1/score from 127\.0\.0\.1:\d+ \(401: no token\)", output)
    assert "(401: wrong token)" in output and TOKEN[:-1] not in output  # nor TOKEN
    assert "warning" not in output  # 0.0.0.0 with a token


def test_remote_reward_sends_the_token_from_its_variable_and_never_retries_a_401(
    token_server, local, monkeypatch
):
    url = token_server.url
    remote = build_component(
        "reward_function", "remote-reward", url=url, token_env="SERVED_TOKEN", backoff=5
    )
    monkeypatch.setenv("SERVED_TOKEN", TOKEN)
    expected = local(PROMPTS, COMPLETIONS, reference=REFERENCES)
    assert remote(PROMPTS, COMPLETIONS, reference=REFERENCES) == expected
    before, started = refusals(token_server), time.monotonic()
    monkeypatch.setenv("SERVED_TOKEN", "not-" + TOKEN)
    refused = f"^remote-reward: the reward server at {re.escape(url)} refused the token"
    with pytest.raises(StageFailed, match=refused + r" from \$SERVED_TOKEN \(401\)$"):
        remote(PROMPTS, COMPLETIONS, reference=REFERENCES)
    monkeypatch.delenv("SERVED_TOKEN")
    with pytest.raises(StageFailed, match=r"at \S+ requires a token: set \$SERVED_TOKEN \(401\)$"):
        remote(PROMPTS, COMPLETIONS, reference=REFERENCES)
    assert time.monotonic() - started < 5  # no backoff
    assert refusals(token_server) == before + 2  # one request each: not retried


def test_rlhf_run_fails_the_stage_when_the_reward_server_wants_a_token(
    token_server, toy, run_cli, monkeypatch
):
    monkeypatch.delenv("RLHF_REWARD_TOKEN", raising=False)
    remote = f'{{ use = "remote-reward", url = "{token_server.url}", retries = 3, backoff = 5 }}'
    recipe = with_reward(toy(name="refused"), remote)
    before = refusals(token_server)
    result = run_cli("run", recipe)
    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if "401" in line] == [
        f"error: remote-reward: the reward server at {token_server.url} requires a token: "
        "set $RLHF_REWARD_TOKEN (401)"
    ]
    assert refusals(token_server) == before + 1


def test_serve_reward_needs_a_token_to_listen_beyond_loopback(served, run_cli, monkeypatch):
    from rlhf_plugins._engine.reward_server import server_token

    monkeypatch.delenv("RLHF_REWARD_TOKEN", raising=False)
    unbuilt = ["--set", 'recipe.output_dir="elsewhere"']  # fails at the build, after the checks
    for host in ("0.0.0.0", "::", "10.0.0.5", "reward.example"):
        result = run_cli("serve-reward", served, "ppo", "--host", host, *unbuilt)
        assert result.exit_code == 2 and result.output.splitlines() == [
            f"error: refusing to listen on {host} without a token: set $RLHF_REWARD_TOKEN here "
            'and on the clients (make one with python -c "import secrets; '
            'print(secrets.token_urlsafe(32))") or pass --token-file FILE; --insecure listens '
            "without one"
        ]
    for host in ("127.0.0.2", "::1", "localhost"):
        result = run_cli("serve-reward", served, "ppo", "--host", host, *unbuilt)
        assert result.exit_code == 2 and "reads stage 'rm', which has not finished" in result.output
    empty = served.parent / "empty-token"
    empty.write_text("\n")
    problems = {
        ("--token-file", empty): f"error: --token-file {empty} is empty; write a token into it",
        ("--token-file", empty.with_name("none")): "none: cannot read it (No such file",
        ("--token-file", served.parent): ": cannot read it (Is a directory)",
    }
    for args, message in problems.items():
        result = run_cli("serve-reward", served, "ppo", *args, *unbuilt)
        assert result.exit_code == 2 and len(result.output.splitlines()) == 1, result.output
        assert message in result.output
    for value, message in [("", " is set but empty"), ("a b", " must be visible ASCII")]:
        monkeypatch.setenv("RLHF_REWARD_TOKEN", value)
        result = run_cli("serve-reward", served, "ppo", *unbuilt)
        assert result.exit_code == 2 and len(result.output.splitlines()) == 1, result.output
        assert "$RLHF_REWARD_TOKEN" + message in result.output
    token = server_token(None, {"RLHF_REWARD_TOKEN": TOKEN})  # as the file's (token_server)
    assert (token.value, token.source) == (TOKEN, "$RLHF_REWARD_TOKEN") and TOKEN not in repr(token)


def test_insecure_lets_it_listen_on_every_address_without_a_token(served, monkeypatch):
    monkeypatch.delenv("RLHF_REWARD_TOKEN", raising=False)
    with reward_server(served, "ppo.reward", "--host", "0.0.0.0", "--insecure") as server:
        assert post(server.url, ZERO_ROWS) == (200, {"scores": []})
    assert (
        "warning: listening on 0.0.0.0 without a token (--insecure): anyone who can reach it "
        "can score"
    ) in server.output()
