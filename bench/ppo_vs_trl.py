"""Our ``ppo`` trainer vs TRL 1.12's experimental PPOTrainer on the same work.

Work (both trainers, each run in a fresh process, one thread, fp32): a GPT-2-style model with
random init (4 layers x 128 and 8 layers x 512), a local BPE tokenizer (vocab 4096), 64 prompts
of 48 tokens, responses of at most 24 tokens (stop at EOS, sampling at temperature 1), batch 16,
4 PPO epochs (16 experiences per update, one minibatch of 16 per epoch, 4 updates), a reward
model of the same shape (scored on prompt + response), fixed KL coefficient 0.05, vf_coef 0.1.
TRL gets a separate value model and a full reference model (its design); ours runs with every
layer trained against a full frozen copy (``num_layers_unfrozen = -1``: the same optimisation)
and with its hydra default (top 2 layers trained, hydra reference).

Reported: samples/s (64 experiences over the wall time of the training loop), peak RSS above
the import baseline (the RSS after a warm-up run with a micro model has done every lazy import;
the peak is reset with /proc/self/clear_refs), their ratios to TRL, the FLOPs of one update of ours (counted by
``torch.utils.flop_counter``) and the share of this CPU's single-thread fp32 matmul throughput
that the update reaches.

TRL 1.12 is installed by this script into ``bench/.trl112`` (gitignored) with
``pip install --no-deps --target``, and the TRL child runs on this same interpreter with that
folder first on ``PYTHONPATH``: both trainers run on the same torch, transformers and
accelerate (wherever they are installed: a venv, conda, the system), and only the trainer
differs.

    python bench/ppo_vs_trl.py            # both sizes (slow on a small CPU)
    python bench/ppo_vs_trl.py --quick    # smoke run: 4x128 only, fewer prompts
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tables import print_table

HERE = Path(__file__).resolve().parent
TRL_TARGET = HERE / ".trl112"
TRL_VERSION = "1.12.0"
VOCAB, PROMPT_TOKENS, RESPONSE_TOKENS, BATCH, EPOCHS = 4096, 48, 24, 16, 4
KL_COEF, VF_COEF, LEARNING_RATE = 0.05, 0.1, 3e-6
OUR_SETTINGS = {
    "num_rollouts": BATCH,
    "chunk_size": BATCH,
    "per_device_train_batch_size": BATCH,
    "ppo_epochs": EPOCHS,
    "kl_controller": "fixed",
    "init_kl_coef": KL_COEF,
    "vf_coef": VF_COEF,
    "cliprange_reward": 0.0,
    "max_new_tokens": RESPONSE_TOKENS,
    "do_sample": True,
    "learning_rate": LEARNING_RATE,
    "lr_scheduler_type": "linear",
    "max_grad_norm": None,
}  # the same work as TRL's PPOConfig below: no reward clipping, no gradient clipping
OURS_VARIANTS = {"ours (all layers)": -1, "ours (hydra, top 2)": 2}


def rss_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def gpt2_config(size: str, tokenizer):
    from transformers import GPT2Config

    layers, width = (int(x) for x in size.split("x"))
    return GPT2Config(
        n_layer=layers,
        n_embd=width,
        n_head=max(1, width // 64),
        vocab_size=len(tokenizer),
        n_positions=128,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def make_model(kind: str, config, seed: int):
    import torch
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(seed)
    if kind == "lm":
        return GPT2LMHeadModel(config)
    return GPT2ForSequenceClassification(config.__class__(**config.to_dict(), num_labels=1))


# -- the parent: data, TRL 1.12, matmul peak, children, table -----------------------------------


def prepare(work: Path, prompts: int) -> None:
    """A tokenizer (vocab 4096) and ``prompts`` prompts of exactly 48 tokens in ``work``."""
    import random

    from rlhf_builtins.hf_policies.policies import train_tokenizer

    rng = random.Random(0)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "do", "ga", "ze", "bu"]
    corpus = [
        " ".join(
            "".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(40)
        )
        for _ in range(3000)
    ]
    tokenizer = train_tokenizer(corpus, VOCAB)
    tokenizer.save_pretrained(work / "tokenizer")
    words = [w for w in tokenizer.get_vocab() if w.startswith("Ġ") and w[1:].isalpha()]
    rows = []
    while len(rows) < prompts:
        text = "".join(" " + w[1:] for w in rng.sample(words, PROMPT_TOKENS))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == PROMPT_TOKENS:
            rows.append({"prompt": text, "input_ids": ids})
    (work / "prompts.json").write_text(json.dumps(rows))


def ensure_trl() -> Path:
    """The folder holding TRL ``TRL_VERSION`` alone (no dependencies), installed on first use
    with this interpreter's pip."""
    probe = [sys.executable, "-c", "import trl; print(trl.__version__)"]
    env = {**os.environ, "PYTHONPATH": str(TRL_TARGET)}
    found = subprocess.run(probe, capture_output=True, text=True, env=env).stdout.strip()
    if found != TRL_VERSION:
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade"]
        subprocess.run([*pip, "--target", str(TRL_TARGET), f"trl=={TRL_VERSION}"], check=True)
    return TRL_TARGET


