"""kill -9 a recipe at given moments, rerun the same command each time, and compare the result
with an uninterrupted run: the weights of every stage, and the logged steps of metrics.jsonl.

    python bench/kill_resume.py recipes/tiny_ppo.toml --kill-after 20 45 70

Prints one row per stage: whether the weights are identical (the max |difference|), and
whether the stage logged the same steps (no step missing, none twice). Runs in two temporary
directories.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rlhf(workdir: Path, recipe: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rlhf_plugins.cli", "run", str(recipe)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def logged_steps(stage_dir: Path) -> list[int]:
    path = stage_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r["step"] for r in records if r.get("step") is not None and len(r) > 2]


def max_difference(a: Path, b: Path) -> float | None:
    from safetensors.torch import load_file

    if not (a / "model.safetensors").is_file():
        return None
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max(float((first[k].double() - second[k].double()).abs().max()) for k in first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--kill-after", type=float, nargs="+", default=[20.0, 45.0, 70.0])
    args = parser.parse_args()
    recipe = args.recipe.resolve()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as straight, tempfile.TemporaryDirectory() as killed:
        straight, killed = Path(straight), Path(killed)
        for workdir in (straight, killed):
            shutil.copy(recipe, workdir / recipe.name)
        started = time.monotonic()
        if rlhf(straight, Path(recipe.name)).wait() != 0:
            sys.exit("the uninterrupted run failed")
        print(f"uninterrupted run: {time.monotonic() - started:.0f} s")
        for seconds in args.kill_after:
            process = rlhf(killed, Path(recipe.name))
            time.sleep(seconds)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                print(f"killed with SIGKILL after {seconds:.0f} s")
            else:
                print(f"the run had ended (exit {process.returncode}) before {seconds:.0f} s")
        if rlhf(killed, Path(recipe.name)).wait() != 0:
            sys.exit("the final rerun failed")
        runs = [p for p in (straight / "runs").iterdir() if p.is_dir()]
        print("\n| stage | same weights | max abs diff | same logged steps | steps logged |")
        print("|---|---|---|---|---|")
        for run in runs:
            for stage in sorted(p for p in run.iterdir() if p.is_dir()):
                other = killed / "runs" / run.name / stage.name
                difference = max_difference(stage, other)
                steps, resumed = logged_steps(stage), logged_steps(other)
                same = "-" if difference is None else ("yes" if difference == 0 else "no")
                shown = "-" if difference is None else f"{difference:.3g}"
                print(
                    f"| {stage.name} | {same} | {shown} | "
                    f"{'yes' if steps == resumed else 'no'} | {len(resumed)} |"
                )


if __name__ == "__main__":
    main()
