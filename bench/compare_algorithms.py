"""Per algorithm of a finished ``tiny_compare`` run: reward gain over SFT, KL to SFT, the
stage's wall time and the reward gain per CPU-minute.

    rlhf run recipes/tiny_compare.toml && python bench/compare_algorithms.py runs/tiny_compare

CPU-minutes are the stage's wall time times the cores the process could use
(``os.sched_getaffinity``), an upper bound on what it spent.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    evaluation = json.loads((args.run_dir / "eval" / "eval.json").read_text())["policies"]
    sft = evaluation["sft"]["metrics"]
    cores = len(os.sched_getaffinity(0))
    print(f"run: {args.run_dir} ({cores} cores)\n")
    print(
        "| algorithm | reward | gain over SFT | KL to SFT (per sample) | stage wall s | gain per CPU-min |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| sft | {sft['reward']:.3f} | - | {sft.get('kl', 0.0):.3f} | - | - |")
    for label, entry in evaluation.items():
        if label == "sft":
            continue
        stage = label.split("[")[0]
        state = json.loads((args.run_dir / stage / "stage_state.json").read_text())
        gain = entry["metrics"]["reward"] - sft["reward"]
        minutes = state["seconds"] * cores / 60
        print(
            f"| {label} | {entry['metrics']['reward']:.3f} | {gain:+.3f} | "
            f"{entry['metrics'].get('kl', float('nan')):.3f} | {state['seconds']:.0f} | "
            f"{gain / minutes:+.3f} |"
        )


if __name__ == "__main__":
    main()
