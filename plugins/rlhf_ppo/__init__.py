"""Trainer ``ppo``: PPO with a value head on the policy trunk and a hydra reference (trlX's
design) on Accelerate, scoring rollouts with any registered reward function.

This hook module imports nothing heavy; ``rlhf_ppo.trainer`` is imported when a stage runs.
See docs/ppo.md for every setting.
"""

from __future__ import annotations

from typing import Literal

from rlhf_plugins import Dataset, Policy, RewardFunction, StageFn, hookimpl
from rlhf_plugins.context import generation_settings


@hookimpl
def register_trainers(register):
    register(
        "ppo",
        ppo,
        description="PPO (trlX-style: value head on the trunk, hydra "
        "reference) with any reward function.",
    )


def ppo(
    policy: Policy,
    reward: RewardFunction,
    dataset: Dataset,
    eval_dataset: Dataset | None = None,
    total_steps: int = 1000,
    num_rollouts: int = 128,
    chunk_size: int = 16,
    batch_size: int = 8,
    ppo_epochs: int = 4,
    gradient_accumulation_steps: int = 1,
    num_layers_unfrozen: int = 2,
    separate_critic: bool = False,
    kl_controller: Literal["adaptive", "fixed"] = "adaptive",
    init_kl_coef: float = 0.05,
    kl_update: Literal["samples", "trlx"] = "samples",
    target: float | None = 6.0,
    horizon: int = 10000,
    kl_estimator: Literal["k1", "k3"] = "k1",
    gamma: float = 1.0,
    lam: float = 0.95,
    cliprange: float = 0.2,
    cliprange_value: float = 0.2,
    vf_coef: float = 1.0,
    scale_reward: Literal["running", "ref", "none"] = "none",
    ref_std: float | None = None,
    cliprange_reward: float | None = 10.0,
    whiten_advantages: bool = True,
    max_new_tokens: int = 40,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_prompt_length: int | None = None,
    learning_rate: float = 1e-5,
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine",
    min_learning_rate: float = 0.0,
    warmup_steps: int = 0,
    weight_decay: float = 1e-6,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.999,
    adam_epsilon: float = 1e-8,
    max_grad_norm: float | None = 1.0,
    gradient_checkpointing: bool = False,
    lora_r: int = 0,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
    lora_target_modules: list[str] | None = None,
    checkpoint_interval: int = 0,
    keep_checkpoints: int = 2,
    eval_interval: int = 0,
    eval_samples: int = 64,
    max_skipped_chunks: int = 8,
) -> StageFn:
    """Train ``policy`` with PPO on the prompts of ``dataset`` (view ``prompts``: a ``prompt``
    column; every other column reaches ``reward`` as a keyword list). Counts (``total_steps``,
    ``checkpoint_interval``, ``eval_interval``) are optimizer steps; batch sizes are per
    process (see ``rlhf_ppo.config``). ``num_layers_unfrozen = k`` trains the top k blocks and
    keeps a hydra reference of those blocks; -1 trains everything against a full frozen copy.
    The final policy and tokenizer are saved into the stage directory, the value head beside
    them (``value_head.safetensors``)."""
    settings = dict(locals())
    from rlhf_ppo.config import check_settings

    check_settings(settings)
    from rlhf_ppo.trainer import PPOStage

    return PPOStage(
        policy=settings.pop("policy"),
        reward=settings.pop("reward"),
        dataset=settings.pop("dataset"),
        eval_dataset=settings.pop("eval_dataset"),
        settings=settings,
    )


ppo.sequence_length = generation_settings
