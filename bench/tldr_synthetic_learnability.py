"""Is ``tldr-synthetic`` learnable by a tiny model? Trains a tiny GPT-J reward model (the
``tiny-causal-lm`` config; pairwise loss -log sigmoid(r_chosen - r_rejected), score at the last
real token) on the train split and prints held-out test accuracy per defect, plus the
generator's speed.

    python bench/tldr_synthetic_learnability.py [--train 2000] [--epochs 2] [--width 64]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPTJForSequenceClassification

from rlhf_builtins.hf_policies.policies import _config as tiny_config
from rlhf_builtins.hf_policies.policies import train_tokenizer
from rlhf_builtins.tldr.synthetic import DEFECTS, generate
from rlhf_builtins.tldr.views import SUFFIX, as_completion


def texts(item, which: str) -> str:
    return item.post.head() + SUFFIX + as_completion(getattr(item, which))


def scores(model, tokenizer, batch: list[str]) -> torch.Tensor:
    encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
    return model(**encoded).logits.squeeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.manual_seed(0)

    started = time.perf_counter()
    train = list(generate("train", args.train))
    generation = time.perf_counter() - started
    test = list(generate("test", args.test))
    tokenizer = train_tokenizer([texts(i, w) for i in train for w in ("chosen", "rejected")], 1000)
    tokenizer.padding_side = "right"
    config = tiny_config(
        "gptj",
        len(tokenizer),
        n_layer=2,
        n_embd=args.width,
        n_head=4,
        positions=256,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
    )
    config.num_labels = 1
    model = GPTJForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)

    started = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(train)).tolist()
        for start in range(0, len(order), args.batch):
            batch = [train[i] for i in order[start : start + args.batch]]
            both = scores(
                model,
                tokenizer,
                [texts(i, "chosen") for i in batch] + [texts(i, "rejected") for i in batch],
            )
            chosen, rejected = both.split(len(batch))
            loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    training = time.perf_counter() - started

    model.eval()
    correct: dict[str, list[bool]] = {d: [] for d in DEFECTS}
    with torch.no_grad():
        for start in range(0, len(test), 64):
            batch = test[start : start + 64]
            chosen = scores(model, tokenizer, [texts(i, "chosen") for i in batch])
            rejected = scores(model, tokenizer, [texts(i, "rejected") for i in batch])
            for item, win in zip(batch, (chosen > rejected).tolist(), strict=True):
                correct[item.defect].append(win)
    everything = [w for wins in correct.values() for w in wins]
    print(
        f"tiny GPT-J 2x{args.width}, {args.train} train pairs x {args.epochs} epochs, "
        f"batch {args.batch}, lr {args.lr}: trained in {training:.1f}s; "
        f"generated {args.train} posts in {generation * 1000:.0f} ms"
    )
    print("| held-out test pairs | n | reward accuracy |")
    print("| --- | ---: | ---: |")
    for defect, wins in correct.items():
        print(f"| rejected = {defect} | {len(wins)} | {sum(wins) / len(wins):.3f} |")
    print(f"| all | {len(everything)} | {sum(everything) / len(everything):.3f} |")


if __name__ == "__main__":
    main()
