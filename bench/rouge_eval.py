"""The ``rouge`` evaluator, measured.

1. Scoring on real data (skipped when the samples are absent): ROUGE-1/2/L of OpenAI's 1.3B PPO
   policy samples against the human TL;DRs of ``tldr_filtered.jsonl`` (a known-good reference
   point for our scoring), and ROUGE scoring speed.
2. The whole evaluator (generation + ROUGE + a reward function) with a tiny random GPT-J on
   ``tldr-synthetic`` test prompts: prompts/s and generated tokens/s per generation batch size.

    python bench/rouge_eval.py [--prompts 64] [--max-new-tokens 32] [--batch-sizes 1 8 32]
                               [--threads 1]

On a shared machine keep ``--threads`` at 1: oversubscribed torch threads make CPU generation
tens of times slower and the figures meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from tables import print_table

from rlhf_builtins.rouge.scoring import ROUGE_TYPES, mean, rouge_fmeasures
from rlhf_plugins import StageContext
from rlhf_plugins._engine.registry import load_registry

DATA = Path(
    os.environ.get("RLHF_TLDR_DATA", Path(__file__).resolve().parents[1] / "../shared/data/tldr")
)


def real_samples_scoring() -> None:
    path = DATA / "tldr_filtered.jsonl"
    if not path.is_file():
        print(f"(no real samples at {path}; part 1 skipped)\n")
        return
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    started = time.perf_counter()
    scores = rouge_fmeasures(
        [r["openai_ppo_1p3b_sample"] for r in rows], [r["summary"] for r in rows]
    )
    seconds = time.perf_counter() - started
    means = {name: mean([s[name] for s in scores]) for name in ROUGE_TYPES}
    print("1. OpenAI 1.3B PPO samples vs human TL;DRs (tldr_filtered.jsonl, valid split)")
    print_table(
        ["rows", "ROUGE-1", "ROUGE-2", "ROUGE-L", "Average", "pairs/s"],
        [
            [
                str(len(rows)),
                *(f"{means[n]:.3f}" for n in ROUGE_TYPES),
                f"{mean(list(means.values())):.3f}",
                f"{len(rows) / seconds:.0f}",
            ]
        ],
    )
    print()


class TinyGPTJ:
    """A random tiny GPT-J with a tokenizer trained on the prompts (a ``Policy``)."""

    def __init__(self, texts: list[str]):
        from transformers import GPTJConfig, GPTJForCausalLM

        from rlhf_builtins.hf_policies.policies import train_tokenizer

        self.name = "tiny-gptj-2x128"
        self.tokenizer = train_tokenizer(texts, vocab_size=1024)
        torch.manual_seed(0)
        config = GPTJConfig(
            n_layer=2,
            n_embd=128,
            n_head=4,
            rotary_dim=16,
            n_positions=1024,
            vocab_size=len(self.tokenizer),
            eos_token_id=self.tokenizer.eos_token_id,
            bos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        self.model = GPTJForCausalLM(config)

    def load_tokenizer(self):
        return self.tokenizer

    def load_model(self, **kwargs):
        return self.model


def overlap_reward(
    prompts: list[str], completions: list[str], reference: list[str], **_
) -> list[float]:
    return [
        float(len(set(c.split()) & set(r.split())))
        for c, r in zip(completions, reference, strict=True)
    ]


def evaluator_throughput(prompts: int, max_new_tokens: int, batch_sizes: list[int]) -> None:
    from rlhf_builtins.tldr import tldr_synthetic

    data = tldr_synthetic(view="prompts", split="test", num_examples=prompts)
    policy = TinyGPTJ([*data["prompt"], *data["reference"]])
    factory = load_registry().get("evaluator", "rouge").factory
    rows = []
    for batch_size in batch_sizes:
        evaluator = factory(
            policies={"tiny": policy},
            dataset=data,
            reward=overlap_reward,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
        )
        with tempfile.TemporaryDirectory() as tmp:
            stage = StageContext(
                recipe_name="bench", name="eval", output_dir=Path(tmp), seed=0, config={}
            )
            started = time.perf_counter()
            metrics = evaluator(stage)
            seconds = time.perf_counter() - started
            report = json.loads((Path(tmp) / "eval.json").read_text())
        tokens = sum(
            len(policy.tokenizer(s["generated"], add_special_tokens=False)["input_ids"]) + 1
            for s in report["policies"]["tiny"]["samples"]
        )
        rows.append(
            [
                str(batch_size),
                f"{seconds:.2f}",
                f"{prompts / seconds:.1f}",
                f"{tokens / seconds:.0f}",
                f"{metrics['tiny/rouge_avg']:.3f}",
            ]
        )
    print(
        f"2. rouge evaluator, {policy.name} (random init), {prompts} tldr-synthetic test prompts,"
        f" greedy, max_new_tokens {max_new_tokens}, {torch.get_num_threads()} torch threads"
    )
    print_table(["batch", "seconds", "prompts/s", "tokens/s", "ROUGE avg"], rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    real_samples_scoring()
    evaluator_throughput(args.prompts, args.max_new_tokens, args.batch_sizes)


if __name__ == "__main__":
    main()
