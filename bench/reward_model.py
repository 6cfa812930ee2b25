"""Reward modelling, measured.

1. Training speed: our ``reward-model`` trainer vs TRL's ``RewardTrainer`` on the same tiny
   GPT-J trunk, the same ``tldr-synthetic`` comparisons, batch size and number of steps, with no
   layer frozen (TRL's default) and with the bottom 70% frozen (ours; applied to TRL's model
   too). TRL runs without gradient checkpointing (as ours) and with its default (on).
   Pairs/s is ``train_samples_per_second`` of each Trainer (whole training loop).
2. Scoring throughput of the ``gptj-reward-head`` reward function per batch size.

    python bench/reward_model.py [--steps 30] [--batch-size 16] [--layers 4] [--hidden 128]
                                 [--threads 1] [--repeats 2]

On a shared machine keep ``--threads`` at 1 and compare rows of the same run only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import datasets
import torch
import transformers
from tables import print_table
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer

from rlhf_plugins import StageContext
from rlhf_plugins._engine.registry import load_registry


def build_trunk(registry, root: Path, data, layers: int, hidden: int) -> Path:
    """A tiny GPT-J with a tokenizer trained on ``data``, saved as a causal LM directory."""
    stage = StageContext(
        recipe_name="bench",
        name="trunk",
        output_dir=root / "trunk",
        seed=0,
        config={},
        components={"dataset": data},
    )
    policy = registry.get("policy", "tiny-causal-lm").factory(
        stage=stage,
        architecture="gptj",
        n_layer=layers,
        n_embd=hidden,
        n_head=4,
        vocab_size=1024,
        max_positions=512,
    )
    policy.load_model().save_pretrained(stage.output_dir)
    policy.load_tokenizer().save_pretrained(stage.output_dir)
    return stage.output_dir


def ours(registry, root: Path, trunk: Path, data, args, freeze: float) -> float:
    policy = registry.get("policy", "hf-causal-lm").factory(model=str(trunk))
    run = registry.get("trainer", "reward-model").factory(
        policy=policy,
        dataset=data,
        max_steps=args.steps,
        freeze_fraction=freeze,
        per_device_train_batch_size=args.batch_size,
        max_length=512,
        learning_rate=1e-4,
        logging_steps=args.steps,
        save_steps=10 * args.steps,
    )
    stage = StageContext(
        recipe_name="bench",
        name=f"ours-{freeze}-{time.monotonic_ns()}",
        output_dir=root / f"ours-{time.monotonic_ns()}",
        seed=0,
        config={},
    )
    run(stage)
    records = [json.loads(line) for line in stage.metrics_path.read_text().splitlines()]
    return next(r["train_samples_per_second"] for r in records if "train_samples_per_second" in r)


def trl(root: Path, trunk: Path, data, args, freeze: float, checkpointing: bool) -> float:
    from rlhf_builtins.reward.models import freeze_bottom

    model = AutoModelForSequenceClassification.from_pretrained(trunk, num_labels=1)
    freeze_bottom(model, freeze)
    config = RewardConfig(
        output_dir=str(root / f"trl-{time.monotonic_ns()}"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        max_length=512,
        learning_rate=1e-4,
        logging_steps=args.steps,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(trunk),
    )
    return trainer.train().metrics["train_samples_per_second"]


TRL_PLAIN = "TRL RewardTrainer"
TRL_DEFAULT = "TRL RewardTrainer, default gradient checkpointing"


def training_speed(registry, root: Path, trunk: Path, data, args) -> None:
    rows = []
    for freeze in (0.0, 0.7):
        runs = {
            "ours": lambda f=freeze: ours(registry, root, trunk, data, args, f),
            TRL_PLAIN: lambda f=freeze: trl(root, trunk, data, args, f, checkpointing=False),
            TRL_DEFAULT: lambda f=freeze: trl(root, trunk, data, args, f, checkpointing=True),
        }
        best = dict.fromkeys(runs, 0.0)
        for _ in range(args.repeats):  # interleaved, the best of each (shared machine)
            for name, run in runs.items():
                best[name] = max(best[name], run())
        for name, speed in best.items():
            ratio = speed / best[TRL_PLAIN]
            rows.append([name, f"{freeze:.0%}", f"{speed:.1f}", f"{ratio:.2f}x"])
    print(
        f"1. Reward-model training: GPT-J {args.layers}x{args.hidden}, {args.steps} steps of "
        f"{args.batch_size} pairs, {args.threads} thread(s), best of {args.repeats}"
    )
    print_table(["trainer", "frozen", "pairs/s", "vs TRL"], rows)


def scoring_speed(registry, root: Path, trunk: Path, data, args) -> None:
    run = registry.get("trainer", "reward-model").factory(
        policy=registry.get("policy", "hf-causal-lm").factory(model=str(trunk)),
        dataset=data,
        max_steps=1,
        per_device_train_batch_size=2,
        save_steps=10,
    )
    stage = StageContext(recipe_name="bench", name="rm", output_dir=root / "rm", seed=0, config={})
    run(stage)
    prompts, completions = data["prompt"], data["chosen"]
    rows = []
    for batch_size in (1, 8, 32):
        score = registry.get("reward_function", "gptj-reward-head").factory(
            path=str(stage.output_dir), batch_size=batch_size, max_length=512
        )
        score(prompts[:4], completions[:4])  # load the model
        started = time.perf_counter()
        score(prompts, completions)
        rate = len(prompts) / (time.perf_counter() - started)
        rows.append([str(batch_size), str(len(prompts)), f"{rate:.1f}"])
    print(f"\n2. gptj-reward-head scoring (prompt + summary, {args.threads} thread(s))")
    print_table(["batch size", "samples", "samples/s"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--samples", type=int, default=256, help="rows scored in part 2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    registry = load_registry()
    make_data = registry.get("dataset", "tldr-synthetic").factory
    pairs = make_data(view="comparisons", split="train", num_examples=args.steps * args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        trunk = build_trunk(registry, root, pairs, args.layers, args.hidden)
        training_speed(registry, root, trunk, pairs, args)
        scoring_speed(
            registry, root, trunk, pairs.select(range(min(args.samples, len(pairs)))), args
        )


if __name__ == "__main__":
    main()
