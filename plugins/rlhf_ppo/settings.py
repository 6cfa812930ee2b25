"""Checks of the ``ppo`` settings that need no model (pure Python, no torch).

Batch semantics, per process:

- ``chunk_size``: prompts generated and scored together (one ``generate`` call, one reward
  call).
- ``num_rollouts``: experiences collected before each PPO update; a multiple of ``chunk_size``.
- ``batch_size``: experiences per optimizer step; ``num_rollouts`` is a multiple of it, so an
  update makes ``num_rollouts / batch_size`` optimizer steps per PPO epoch.
- ``gradient_accumulation_steps``: ``batch_size`` is split into that many micro-batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlhf_plugins import UserError

POSITIVE_INTS = (
    "total_steps",
    "num_rollouts",
    "chunk_size",
    "batch_size",
    "ppo_epochs",
    "gradient_accumulation_steps",
    "max_new_tokens",
    "horizon",
    "keep_checkpoints",
    "max_skipped_chunks",
)
NON_NEGATIVE_FLOATS = ("init_kl_coef", "vf_coef", "weight_decay", "min_learning_rate", "top_k")
POSITIVE_FLOATS = ("learning_rate", "cliprange", "cliprange_value", "temperature")
UNIT_INTERVAL = ("gamma", "lam")


def settings_problems(s: Mapping[str, Any]) -> list[str]:
    """Every problem with the settings ``s`` (the ``ppo`` factory's keyword arguments)."""
    problems = [
        f"{k} must be positive, got {s[k]}" for k in POSITIVE_INTS + POSITIVE_FLOATS if s[k] <= 0
    ]
    problems += [f"{k} must be >= 0, got {s[k]}" for k in NON_NEGATIVE_FLOATS if s[k] < 0]
    problems += [f"{k} must lie in [0, 1], got {s[k]}" for k in UNIT_INTERVAL if not 0 <= s[k] <= 1]
    if problems:
        return problems
    if s["num_rollouts"] % s["chunk_size"]:
        problems.append(
            f"num_rollouts ({s['num_rollouts']}) must be a multiple of chunk_size "
            f"({s['chunk_size']}): every update collects whole generation chunks"
        )
    if s["num_rollouts"] % s["batch_size"]:
        problems.append(
            f"num_rollouts ({s['num_rollouts']}) must be a multiple of batch_size "
            f"({s['batch_size']}): every PPO epoch uses each experience once"
        )
    if s["batch_size"] % s["gradient_accumulation_steps"]:
        problems.append(
            f"batch_size ({s['batch_size']}) must be a multiple of "
            f"gradient_accumulation_steps ({s['gradient_accumulation_steps']})"
        )
    if s["num_layers_unfrozen"] == 0 or s["num_layers_unfrozen"] < -1:
        problems.append(
            "num_layers_unfrozen must be -1 (train every layer, full reference "
            f"copy) or a positive number of top layers, got {s['num_layers_unfrozen']}"
        )
    if s["kl_controller"] == "adaptive" and (s["target"] is None or s["target"] <= 0):
        problems.append("kl_controller 'adaptive' needs a positive target KL")
    if s["scale_reward"] == "ref" and s["ref_std"] is not None and s["ref_std"] <= 0:
        problems.append(f"ref_std must be positive, got {s['ref_std']}")
    if not 0 < s["top_p"] <= 1:
        problems.append(f"top_p must lie in (0, 1], got {s['top_p']}")
    if s["lora_r"] < 0:
        problems.append(f"lora_r must be >= 0 (0: no LoRA), got {s['lora_r']}")
    if s["lora_r"] and s["num_layers_unfrozen"] != -1:
        problems.append(
            "a LoRA policy trains adapters on every layer: leave num_layers_unfrozen "
            "at -1 (the reference is the policy with its adapter switched off)"
        )
    if s["lora_r"] and s["separate_critic"]:
        problems.append("separate_critic is not available with a LoRA policy")
    return problems


def check_settings(s: Mapping[str, Any]) -> None:
    """Raise one ``UserError`` listing every problem, or return."""
    if problems := settings_problems(s):
        raise UserError("ppo settings: " + "; ".join(problems))
