"""Throughput of ``ppo`` and ``sft`` on 1 and 2 CPU ranks: the efficiency of the second rank.

Work: the 8 layers x 512 model of ``bench/ppo_vs_trl.py`` (GPT-2 shape, random init, a local
BPE tokenizer of 4096 tokens) on the project's synthetic TL;DR data, through ``rlhf run`` and
its launcher (``--num-processes N``), one thread per rank (``OMP_NUM_THREADS=1``):

- ``ppo``: per rank and update, 16 sampled responses of at most 24 tokens, scored by a reward
  model of the same shape, 4 PPO epochs of one minibatch of 16 (every layer trained against a
  full frozen copy). Figure: the median of the logged ``samples_per_s`` (all ranks' samples
  over the wall time of the update), the first update left out (warm-up).
- ``sft``: batches of 8 rows of at most 128 tokens per rank. Figure: rows per second between
  the logged step 10 and the last step (``metrics.jsonl`` times), so start-up is left out.

Each rank does the same work (weak scaling): ideal is twice the samples/s on two ranks;
efficiency = samples/s(2) / (2 x samples/s(1)). Two ranks on a 2-core machine leave no core
for anything else: run it on an idle machine.

    python bench/scaling.py            # 4 PPO updates, 60 SFT steps per run
    python bench/scaling.py --quick    # smoke run: 2x128 model, fewer steps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RECIPE = """\
[recipe]
name = "scaling"
seed = 0

[stages.reward_model]
trainer = "reward-model"
policy = {{ use = "tiny-causal-lm", {model} }}
dataset = {{ use = "tldr-synthetic", view = "comparisons", split = "train", num_examples = 256 }}

[stages.reward_model.trainer_settings]
max_steps = 1
per_device_train_batch_size = 4
max_length = 128

[stages.ppo]
trainer = "ppo"
needs = ["reward_model"]
policy = {{ use = "tiny-causal-lm", {model} }}
reward = {{ use = "gptj-reward-head", from_stage = "reward_model", batch_size = 16, max_length = 128 }}
dataset = {{ use = "tldr-synthetic", view = "prompts", split = "train", num_examples = 512 }}

[stages.ppo.trainer_settings]
max_steps = {ppo_steps}
num_rollouts = 16
chunk_size = 16
per_device_train_batch_size = 16
ppo_epochs = 4
num_layers_unfrozen = -1
kl_controller = "fixed"
init_kl_coef = 0.05
vf_coef = 0.1
max_new_tokens = 24
do_sample = true
learning_rate = 3e-6
logging_steps = 4
save_steps = 1000

[stages.sft]
trainer = "sft"
policy = {{ use = "tiny-causal-lm", {model} }}
dataset = {{ use = "tldr-synthetic", view = "sft", split = "train", num_examples = 2000 }}

[stages.sft.trainer_settings]
max_steps = {sft_steps}
per_device_train_batch_size = 8
max_length = 128
logging_steps = 10
save_steps = 1000
"""
MODELS = {
    "8x512": 'architecture = "gpt2", n_layer = 8, n_embd = 512, n_head = 8, vocab_size = 4096',
    "2x128": 'architecture = "gpt2", n_layer = 2, n_embd = 128, n_head = 4, vocab_size = 4096',
}


def rlhf(work: Path, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "rlhf_plugins.cli", "run", "recipe.toml", *args]
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def records(work: Path, stage: str) -> list[dict]:
    lines = (work / "runs" / "scaling" / stage / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def ppo_samples_per_s(work: Path) -> float:
    rates = [r["samples_per_s"] for r in records(work, "ppo") if "samples_per_s" in r]
    return statistics.median(rates[1:] or rates)


def sft_samples_per_s(work: Path, ranks: int) -> float:
    logged = [r for r in records(work, "sft") if "loss" in r and "time" in r]
    first = next(r for r in logged if r["step"] >= 10)
    last = logged[-1]
    rows = (last["step"] - first["step"]) * 8 * ranks
    return rows / (last["time"] - first["time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2x128 model, fewer steps")
    args = parser.parse_args()
    size = "2x128" if args.quick else "8x512"
    ppo_steps, sft_steps = (8, 30) if args.quick else (16, 60)
    command = "python bench/scaling.py" + " --quick" * args.quick
    figures: dict[str, dict[int, float]] = {"ppo": {}, "sft": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "recipe.toml").write_text(
            RECIPE.format(model=MODELS[size], ppo_steps=ppo_steps, sft_steps=sft_steps)
        )
        rlhf(work, "--only", "reward_model")
        for ranks in (1, 2):
            for stage in ("ppo", "sft"):
                rlhf(work, "--only", stage, "--force", "--num-processes", str(ranks))
            figures["ppo"][ranks] = ppo_samples_per_s(work)
            figures["sft"][ranks] = sft_samples_per_s(work, ranks)
    print(f"model {size}, one thread per rank, `{command}` (os.cpu_count() = {os.cpu_count()})\n")
    print("| stage | samples/s, 1 rank | samples/s, 2 ranks | speed-up | efficiency |")
    print("|---|---|---|---|---|")
    for stage, by_ranks in figures.items():
        speedup = by_ranks[2] / by_ranks[1]
        print(
            f"| {stage} | {by_ranks[1]:.2f} | {by_ranks[2]:.2f} | {speedup:.2f}x "
            f"| {100 * speedup / 2:.0f}% |"
        )


if __name__ == "__main__":
    main()
