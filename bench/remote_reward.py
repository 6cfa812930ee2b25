"""Scores/s of one reward function called in this process vs through ``rlhf serve-reward``
(``remote-reward`` over HTTP on 127.0.0.1), at batch sizes 1, 8 and 32.

The reward function is ``gptj-reward-head`` on a random tiny GPT-J reward model built from
config (``--layers`` x ``--hidden``), scoring ``tldr-synthetic`` prompt + summary rows. The
server is started through the CLI (``--max-batch-size 32 --max-wait-ms 5``); "local" calls
the same recipe table built in this process. Each figure is rows / wall time of scoring ``--rows`` rows
``batch`` at a time, by one caller, and, for the server, by ``--clients`` callers at once
(whose requests the server joins into one call); the best of ``--repeats`` runs.

    python bench/remote_reward.py [--layers 8] [--hidden 512] [--rows 256] [--clients 4]
                                  [--threads 1] [--repeats 3] [--max-wait-ms 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

RECIPE = """
[recipe]
name = "bench"

[stages.ppo]
trainer = "ppo"
policy = {{ use = "hf-causal-lm", model = "{model}" }}
dataset = {{ use = "tldr-synthetic", view = "prompts" }}
reward = {{ use = "gptj-reward-head", path = "{model}", batch_size = 32, max_length = 256 }}
"""
BATCH_SIZES = (1, 8, 32)


def build_reward_model(root: Path, data, layers: int, hidden: int) -> Path:
    """A random reward model on a tiny GPT-J trunk, saved as a ``reward-model`` stage saves
    one, with a tokenizer trained on ``data``."""
    from rlhf_builtins.reward.models import load_reward_model
    from rlhf_plugins import StageContext
    from rlhf_plugins._engine.factories import describe
    from rlhf_plugins._engine.registry import load_registry

    stage = StageContext(
        recipe_name="bench",
        name="rm",
        output_dir=root / "rm",
        seed=0,
        config={},
        components={"dataset": data},
    )
    factory = load_registry().get("policy", "tiny-causal-lm").factory
    shape = {
        "architecture": "gptj",
        "n_layer": layers,
        "n_embd": hidden,
        "n_head": 8,
        "vocab_size": 1024,
        "max_positions": 512,
    }
    policy = factory(stage=stage, **describe(factory).arguments_for(shape, root))
    tokenizer = policy.load_tokenizer()
    load_reward_model(policy, tokenizer).save_pretrained(stage.output_dir)
    tokenizer.save_pretrained(stage.output_dir)
    return stage.output_dir


def rate(score, prompts: list[str], completions: list[str], batch: int, callers: int) -> float:
    """Rows per second of scoring every row ``batch`` at a time, split over ``callers``
    threads."""

    def work(part: range) -> None:
        for start in part:
            score(prompts[start : start + batch], completions[start : start + batch])

    starts = range(0, len(prompts), batch)
    threads = [threading.Thread(target=work, args=(starts[i::callers],)) for i in range(callers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(prompts) / (time.perf_counter() - started)


def start_server(recipe: Path, port: int, threads: int, wait_ms: float) -> subprocess.Popen:
    command = [sys.executable, "-m", "rlhf_plugins.cli", "serve-reward", str(recipe), "ppo"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    server = subprocess.Popen(
        [*command, "--port", str(port), "--max-batch-size", "32", "--max-wait-ms", str(wait_ms)],
        cwd=recipe.parent,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=5).close()
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on each side")
    parser.add_argument("--repeats", type=int, default=3, help="the best of this many runs")
    parser.add_argument("--port", type=int, default=8771)
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's wait")
    args = parser.parse_args()

    import datasets
    import torch
    import transformers

    from rlhf_plugins._engine.recipe import load_recipe
    from rlhf_plugins._engine.registry import load_registry
    from rlhf_plugins._engine.reward_server import served_reward

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    registry = load_registry()
    data = registry.get("dataset", "tldr-synthetic").factory(
        view="comparisons", split="train", num_examples=args.rows
    )
    prompts, completions = list(data["prompt"]), list(data["chosen"])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_reward_model(root, data, args.layers, args.hidden)
        recipe = root / "bench.toml"
        recipe.write_text(RECIPE.format(model=model))
        local = served_reward(load_recipe(recipe, registry), registry, "ppo").reward
        remote = registry.get("reward_function", "remote-reward").factory(
            url=f"http://127.0.0.1:{args.port}", batch_size=32
        )
        server = start_server(recipe, args.port, args.threads, args.max_wait_ms)
        try:
            rows = []
            for score in (local, remote):
                score(prompts[:4], completions[:4])  # loads the model
            for batch in BATCH_SIZES:
                best = [
                    max(rate(score, prompts, completions, batch, n) for _ in range(args.repeats))
                    for score, n in ((local, 1), (remote, 1), (remote, args.clients))
                ]
                rows.append((batch, *best))
            with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/v1/health") as answer:
                batching = json.load(answer)["batching"]
        finally:
            server.terminate()
            server.wait()
    print(f"python bench/remote_reward.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"\ngptj-reward-head, {args.layers}x{args.hidden} GPT-J, {args.rows} rows, "
        f"{args.threads} torch thread(s) per process, server --max-wait-ms {args.max_wait_ms:g}\n"
    )
    header = ["batch", "local scores/s", "remote scores/s", "remote / local"]
    header.append(f"remote, {args.clients} clients, scores/s")
    for row in [header, ["---"] * len(header)]:
        print("| " + " | ".join(row) + " |")
    for batch, here, there, many in rows:
        print(f"| {batch} | {here:.1f} | {there:.1f} | {there / here:.2f} | {many:.1f} |")
    print(
        f"\nserver: {batching['requests']} requests in {batching['batches']} calls, "
        f"at most {batching['largest_batch_requests']} requests joined"
    )


if __name__ == "__main__":
    main()
