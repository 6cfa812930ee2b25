"""ILQL cost against plain language modelling, on the same tiny GPT-J-shaped models and batches.

1. Training: one ILQL optimizer step (trunk + LM/V/Q/target-Q heads at the action states, every
   loss term, backward, AdamW, Polyak sync) against one SFT step (the causal LM's own loss on the
   completion tokens, backward, AdamW) on the same model and batch of tldr-synthetic episodes.
   Target: ILQL at most 1.6x the SFT step time.
2. Decoding: tokens/s of Q-guided ``generate`` (decode_beta = 1, KV cache) against the plain
   model's ``generate``, greedy, the same prompts and number of new tokens.
   Target: at least 0.7x.

    python bench/ilql_speed.py [--steps 10] [--threads 2]

Prints a markdown table; timings are medians over ``--steps`` repetitions after warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from rlhf_builtins.hf_policies.policies import _config, train_tokenizer
from rlhf_builtins.ilql.batches import collate, episodes
from rlhf_builtins.ilql.decoding import attach_q_guidance
from rlhf_builtins.ilql.models import ILQLModel, heads_for
from rlhf_builtins.ilql.settings import ILQLSettings
from rlhf_builtins.ilql.trainer import batch_losses
from rlhf_builtins.tldr.synthetic import synthetic_dataset
from rlhf_plugins._engine.generation import encode_prompts

SHAPES = {"2x128, V=1024": (2, 128, 1024), "4x256, V=4096": (4, 256, 4096)}
WEIGHTS = ILQLSettings(tau=0.7, gamma=0.99, cql_scale=0.1, awac_scale=1.0, awac_beta=0.0)


def median_seconds(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(shape: tuple[int, int, int], texts: list[str]):
    n_layer, n_embd, vocab = shape
    tokenizer = train_tokenizer(texts, vocab)
    torch.manual_seed(0)
    config = _config(
        "gptj",
        len(tokenizer),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=4,
        positions=512,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
    )
    return tokenizer, AutoModelForCausalLM.from_config(config)


def sft_step_fn(model, batch):
    """The causal LM's loss on the completion tokens, as an SFT trainer computes it."""
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    positions = torch.arange(labels.shape[1]).expand_as(labels)
    labels[positions <= batch["state_indices"][:, :1]] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        loss = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def ilql_step_fn(model: ILQLModel, batch):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        losses = batch_losses(model, batch, WEIGHTS)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.heads.sync_targets(0.001)

    return step


def decode_fn(model, inputs, new_tokens: int):
    def decode():
        with torch.no_grad():
            model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )

    return decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = synthetic_dataset("offline", "train", 200, 0)
    texts = [t for row in data for t in (row["prompt"], row["completion"])]
    rows = []
    for label, shape in SHAPES.items():
        tokenizer, base = build(shape, texts)
        batch = collate(
            episodes(
                data.select(range(args.batch_size)),
                tokenizer,
                max_length=256,
                normalize_rewards=True,
            ),
            tokenizer.pad_token_id,
        )
        sft = median_seconds(sft_step_fn(base, batch), args.steps)
        model = ILQLModel(base, heads_for(base, two_qs=True))
        ilql = median_seconds(ilql_step_fn(model, batch), args.steps)
        base.eval()
        inputs = encode_prompts(tokenizer, list(data["prompt"][: args.batch_size]))
        plain = median_seconds(decode_fn(base, inputs, args.new_tokens), max(3, args.steps // 3))
        attach_q_guidance(base, model.heads, decode_beta=1.0)
        guided = median_seconds(decode_fn(base, inputs, args.new_tokens), max(3, args.steps // 3))
        tokens = args.batch_size * args.new_tokens
        rows.append(
            (
                label,
                sft * 1e3,
                ilql * 1e3,
                ilql / sft,
                tokens / plain,
                tokens / guided,
                plain / guided,
            )
        )
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, "
        f"{args.new_tokens} new tokens, medians of {args.steps} steps\n"
    )
    print(
        "| model | SFT step ms | ILQL step ms | ILQL/SFT (<= 1.6) | generate tok/s "
        "| Q-guided tok/s | guided/plain (>= 0.7) |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, sft, ilql, ratio, plain, guided, speed in rows:
        print(
            f"| {label} | {sft:.1f} | {ilql:.1f} | {ratio:.2f}x | {plain:.0f} | {guided:.0f} "
            f"| {speed:.2f}x |"
        )


if __name__ == "__main__":
    main()