def matmul_gflops(seconds: float = 3.0) -> float:
    """Single-thread fp32 matmul throughput (512 x 512 @ 512 x 2048), GFLOP/s."""
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(512, 512), torch.randn(512, 2048)
    for _ in range(3):
        a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return count * 2 * 512 * 512 * 2048 / (time.perf_counter() - started) / 1e9


def run_child(
    which: str, size: str, work: Path, extra: list[str], path_first: Path | None = None
) -> dict:
    """Run one child on this interpreter (``path_first`` ahead of its packages)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    if path_first is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path_first), env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--child", which, "--size", size, "--work", str(work), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{which} {size} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4x128 only, 32 prompts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--unfrozen", type=int, default=-1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size, Path(args.work), args.unfrozen)))
        return
    sizes, prompts = (["4x128"], 32) if args.quick else (["4x128", "8x512"], 64)
    trl_path = ensure_trl()
    peak = matmul_gflops()
    print(
        f"single-thread fp32 matmul: {peak:.1f} GFLOP/s; {prompts} prompts x {PROMPT_TOKENS} "
        f"tokens, responses <= {RESPONSE_TOKENS}, batch {BATCH}, {EPOCHS} PPO epochs\n"
    )
    header = (
        "size",
        "trainer",
        "samples/s",
        "x TRL",
        "peak RSS MiB",
        "x TRL",
        "GFLOP/update",
        "% of matmul peak",
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, prompts)
        for size in sizes:
            trl = run_child("trl", size, work, [], trl_path)
            rows.append(
                (
                    size,
                    f"TRL {TRL_VERSION}",
                    f"{trl['samples_per_s']:.2f}",
                    "1.00",
                    f"{trl['peak_rss_mib']:.0f}",
                    "1.00",
                    "-",
                    "-",
                )
            )
            for label, unfrozen in OURS_VARIANTS.items():
                ours = run_child("ours", size, work, ["--unfrozen", str(unfrozen)])
                achieved = ours["update_flops"] / ours["seconds_per_update"] / 1e9
                rows.append(
                    (
                        size,
                        label,
                        f"{ours['samples_per_s']:.2f}",
                        f"{ours['samples_per_s'] / trl['samples_per_s']:.2f}",
                        f"{ours['peak_rss_mib']:.0f}",
                        f"{ours['peak_rss_mib'] / trl['peak_rss_mib']:.2f}",
                        f"{ours['update_flops'] / 1e9:.1f}",
                        f"{100 * achieved / peak:.1f}",
                    )
                )
    print_table(header, rows)


# -- the children: one trainer, one size, one process ----------------------------------------


def child(which: str, size: str, work: Path, unfrozen: int) -> dict:
    """Warm up with a micro model (lazy imports, allocator), reset the peak RSS, then time the
    real run; for ours, count the FLOPs of one more update afterwards."""
    import gc

    import torch

    torch.set_num_threads(1)
    run = run_trl if which == "trl" else run_ours
    run("2x64", work, unfrozen, prompts=BATCH)
    gc.collect()
    baseline = rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    seconds, prompts = run(size, work, unfrozen)
    result = {
        "samples_per_s": prompts / seconds,
        "peak_rss_mib": (rss_kib("VmHWM") - baseline) / 1024,
        "seconds_per_update": seconds / (prompts // BATCH),
    }
    if which == "ours":
        result["update_flops"] = count_update_flops(size, work, unfrozen)
    return result


def load_work(work: Path, prompts: int | None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    return tokenizer, json.loads((work / "prompts.json").read_text())[:prompts]


def run_trl(size: str, work: Path, unfrozen: int, prompts: int | None = None) -> tuple[float, int]:
    """TRL 1.12's PPOTrainer: (seconds of ``train()``, prompts)."""
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer, rows = load_work(work, prompts)
    tokenizer.padding_side = "left"
    config = gpt2_config(size, tokenizer)
    dataset = Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows]})
    with tempfile.TemporaryDirectory() as out:
        args = PPOConfig(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=1,
            num_mini_batches=1,
            num_ppo_epochs=EPOCHS,
            total_episodes=len(rows),
            response_length=RESPONSE_TOKENS,
            local_rollout_forward_batch_size=BATCH,
            stop_token="eos",
            temperature=1.0,
            kl_coef=KL_COEF,
            vf_coef=VF_COEF,
            learning_rate=LEARNING_RATE,
            lr_scheduler_type="linear",
            report_to=[],
            save_strategy="no",
            num_sample_generations=0,
            logging_steps=1000,
            use_cpu=True,
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = PPOTrainer(
            args=args,
            processing_class=tokenizer,
            model=make_model("lm", config, 0),
            ref_model=make_model("lm", config, 0),
            reward_model=make_model("score", config, 1),
            train_dataset=dataset,
            value_model=make_model("score", config, 2),
        )
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started, len(rows)


class ModelReward:
    """A reward function scoring prompt + completion with a sequence-classification model."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> list[float]:
        import torch

        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        self.tokenizer.padding_side = "right"
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            return self.model(**batch).logits[:, 0].tolist()


class BenchPolicy:
    """A Policy (protocol of rlhf_plugins) for the random-init GPT-2 of one size."""

    def __init__(self, size: str, tokenizer):
        self.name, self.tokenizer = f"gpt2-{size}", tokenizer
        self.config = gpt2_config(size, tokenizer)

    def load_tokenizer(self):
        return self.tokenizer

    def load_model(self, **kwargs):
        return make_model("lm", self.config, 0)


def our_trainer(size: str, work: Path, unfrozen: int, prompts: int | None, out: str):
    """Our ``ppo`` trainer for the bench's work, with ``updates`` = prompts / 16."""
    from datasets import Dataset

    from rlhf_builtins.ppo.settings import PPOSettings
    from rlhf_builtins.ppo.trainer import PPOTrainer
    from rlhf_plugins import StageContext

    tokenizer, rows = load_work(work, prompts)
    policy = BenchPolicy(size, tokenizer)
    reward = ModelReward(make_model("score", policy.config, 1), tokenizer)
    dataset = Dataset.from_dict({"prompt": [r["prompt"] for r in rows]})
    stage = StageContext(recipe_name="bench", name="ppo", output_dir=Path(out), seed=0, config={})
    settings = PPOSettings(
        num_layers_unfrozen=unfrozen, max_steps=len(rows) // BATCH * EPOCHS, **OUR_SETTINGS
    )
    trainer = PPOTrainer(stage, policy, reward, dataset, None, settings)
    trainer.save_final = lambda: None  # the bench measures training, not writing files
    return trainer, len(rows)


def run_ours(size: str, work: Path, unfrozen: int, prompts: int | None = None) -> tuple[float, int]:
    """Our ``ppo`` trainer: (seconds of ``train()``, prompts)."""
    with tempfile.TemporaryDirectory() as out:
        trainer, count = our_trainer(size, work, unfrozen, prompts, out)
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started, count


def count_update_flops(size: str, work: Path, unfrozen: int) -> int:
    """FLOPs of one update of ours (rollout of 16, scoring, 4 epochs), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with tempfile.TemporaryDirectory() as out:
        trainer, _ = our_trainer(size, work, unfrozen, BATCH, out)
        with FlopCounterMode(display=False) as flops:
            trainer.train()
    return flops.get_total_flops()


if __name__ == "__main__":
    main()
