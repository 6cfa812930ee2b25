"""The ``grpo`` stage vs TRL's ``GRPOTrainer`` called directly in a script, on the same work.

Work (both sides, each run in a fresh process, one thread, fp32): a random 4-layer x 128 GPT-2
policy and a 2 x 64 GPT-2 reward model saved in a temporary directory with a byte-level BPE
tokenizer; 64 prompts of the project's synthetic TL;DR data (``tldr-synthetic``, view
``prompts``) as a jsonl file; the reward ``delta-reward`` over ``gptj-reward-head`` (the same
objects on both sides); GRPO for 32 steps of 16 completions (4 prompts x 4), at most 24 new
tokens, beta 0.04 (TRL loads the reference from the policy's directory), a checkpoint every 16
steps and the final model and tokenizer saved.

- stage: ``rlhf run recipe.toml`` (a one-stage recipe; the run's report and summary included);
- direct: this script's ``--direct`` child, which builds the same ``GRPOConfig`` the stage does
  (``rlhf_plugins._engine.hf.training_arguments``' defaults: seed, data seed, logging, checkpoints,
  no reporting, single process) and calls ``GRPOTrainer(...).train()`` and ``save_model``.

Reported per side (median of ``--repeats`` alternating runs): the process wall time (imports,
and for the stage the recipe's validation, its state files and report, all included) and the
process's peak RSS (ru_maxrss from ``wait4``), with stage/direct ratios (target: wall at most
1.05x). A span inside the processes is not compared: the two import TRL at different points.

    python bench/trl_wrapper_overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from tables import print_table
from tiny_rl import child_env, measured, save_tiny_work

STEPS, BATCH, GENERATIONS, NEW_TOKENS, BETA, SAVE_STEPS = 32, 16, 4, 24, 0.04, 16
SETTINGS = {
    "max_steps": STEPS,
    "per_device_train_batch_size": BATCH,
    "num_generations": GENERATIONS,
    "max_completion_length": NEW_TOKENS,
    "beta": BETA,
    "learning_rate": 1e-4,
    "logging_steps": 1,
    "save_steps": SAVE_STEPS,
}
"""The recipe's trainer_settings; the direct child passes the same to GRPOConfig."""

RECIPE = """
[recipe]
name = "overhead"
seed = 7

[stages.grpo]
trainer = "grpo"
policy = {{ use = "hf-causal-lm", model = "policy" }}
dataset = {{ use = "jsonl", path = "prompts.jsonl" }}
reward = {{ use = "delta-reward", base = {{ use = "gptj-reward-head", path = "rm", batch_size = 64, max_length = 128 }} }}

[stages.grpo.trainer_settings]
{settings}
"""


def prepare(work: Path) -> None:
    """The prompts (jsonl), a policy and a reward model (save_pretrained) and the recipe."""
    save_tiny_work(work)
    lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in SETTINGS.items())
    (work / "recipe.toml").write_text(RECIPE.format(settings=lines))


def direct(work: Path) -> None:
    """TRL's GRPOTrainer as a script calls it, with the config the stage builds."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rlhf_builtins.reward.normalizers import DeltaReward
    from rlhf_builtins.reward.scoring import RewardHead

    reward = DeltaReward(RewardHead(str(work / "rm"), batch_size=64, max_length=128, device="cpu"))
    tokenizer = AutoTokenizer.from_pretrained(work / "policy")
    model = AutoModelForCausalLM.from_pretrained(work / "policy")
    data = load_dataset("json", data_files=str(work / "prompts.jsonl"), split="train")
    out = work / "direct"
    config = GRPOConfig(
        output_dir=str(out),
        seed=7,
        data_seed=7,
        report_to=[],
        logging_first_step=True,
        save_strategy="steps",
        save_total_limit=2,
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        activation_checkpointing=False,
        lr_scheduler_type="linear",
        **SETTINGS,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per side")
    parser.add_argument("--direct", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct:
        direct(args.direct)
        return
    env = child_env()
    sides: dict[str, dict[str, list[float]]] = {
        side: {"wall": [], "rss": []} for side in ("stage", "direct")
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work)
        stage_cmd = [sys.executable, "-m", "rlhf_plugins.cli", "run", "recipe.toml", "--force"]
        direct_cmd = [sys.executable, str(Path(__file__).resolve()), "--direct", str(work)]
        commands = {"stage": stage_cmd, "direct": direct_cmd}
        for _ in range(args.repeats):
            for side, command in commands.items():
                wall, rss = measured(command, work, env)
                sides[side]["wall"].append(wall)
                sides[side]["rss"].append(rss)
    median = {
        side: {k: statistics.median(v) for k, v in got.items()} for side, got in sides.items()
    }
    print(
        f"grpo stage vs GRPOTrainer called directly: {STEPS} steps x {BATCH} completions "
        f"({BATCH // GENERATIONS} prompts x {GENERATIONS}), <= {NEW_TOKENS} new tokens, "
        f"beta {BETA}, 4x128 GPT-2 policy, delta-reward over a 2x64 reward model; one thread; "
        f"median of {args.repeats}\n"
    )
    rows = [("side", "process wall s", "peak RSS MiB")]
    for side in ("stage", "direct"):
        rows.append((side, f"{median[side]['wall']:.1f}", f"{median[side]['rss']:.0f}"))
    s, d = median["stage"], median["direct"]
    rows.append(("stage / direct", f"{s['wall'] / d['wall']:.3f}x", f"{s['rss'] / d['rss']:.3f}x"))
    print_table(rows[0], rows[1:])
    print(f"\ncommand: python bench/{Path(__file__).name} --repeats {args.repeats}")


if __name__ == "__main__":
    main()
