"""What the benches that put a trainer of this project beside TRL's ``GRPOTrainer`` share: the
tiny work saved in a folder (prompts, a random policy and reward model with their tokenizer)
and a child process's wall time and peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path


def save_tiny_work(
    work: Path,
    prompts: int = 64,
    policy: tuple[int, int] = (4, 128),
    reward: tuple[int, int] = (2, 64),
) -> None:
    """In ``work``: ``prompts.jsonl`` (``prompts`` rows of the project's synthetic TL;DR data,
    view ``prompts``: prompt and reference), a randomly initialised GPT-2 policy of ``policy``
    (layers, width; two heads) in ``policy/`` and a GPT-2 reward model (one label) of
    ``reward`` in ``rm/``, each with the same byte-level BPE tokenizer (vocab 1024, trained on the rows); the same
    weights every time (seed 0)."""
    import torch
    from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2LMHeadModel

    from rlhf_builtins.hf_policies.policies import train_tokenizer
    from rlhf_builtins.tldr.synthetic import synthetic_dataset

    rows = synthetic_dataset("prompts", "train", prompts, 0)
    with (work / "prompts.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps({"prompt": row["prompt"], "reference": row["reference"]}) + "\n")
    tokenizer = train_tokenizer([r["prompt"] + r["reference"] for r in rows] * 4, 1024)
    ids = dict(
        vocab_size=len(tokenizer),
        n_positions=512,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    def config(shape: tuple[int, int], **extra: int) -> GPT2Config:
        layers, width = shape
        return GPT2Config(n_layer=layers, n_embd=width, n_head=2, **ids, **extra)

    torch.manual_seed(0)
    for name, model in (
        ("policy", GPT2LMHeadModel(config(policy))),
        ("rm", AutoModelForSequenceClassification.from_config(config(reward, num_labels=1))),
    ):
        model.save_pretrained(work / name)
        tokenizer.save_pretrained(work / name)


def child_env() -> dict[str, str]:
    """This process's environment for a bench child: one thread, offline, no reporting."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "TOKENIZERS_PARALLELISM": "false",
    }


def measured(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """``(wall seconds, peak RSS MiB)`` of ``command`` in a fresh process (``ru_maxrss`` from
    ``wait4``); ``SystemExit`` with the end of its output when it fails."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-2000:]}")
    return wall, usage.ru_maxrss / 1024
