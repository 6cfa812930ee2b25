"""Per-rank memory of our ``ppo`` trainer under DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU ranks.

Work: the 8 layers x 512 GPT-2-style policy of bench/ppo_vs_trl.py (random init, vocab 4096,
prompts of 48 tokens, responses of at most 24, sampling), fp32, one thread per rank, 2 ranks
under ``accelerate launch --use_deepspeed`` with the shipped ``recipes/deepspeed/zero2.json``
or ``zero3.json`` (unchanged: parameters under 1e5 elements, biases and norms, stay whole on
every rank under ZeRO-3), 16 experiences per rank per update, 4 PPO epochs, 2 updates; reward:
a model of the same shape. Two trainer configurations: trlX's default (hydra reference, top 2
blocks trained) and every layer trained against a full frozen reference copy
(``num_layers_unfrozen = -1``). A third DeepSpeed config, ``zero3-lean`` (written into the work
folder), is ``zero3.json`` with ``stage3_max_live_parameters = 1e6``,
``stage3_prefetch_bucket_size = 0`` and ``stage3_max_reuse_distance = 0``: DeepSpeed's
defaults (1e9 live parameters, 5e7 prefetched) keep a model of this size whole during the
training forward and backward.

Reported per rank (the larger of the two ranks):
- peak RSS above a baseline taken once the accelerator exists and every library is imported
  (``VmHWM`` after ``/proc/self/clear_refs``);
- what the rank holds after training, counted from the tensors: the trained module's
  parameters (its ZeRO-3 partition, or whole), DeepSpeed's fp32 master partition and AdamW's
  two moments over it, and the frozen reference copy (never partitioned).

    python bench/zero_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tables import print_table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from ppo_vs_trl import (  # noqa: E402  (the same work as the PPO bench)
    BATCH,
    EPOCHS,
    OUR_SETTINGS,
    BenchPolicy,
    ModelReward,
    load_work,
    make_model,
    prepare,
    rss_kib,
)

SIZE, UPDATES, PORT = "8x512", 2, 29517
LEAN = {
    "stage3_max_live_parameters": 1e6,
    "stage3_prefetch_bucket_size": 0,
    "stage3_max_reuse_distance": 0,
}
CONFIGS = ("zero2", "zero3", "zero3-lean")
VARIANTS = {"hydra, top 2": 2, "all layers": -1}
MIB = 1024 * 1024


def config_path(name: str, work: Path) -> Path:
    """The DeepSpeed config file ``name`` of ``CONFIGS`` (``zero3-lean`` is written into
    ``work``)."""
    if name != "zero3-lean":
        return REPO / "recipes" / "deepspeed" / f"{name}.json"
    path = work / "zero3-lean.json"
    config = json.loads(config_path("zero3", work).read_text())
    config["zero_optimization"].update(LEAN)
    path.write_text(json.dumps(config, indent=2))
    return path


def command(name: str, unfrozen: int, work: Path) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command of one measurement, and its environment."""
    config = config_path(name, work)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--main_process_port",
        str(PORT),
        "--use_deepspeed",
        "--deepspeed_config_file",
        str(config.relative_to(REPO) if config.is_relative_to(REPO) else config),
        str(Path(__file__).relative_to(REPO)),
        "--child",
        "--config",
        str(config),
        "--unfrozen",
        str(unfrozen),
        "--work",
        str(work),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    return cmd, env


def shown(cmd: list[str], work: Path) -> str:
    """``cmd`` as typed from the repository root, ``WORK`` for the work folder."""
    return " ".join(["python", *cmd[1:]]).replace(str(work), "WORK").replace(f"{REPO}/", "")


def measure(name: str, unfrozen: int, work: Path) -> list[dict]:
    cmd, env = command(name, unfrozen, work)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith('{"rank"')]
    if done.returncode != 0 or len(lines) != 2:
        raise RuntimeError(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--unfrozen", type=int, default=2)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.config, args.unfrozen, args.work)
        return
    header = (
        "trainer",
        "DeepSpeed config",
        "peak RSS MiB",
        "params MiB",
        "fp32 master MiB",
        "Adam moments MiB",
        "reference MiB",
        "command",
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, BATCH * UPDATES * 2)
        for label, unfrozen in VARIANTS.items():
            for name in CONFIGS:
                ranks = measure(name, unfrozen, work)
                worst = {k: max(r[k] for r in ranks) for k in ranks[0] if k != "rank"}
                rows.append(
                    (
                        label,
                        name,
                        f"{worst['peak_rss_mib']:.0f}",
                        f"{worst['params_mib']:.1f}",
                        f"{worst['master_mib']:.1f}",
                        f"{worst['moments_mib']:.1f}",
                        f"{worst['reference_mib']:.1f}",
                        f"`{shown(command(name, unfrozen, work)[0], work)}`",
                    )
                )
    print_table(header, rows)


# -- the child: one rank of one measurement ----------------------------------------------------


def tensor_mib(tensors) -> float:
    """Storage of ``tensors``, each storage counted once."""
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values()) / MIB


def child(config: Path, unfrozen: int, work: Path) -> None:
    import gc

    import deepspeed  # noqa: F401  (imported before the baseline)
    import torch
    from datasets import Dataset

    from rlhf_builtins.ppo.settings import PPOSettings
    from rlhf_builtins.ppo.trainer import PPOTrainer
    from rlhf_plugins import StageContext
    from rlhf_plugins._engine.recipe_tables import LaunchConfig

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        stage_ctx = StageContext(
            recipe_name="bench",
            name="ppo",
            output_dir=Path(out),
            seed=0,
            config={},
            launch=LaunchConfig(num_processes=2, deepspeed=config),
        )
        stage_ctx.accelerator()
        tokenizer, rows = load_work(work, None)
        gc.collect()
        baseline = rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        policy = BenchPolicy(SIZE, tokenizer)
        reward = ModelReward(make_model("score", policy.config, 1), tokenizer)
        dataset = Dataset.from_dict({"prompt": [r["prompt"] for r in rows]})
        settings = PPOSettings(
            num_layers_unfrozen=unfrozen, max_steps=UPDATES * EPOCHS, **OUR_SETTINGS
        )
        trainer = PPOTrainer(stage_ctx, policy, reward, dataset, None, settings)
        trainer.save_final = lambda: None  # the bench measures training, not writing files
        trainer.train()
        peak = (rss_kib("VmHWM") - baseline) / 1024
        engine = trainer.model
        params = [getattr(p, "ds_tensor", p) for p in engine.module.parameters()]
        inner = engine.optimizer.optimizer  # torch's AdamW over DeepSpeed's fp32 partitions
        zero = engine.optimizer
        stage3 = getattr(zero, "fp32_partitioned_groups_flat", None)
        master = stage3 if stage3 is not None else zero.single_partition_of_fp32_groups
        moments = [t for s in inner.state.values() for t in s.values() if t.dim() > 0]
        record = {
            "rank": stage_ctx.process_index,
            "peak_rss_mib": peak,
            "params_mib": tensor_mib(params),
            "master_mib": tensor_mib(master),
            "moments_mib": tensor_mib(moments),
            "reference_mib": tensor_mib(trainer.reference.parameters()),
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
