"""How fast is ``rlhf list-plugins`` next to ``python -c "import torch"``?

Runs each command N times in fresh processes and prints a table of wall times (median, min,
max) and the ratio of medians. Target: list-plugins under 0.3 s median and under a fifth of
the torch import.

    python bench/list_plugins.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "rlhf list-plugins": [shutil.which("rlhf") or "rlhf", "list-plugins"],
    "rlhf --help": [shutil.which("rlhf") or "rlhf", "--help"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
}


def wall_times(command: list[str], repeats: int) -> list[float]:
    subprocess.run(command, check=True, capture_output=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    medians = {}
    print(f"| command | median s | min s | max s |  ({args.repeats} runs each)")
    print("|---|---:|---:|---:|")
    for label, command in COMMANDS.items():
        times = wall_times(command, args.repeats)
        medians[label] = statistics.median(times)
        print(f"| {label} | {medians[label]:.3f} | {min(times):.3f} | {max(times):.3f} |")
    ratio = medians["rlhf list-plugins"] / medians['python -c "import torch"']
    print(f"\nlist-plugins / import torch (medians): {ratio:.3f}  (target < 0.2, and < 0.3 s)")


if __name__ == "__main__":
    main()
