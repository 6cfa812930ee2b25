"""The ``ppo`` settings declaration: ``rlhf validate`` rejects each recipe mistake below (exit 2,
the key path and the rule in the message) before anything runs; the shipped recipes validate;
``num_layers_unfrozen = 0`` is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_PPO = Path(__file__).resolve().parent.parent / "recipes" / "tiny_ppo.toml"
KEY = "stages.ppo.trainer_settings"

MISTAKES = [
    # (--set overrides under stages.ppo.trainer_settings, the problem as rlhf validate prints it)
    (
        ["num_rollouts=7"],
        f"{KEY}: num_rollouts (7) must be a multiple of chunk_size (32)",
    ),
    (
        ["per_device_train_batch_size=24"],
        f"{KEY}: num_rollouts (64) must be a multiple of the minibatch, "
        "per_device_train_batch_size x gradient_accumulation_steps (24 x 1 = 24)",
    ),
    (
        ["gradient_accumulation_steps=3"],
        "per_device_train_batch_size x gradient_accumulation_steps (16 x 3 = 48)",
    ),
    (["learning_rate=-1.0"], f"{KEY}.learning_rate: must be > 0.0, got -1.0"),
    (["gamma=1.5"], f"{KEY}.gamma: must be <= 1.0, got 1.5"),
    (["max_steps=0"], f"{KEY}.max_steps: must be >= 1, got 0"),
    (["top_p=0.0"], f"{KEY}.top_p: must be > 0.0, got 0.0"),
    (["cliprange=0.0"], f"{KEY}.cliprange: must be > 0.0, got 0.0"),
    (["num_layers_unfrozen=-2"], f"{KEY}.num_layers_unfrozen: must be >= -1, got -2"),
    (["save_total_limit=0"], f"{KEY}.save_total_limit: must be >= 1, got 0"),
    (["eval_steps=0"], f"{KEY}.eval_steps: must be >= 1, got 0"),
    (["lora_dropout=1.0"], f"{KEY}.lora_dropout: must be < 1.0, got 1.0"),
    (
        ["ref_std=2.0"],
        f"{KEY}: ref_std (2) is used only with scale_reward = 'ref', not 'none'",
    ),
    (["lora_r=8"], f"{KEY}: a LoRA policy trains adapters on every layer"),
    (
        ["lora_r=8", "num_layers_unfrozen=-1", "separate_critic=true"],
        f"{KEY}: separate_critic is not available with a LoRA policy",
    ),
    (["lora_alpha=32.0"], f"{KEY}: lora_alpha set but lora_r is 0 (no LoRA adapter)"),
    (
        ["min_learning_rate=1e-3"],
        f"{KEY}: min_learning_rate (0.001) exceeds learning_rate (0.0001)",
    ),
    (
        ["warmup_steps=10"],
        f"{KEY}: lr_scheduler_type 'constant' has no warmup (warmup_steps = 10); "
        "use 'constant_with_warmup'",
    ),
    (
        ['lr_scheduler_type="cosine"', "warmup_steps=200"],
        f"{KEY}: warmup_steps (200) exceeds max_steps (160)",
    ),
    (["total_steps=100"], f"{KEY}.total_steps: unknown setting"),
]


def overrides(settings: list[str]) -> list[str]:
    return [arg for s in settings for arg in ("--set", f"{KEY}.{s}")]


@pytest.mark.parametrize(("settings", "message"), MISTAKES, ids=[" ".join(m[0]) for m in MISTAKES])
def test_validate_rejects_the_mistake(run_cli, settings, message):
    result = run_cli("validate", TINY_PPO, *overrides(settings))
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize(
    "settings",
    [
        [],
        ["num_layers_unfrozen=0"],
        ['lr_scheduler_type="constant_with_warmup"', "warmup_steps=0.1"],
    ],
    ids=["as shipped", "heads only", "warmup fraction"],
)
def test_good_settings_validate(run_cli, settings):
    result = run_cli("validate", TINY_PPO, *overrides(settings))
    assert result.exit_code == 0, result.output


def test_the_full_size_recipe_validates(run_cli):
    result = run_cli("validate", TINY_PPO.with_name("tldr_ppo.toml"))
    assert result.exit_code == 0, result.output


def test_the_trainer_reads_the_minibatch_from_the_shared_fields():
    from rlhf_builtins.ppo.settings import PPOSettings

    settings = PPOSettings(
        num_rollouts=64, per_device_train_batch_size=8, gradient_accumulation_steps=2
    )
    assert settings.minibatch_size == 16
