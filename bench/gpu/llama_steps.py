"""PPO and GRPO steps on a Llama of more than 1B parameters: completions/s and peak GPU memory
per trainer, one table.

The policy is Llama-3.2-1B's shape (16 layers, hidden 2048, MLP 8192, 32 heads, 8 key-value
heads, tied embeddings) with SmolLM2's tokenizer (vocabulary 49,152): 1.07 B parameters,
random init from the config, saved in bfloat16, loaded with ``dtype = "bfloat16"`` and
``attn_implementation = "sdpa"`` under ``[launch] mixed_precision = "bf16"`` (a random policy
learns nothing: this measures speed and memory, not quality). The reward is the SmolLM2 reward
model that ``bench/real_tldr.py`` trained (``--reward``), the prompts the split's SFT train
posts (``--prompts``, the folder ``data/sft`` of that bench's work dir). Each trainer is one
``rlhf run`` of a one-stage recipe in this process, so ``torch.cuda.max_memory_allocated``
(reset before each) is the stage's peak; the rates leave the first update out (it also warms
CUDA up): PPO's last update's ``samples_per_s`` (rollout + optimisation), GRPO's completions
per second of TRL's ``step_time``.

    python bench/gpu/llama_steps.py --reward WORK/runs/smol_tldr_ppo/reward_model \\
        --tokenizer WORK/runs/smol_tldr_ppo/sft --prompts WORK/data/sft
    python bench/gpu/llama_steps.py --tiny ...    # a 2-layer Llama: checks the script on CPU
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench/: tables, real_memory

from real_memory import recipe_text  # noqa: E402
from tables import print_table  # noqa: E402

LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": True,
    "max_position_embeddings": 2048,
}
"""Llama-3.2-1B's shape (its vocabulary aside)."""
TINY = {
    **LLAMA_1B,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
MAX_NEW_TOKENS = 48
MAX_PROMPT_WORDS = 256


def build_policy(folder: Path, tokenizer_dir: Path, shape: dict) -> int:
    """A random-init Llama of ``shape`` with ``tokenizer_dir``'s tokenizer, saved in bfloat16
    to ``folder``; its number of parameters."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def stages(policy: Path, reward: Path, prompts: Path, args: argparse.Namespace) -> dict:
    """The two one-stage recipes' stage tables, by trainer."""
    model = {"use": "hf-causal-lm", "model": str(policy)}
    model.update(dtype="bfloat16", attn_implementation="sdpa")
    score = {"use": "gptj-reward-head", "path": str(reward), "batch_size": 64, "max_length": 640}
    data = {"use": "tldr", "source": str(prompts), "view": "prompts", "split": "train"}
    data.update(max_prompt_tokens=MAX_PROMPT_WORDS, shuffle=True)
    common = {"policy": model, "reward": score, "dataset": data}
    batch = args.batch
    return {
        "ppo": {
            "trainer": "ppo",
            **common,
            "trainer_settings": {
                "max_steps": args.steps,
                "num_rollouts": batch,
                "chunk_size": batch,
                "per_device_train_batch_size": batch,
                "ppo_epochs": 1,
                "num_layers_unfrozen": args.unfrozen,
                "max_new_tokens": MAX_NEW_TOKENS,
                "learning_rate": 1e-6,
                "save_steps": 0,
            },
        },
        "grpo": {
            "trainer": "grpo",
            **common,
            "trainer_settings": {
                "max_steps": args.steps,
                "per_device_train_batch_size": batch,
                "num_generations": 4,
                "max_completion_length": MAX_NEW_TOKENS,
                "beta": 0.02,
                "learning_rate": 1e-6,
                "logging_steps": 1,
                "save_steps": 0,
            },
        },
    }


def records(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def completions_per_s(trainer: str, stage_dir: Path, batch: int) -> float:
    """PPO: the last update's ``samples_per_s``; GRPO: ``batch`` completions over the mean
    ``step_time`` TRL logged for the steps after the first (the first alone if it is the only
    one). Both count generation, scoring and optimisation, and leave out the first update."""
    logged = records(stage_dir)
    if trainer == "ppo":
        return [r for r in logged if "samples_per_s" in r][-1]["samples_per_s"]
    times = [r["step_time"] for r in logged if "step_time" in r]
    later = times[1:] or times
    return batch * len(later) / sum(later)


def run_stage(recipe: Path) -> tuple[float, float]:
    """``rlhf run recipe`` in this process; its wall seconds and peak GPU memory (GiB; 0 on
    CPU)."""
    import torch

    from rlhf_plugins.cli import cli

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        cli.main(["run", str(recipe), "--force"], prog_name="rlhf", standalone_mode=False)
    finally:
        seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reward", type=Path, required=True, help="a reward-model directory")
    parser.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer directory")
    parser.add_argument("--prompts", type=Path, required=True, help="a tldr source (data/sft)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/llama_steps"))
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per trainer")
    parser.add_argument("--batch", type=int, default=32, help="completions per step")
    parser.add_argument("--unfrozen", type=int, default=2, help="PPO's num_layers_unfrozen")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer Llama (CPU check)")
    args = parser.parse_args()
    work = args.work.resolve()
    policy = work / "policy"
    parameters = build_policy(policy, args.tokenizer, TINY if args.tiny else LLAMA_1B)
    table, commands = [], []
    for trainer, table_of in stages(policy, args.reward, args.prompts, args).items():
        folder = work / trainer
        folder.mkdir(parents=True, exist_ok=True)
        recipe = folder / f"llama_{trainer}.toml"
        text = recipe_text(f"llama_{trainer}", {trainer: table_of})
        text = text.replace("[recipe]", '[launch]\nmixed_precision = "bf16"\n\n[recipe]', 1)
        recipe.write_text(text.replace("seed = 42\n", f'seed = 42\noutput_dir = "{folder}"\n'))
        seconds, peak = run_stage(recipe)
        rate = completions_per_s(trainer, folder / f"llama_{trainer}" / trainer, args.batch)
        commands.append(f"rlhf run {shlex.quote(str(recipe))} --force")
        table.append(
            [trainer, f"{rate:.1f}", f"{peak:.1f}", f"{seconds:.0f}", f"[{len(commands)}]"]
        )
    print(
        f"Llama of {parameters:,} parameters (random init, bf16, sdpa), {args.steps} "
        f"steps of {args.batch} completions of at most {MAX_NEW_TOKENS} tokens, prompts of at "
        f"most {MAX_PROMPT_WORDS} words; PPO trains the top {args.unfrozen} layers"
    )
    print_table(["trainer", "completions/s", "peak GPU GiB", "stage s", "command"], table)
    print()
    for number, command in enumerate(commands, start=1):
        print(f"[{number}] {command}")


if __name__ == "__main__":
    main()
