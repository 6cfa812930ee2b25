"""``recipes/smol_tldr_ppo.toml`` on the real TL;DR samples, end to end, in one table:
SmolLM2-135M-Instruct, SFT -> reward model -> PPO -> ROUGE + reward + KL to SFT.

1. The fixed split of the shared samples (``../shared/data/tldr``, or ``$RLHF_TLDR_DATA``, or
   ``--data``) is made with their ``split.py`` in ``WORK`` (the one split every bench uses):
   ``data/sft/{train,valid}.jsonl`` (1,700 / 245 posts), ``data/cmp/{train,test}.jsonl``
   (8,528 / 1,472 pairs; the 250 test posts never appear in a train pair).
2. ``rlhf run recipes/smol_tldr_ppo.toml`` (this tree's code) with ``--set`` lines that point
   every stage at those files. On ``--device cpu`` the recipe's own sizes are kept (the CPU
   defaults: about 45 min on 2 cores) except the held-out test pairs (``--test-pairs``); on
   ``--device cuda`` every training pair and test pair, every valid post, whole posts, bf16.
   The size options change one thing each.
3. One table: the reward model's pairwise accuracy on the held-out test pairs with its 95%
   Wilson interval, "the longer summary wins" on the same pairs (whitespace words; a tie
   counts half; 0.574 on all 1,472), SFT vs PPO on held-out posts (mean reward of the trained
   reward model, ROUGE-1/2/L, KL to SFT per sample, mean words), wall time per stage and peak
   RSS (``wait4``'s ``ru_maxrss`` of the ``rlhf run`` process, which counts the descendants
   it waited for: the largest resident set of any process of the tree). Each figure names the
   command that produced it.

    python bench/real_tldr.py                                  # CPU, the recipe's sizes
    python bench/real_tldr.py --rm-pairs 400 --test-pairs 200  # a shorter variant
    python bench/real_tldr.py --device cuda                    # GPU: everything (bench/gpu/)

On CPU the run gets one torch thread (``--threads``): on a machine whose cores other jobs
share, two threads wait for each other in every small operation, and generation slows down
tenfold (8 summaries of 48 tokens from SmolLM2: 319 s with 2 threads, 30 s with 1, load
average 4.5 on 2 cores).

The test pairs are a seeded shuffle of the 1,472 (``--test-pairs all``: every one); pairs of
one post are not independent, so the Wilson interval is somewhat narrower than it should be.
Timings on a shared machine depend on the other jobs: the table prints the load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from real_memory import import_path, peak_rss_gb
from tables import print_table

from rlhf_plugins._engine.recipe import tomllib

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RECIPE = REPO / "recipes" / "smol_tldr_ppo.toml"
RUN_NAME = "smol_tldr_ppo"
STAGES = ("sft", "reward_model", "ppo", "eval")
SFT_SOURCES = ("sft.dataset", "ppo.dataset", "eval.dataset")
PAIR_SOURCES = ("reward_model.dataset", "reward_model.eval_dataset")
PROMPT_DATASETS = (*SFT_SOURCES, *PAIR_SOURCES)
"""Every dataset table of the recipe (``stage.slot``): all of them cut prompts alike."""
ROW_LENGTHS = ("sft.trainer_settings", "reward_model.trainer_settings")
"""Settings tables whose ``max_length`` bounds a training row."""
REWARD_TABLES = ("ppo.reward.base", "eval.reward")
"""Reward-head tables whose ``max_length`` bounds a scored row."""
GENERATION = ("ppo.trainer_settings", "eval.evaluator_settings")
"""Settings tables that generate: ``max_prompt_length`` + ``max_new_tokens``."""
Z95 = 1.959964


@dataclass(frozen=True)
class Sizes:
    """How much of the data each stage uses; None keeps the recipe's value, ``0`` means all
    (one epoch of the training pairs; every test pair; every valid post)."""

    sft_steps: int | None = None
    sft_batch: int | None = None
    rm_pairs: int | None = None
    rm_batch: int | None = None
    test_pairs: int | None = None
    ppo_steps: int | None = None
    ppo_rollouts: int | None = None
    eval_posts: int | None = None
    max_words: int | None = None
    rm_lr: float | None = None
    freeze_fraction: float | None = None


CUDA = Sizes(sft_steps=0, rm_pairs=0, test_pairs=0, eval_posts=0, max_words=512)
CUDA = replace(CUDA, sft_batch=16, rm_batch=16, ppo_steps=64, ppo_rollouts=64)
"""GPU defaults: one epoch of every SFT post and every training pair, every test pair and
valid post, whole posts (SmolLM2 tokens of the longest: 550)."""
CUDA_LENGTHS = {"max_length": 640, "max_prompt_length": 576}
CPU_TEST_PAIRS = 200
"""Held-out pairs scored on CPU (the recipe's limit; all 1,472 take about 30 min on 2 shared cores)."""


def recipe_value(recipe: dict, dotted: str) -> Any:
    """``stages.<dotted>`` of the parsed recipe (e.g. ``reward_model.trainer_settings``)."""
    value: Any = recipe["stages"]
    for key in dotted.split("."):
        value = value[key]
    return value


def count_rows(path: Path) -> int:
    """Lines of a JSON Lines file."""
    with path.open() as f:
        return sum(1 for line in f if line.strip())


def all_or(value: int, everything: int) -> int:
    """``value``, with 0 meaning ``everything``."""
    return everything if value == 0 else value


def overrides(
    data: Path, sizes: Sizes, device: str, model: str | None, gguf_file: str | None
) -> list[str]:
    """The ``--set`` values (``KEY=TOML``) of one run: data sources, then the sizes that differ
    from the recipe's, then what the device needs."""
    recipe = tomllib.loads(RECIPE.read_text())
    sets = [f"stages.{slot}.source={json.dumps(str(data / 'sft'))}" for slot in SFT_SOURCES]
    sets += [f"stages.{slot}.source={json.dumps(str(data / 'cmp'))}" for slot in PAIR_SOURCES]
    if model is not None:
        sets.append(f"stages.sft.policy.model={json.dumps(model)}")
    if gguf_file is not None:
        sets.append(f"stages.sft.policy.gguf_file={json.dumps(gguf_file)}")
    sft, rm = "stages.sft.trainer_settings", "stages.reward_model.trainer_settings"
    if sizes.sft_batch is not None:
        sets.append(f"{sft}.per_device_train_batch_size={sizes.sft_batch}")
    if sizes.sft_steps is not None:
        sets.append(f"{sft}.max_steps={sizes.sft_steps or -1}")
    rm_batch = (
        sizes.rm_batch
        or recipe_value(recipe, "reward_model.trainer_settings")["per_device_train_batch_size"]
    )
    if sizes.rm_batch is not None:
        sets.append(f"{rm}.per_device_train_batch_size={rm_batch}")
    if sizes.rm_pairs is not None:
        steps = math.ceil(sizes.rm_pairs / rm_batch) if sizes.rm_pairs else -1
        sets.append(f"{rm}.max_steps={steps}")
    if sizes.rm_lr is not None:
        sets.append(f"{rm}.learning_rate={sizes.rm_lr}")
    if sizes.freeze_fraction is not None:
        sets.append(f"{rm}.freeze_fraction={sizes.freeze_fraction}")
    test_pairs = CPU_TEST_PAIRS if sizes.test_pairs is None else sizes.test_pairs
    test_pairs = all_or(test_pairs, count_rows(data / "cmp" / "test.jsonl"))
    sets.append(f"stages.reward_model.eval_dataset.limit={test_pairs}")
    if sizes.ppo_steps is not None:
        sets.append(f"stages.ppo.trainer_settings.max_steps={sizes.ppo_steps}")
    if sizes.ppo_rollouts is not None:
        sets.append(f"stages.ppo.trainer_settings.num_rollouts={sizes.ppo_rollouts}")
    if sizes.eval_posts is not None:
        posts = all_or(sizes.eval_posts, count_rows(data / "sft" / "valid.jsonl"))
        sets.append(f"stages.eval.dataset.limit={posts}")
    if sizes.max_words is not None:
        sets += [f"stages.{slot}.max_prompt_tokens={sizes.max_words}" for slot in PROMPT_DATASETS]
    if device == "cuda":
        sets.append('launch.mixed_precision="bf16"')
        sets += [f"stages.{t}.max_length={CUDA_LENGTHS['max_length']}" for t in ROW_LENGTHS]
        sets += [f"stages.{t}.max_length={CUDA_LENGTHS['max_length']}" for t in REWARD_TABLES]
        sets += [
            f"stages.{t}.max_prompt_length={CUDA_LENGTHS['max_prompt_length']}" for t in GENERATION
        ]
        sets += [
            "stages.ppo.trainer_settings.chunk_size=32",
            "stages.ppo.trainer_settings.per_device_train_batch_size=16",
            "stages.eval.evaluator_settings.batch_size=64",
        ]
    return sets


def make_split(shared: Path, work: Path) -> str:
    """Run the shared ``split.py`` in ``work`` (writes ``work/data``); the command."""
    command = [sys.executable, str(shared / "split.py"), str(shared)]
    subprocess.run(command, cwd=work, check=True)
    return f"cd {work} && {shlex.join(['python3', *command[1:]])}"


def wilson(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``accuracy`` measured on ``n`` trials."""
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def longer_wins(chosen: list[str], rejected: list[str]) -> float:
    """Accuracy of "the summary with more whitespace words is preferred", a tie counting half."""
    score = 0.0
    for good, bad in zip(chosen, rejected, strict=True):
        good_words, bad_words = len(good.split()), len(bad.split())
        score += 1.0 if good_words > bad_words else 0.5 if good_words == bad_words else 0.0
    return score / len(chosen)


def stage_state(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "stage_state.json").read_text())


def held_out_pairs(run_dir: Path) -> Any:
    """The reward model's eval pairs, rebuilt from the finished stage's resolved
    ``eval_dataset`` table with the recipe's seed: exactly the pairs it was scored on."""
    from rlhf_plugins import StageContext
    from rlhf_plugins._engine.registry import load_registry

    state = stage_state(run_dir, "reward_model")
    table = dict(state["stage"]["eval_dataset"])
    factory = load_registry().get("dataset", table.pop("use")).factory
    stage = StageContext(
        recipe_name=RUN_NAME,
        name="baseline",
        output_dir=run_dir / "baseline",
        seed=recipe_seed(),
        config={},
        recipe_dir=RECIPE.parent,
    )
    return factory(stage=stage, **table)


def recipe_seed() -> int:
    return int(tomllib.loads(RECIPE.read_text())["recipe"]["seed"])


def baseline(run_dir: Path) -> tuple[float, int]:
    """ "The longer summary wins" on the reward model's eval pairs, and how many pairs."""
    pairs = held_out_pairs(run_dir)
    return longer_wins(pairs["chosen"], pairs["rejected"]), len(pairs)


def rows(run_dir: Path, peak_gb: float, wall: float) -> list[list[str]]:
    """The table's rows: figure, value, number of the command behind it ([2] the run,
    [3] the baseline)."""
    rm = stage_state(run_dir, "reward_model")["metrics"]
    report = json.loads((run_dir / "eval" / "eval.json").read_text())
    accuracy = rm["eval_accuracy"]
    longer, n_pairs = baseline(run_dir)  # the pairs the accuracy was measured on
    low, high = wilson(accuracy, n_pairs)
    sft, ppo = (report["policies"][p]["metrics"] for p in ("sft", "ppo"))
    posts = len(report["policies"]["sft"]["samples"])

    def both(key: str, digits: int) -> str:
        return f"{sft[key]:.{digits}f} / {ppo[key]:.{digits}f}"

    table = [
        [
            f"reward model: accuracy on {n_pairs} held-out test pairs (95% Wilson)",
            f"{accuracy:.3f} ({low:.3f}-{high:.3f})",
            "[2]",
        ],
        [f'"longer summary wins", same {n_pairs} pairs', f"{longer:.3f}", "[3]"],
        [f"mean reward on {posts} held-out posts, SFT / PPO", both("reward", 3), "[2]"],
        ["ROUGE-1, SFT / PPO", both("rouge1", 3), "[2]"],
        ["ROUGE-2, SFT / PPO", both("rouge2", 3), "[2]"],
        ["ROUGE-L, SFT / PPO", both("rougeL", 3), "[2]"],
        ["KL to SFT, nats per sample, PPO", f"{ppo['kl']:.2f}", "[2]"],
        [
            "mean words, SFT / PPO / reference",
            f"{both('words', 1)} / {report['reference']['words']:.1f}",
            "[2]",
        ],
    ]
    for stage in STAGES:
        seconds = stage_state(run_dir, stage)["seconds"]
        table.append([f"wall time, {stage}", f"{seconds:.0f} s", "[2]"])
    table.append(["wall time, whole run", f"{wall:.0f} s", "[2]"])
    table.append(["peak RSS (largest process of the tree)", f"{peak_gb:.2f} GB", "[2]"])
    return table


def shown_command(command: list[str], variables: dict[str, str], work: Path) -> str:
    """``command`` as a user types it in ``work``, with the environment ``variables`` (this
    tree's code on PYTHONPATH, the torch threads) before it."""
    assigned = " ".join(f"{k}={shlex.quote(v)}" for k, v in variables.items())
    return f"cd {work} && {assigned} {shlex.join(['python', *command[1:]])}"


def parse_size(text: str) -> int:
    """A count, or ``all`` (0)."""
    return 0 if text == "all" else int(text)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    default_data = Path(os.environ.get("RLHF_TLDR_DATA", REPO.parent / "shared" / "data" / "tldr"))
    parser.add_argument("--data", type=Path, default=default_data, help="the shared samples")
    parser.add_argument("--work", type=Path, default=Path("/tmp/real_tldr"), help="scratch dir")
    parser.add_argument("--model", help="SFT's starting model (default: the recipe's pip:...)")
    parser.add_argument("--gguf-file", help="the GGUF file of --model's directory")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (OMP_NUM_THREADS) of the run (cpu default 1: see the docstring)",
    )
    sizes = parser.add_argument_group("sizes (default: the recipe's on cpu, all on cuda)")
    for name, kind, text in (
        ("sft-steps", parse_size, "SFT optimizer steps (all: one epoch)"),
        ("sft-batch", int, "SFT rows per step"),
        ("rm-pairs", parse_size, "training pairs for the reward model (all: one epoch)"),
        ("rm-batch", int, "reward-model pairs per step"),
        ("test-pairs", parse_size, f"held-out pairs scored (cpu default {CPU_TEST_PAIRS})"),
        ("ppo-steps", int, "PPO optimizer steps"),
        ("ppo-rollouts", int, "PPO experiences per update"),
        ("eval-posts", parse_size, "held-out posts evaluated (all: 245)"),
        ("max-words", int, "post words kept in every prompt (the tldr max_prompt_tokens)"),
        ("rm-lr", float, "reward-model learning rate"),
        ("freeze-fraction", float, "reward-model bottom fraction frozen"),
    ):
        sizes.add_argument(f"--{name}", type=kind, help=text)
    parser.add_argument("--set", action="append", default=[], help="more rlhf --set KEY=VALUE")
    parser.add_argument(
        "--baseline-only",
        action="store_true",
        help='print "longer summary wins" on the eval pairs of the finished run in --work',
    )
    return parser.parse_args()


def chosen_sizes(args: argparse.Namespace) -> Sizes:
    """The device's defaults with every size option given on the command line."""
    base = CUDA if args.device == "cuda" else Sizes()
    given = {f.name: getattr(args, f.name) for f in fields(Sizes)}
    return replace(base, **{name: value for name, value in given.items() if value is not None})


def main() -> None:
    args = arguments()
    work = args.work.resolve()
    run_dir = work / "runs" / RUN_NAME
    if args.baseline_only:
        longer, n = baseline(run_dir)
        print(f'"longer summary wins" on the {n} eval pairs of {run_dir}: {longer:.3f}')
        return
    if not (args.data / "split.py").is_file():
        sys.exit(f"no TL;DR samples with split.py in {args.data} (--data or RLHF_TLDR_DATA)")
    work.mkdir(parents=True, exist_ok=True)
    split_command = make_split(args.data.resolve(), work)
    sets = overrides(work / "data", chosen_sizes(args), args.device, args.model, args.gguf_file)
    sets += args.set
    command = [sys.executable, "-m", "rlhf_plugins.cli", "run", str(RECIPE), "--force"]
    command += [arg for value in sets for arg in ("--set", value)]
    command += ["--set", f"recipe.output_dir={json.dumps(str(work / 'runs'))}"]
    path = import_path(REPO, work, "tree")
    python_path = os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")]))
    variables = {"PYTHONPATH": python_path}
    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        variables["OMP_NUM_THREADS"] = str(threads)
    if args.device == "cpu":
        variables["CUDA_VISIBLE_DEVICES"] = ""
    env = {**os.environ, **variables, "TOKENIZERS_PARALLELISM": "false"}
    load_before = os.getloadavg()
    started = time.perf_counter()
    peak = peak_rss_gb(command, work, env, work / "run.log")
    wall = time.perf_counter() - started
    load_after = os.getloadavg()
    table = rows(run_dir, peak, wall)
    print(
        f"recipes/smol_tldr_ppo.toml on the real TL;DR split, --device {args.device}; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"({os.cpu_count()} CPUs)"
    )
    print_table(["figure", "value", "command"], table)
    print()
    baseline_command = [sys.executable, str(Path(__file__)), "--work", str(work), "--baseline-only"]
    for number, line in enumerate(
        (
            split_command,
            shown_command(command, variables, work),
            shlex.join(["python", *baseline_command[1:]]),
        ),
        start=1,
    ):
        print(f"[{number}] {line}")


if __name__ == "__main__":
    main()
