"""The ``ppo`` trainer's settings, declared once: the shared training settings (spelled like
``TrainingArguments``) at PPO's defaults, plus trlX's PPO names. ``rlhf validate`` checks
every range and rule here; the trainer reads the validated instance. Imports pydantic only.

Batch semantics, per process:

- ``chunk_size``: prompts generated and scored together (one ``generate`` call, one reward
  call).
- ``num_rollouts``: experiences collected before each PPO update; a multiple of ``chunk_size``.
- a minibatch (trlX's ``train.batch_size``) of ``per_device_train_batch_size x
  gradient_accumulation_steps`` experiences per optimizer step, in
  ``gradient_accumulation_steps`` forward passes of ``per_device_train_batch_size`` (trlX's
  ``minibatch_size``); ``num_rollouts`` is a multiple of it, so an update makes
  ``num_rollouts / minibatch`` optimizer steps per PPO epoch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhf_plugins import LearningRateFloor

PPOTrainingSettings = LearningRateFloor.with_defaults(
    learning_rate=1e-5, weight_decay=1e-6, logging_steps=1, save_steps=0
)
"""The shared fields (with the schedule's floor, ``min_learning_rate``) at PPO's defaults:
AdamW at 1e-5 with weight decay 1e-6, every update logged, no intermediate checkpoints."""


class RolloutSettings(PPOTrainingSettings):
    """What every trainer of the rollout engine (``ppo``, ``policy-gradient``) takes: batches,
    the KL to the reference, the critic (when one learns), reward scaling, sampling, LoRA."""

    max_steps: int = Field(
        1000, ge=1, description="optimizer steps to train (the last update may stop early)"
    )
    num_rollouts: int = Field(
        128,
        ge=1,
        description="experiences collected per update, per process; a multiple of chunk_size "
        "and of the minibatch (per_device_train_batch_size x gradient_accumulation_steps)",
    )
    chunk_size: int = Field(
        16, ge=1, description="prompts per generate call and per reward call, per process"
    )
    ppo_epochs: int = Field(4, ge=1, description="passes over each rollout")
    num_layers_unfrozen: int = Field(
        2,
        ge=-1,
        description="trained LM blocks: -1 all (full frozen reference copy), k the top k "
        "(hydra reference: copies of those blocks), 0 none (only the value head learns; the "
        "frozen policy is its own reference)",
    )
    separate_critic: bool = Field(
        False, description="value head on its own trunk copy (trained fully)"
    )
    kl_controller: Literal["adaptive", "fixed"] = Field(
        "adaptive", description="KL coefficient: adaptive (Ziegler et al.) or fixed"
    )
    init_kl_coef: float = Field(0.05, ge=0, description="initial (or fixed) KL coefficient")
    kl_update: Literal["samples", "trlx"] = Field(
        "samples",
        description="adaptive controller cadence: one update of num_rollouts per rollout, or "
        "trlX's ppo_epochs updates of the minibatch (docs/ppo.md, step 7)",
    )
    target: float = Field(
        6.0, gt=0, description="adaptive controller's target KL (per sample, summed over tokens)"
    )
    horizon: int = Field(10000, ge=1, description="adaptive controller's horizon")
    kl_estimator: Literal["k1", "k3"] = Field(
        "k1", description="per-token KL estimate: k1 (log p - log q) or k3 (non-negative)"
    )
    cliprange_value: float = Field(0.2, gt=0, description="value clip around the old values")
    vf_coef: float = Field(1.0, ge=0, description="value-loss weight")
    scale_reward: Literal["running", "ref", "none"] = Field(
        "none",
        description="divide scores by their running sample std over all processes (running), "
        "by ref_std or the first chunk's std (ref), or not at all (none)",
    )
    ref_std: float | None = Field(
        None, gt=0, description="std for scale_reward = 'ref' (unset: the first chunk's)"
    )
    cliprange_reward: float = Field(
        10.0, ge=0, description="clip the (scaled) scores to +-this (0: no clipping)"
    )
    max_new_tokens: int = Field(40, ge=1, description="response length limit (tokens)")
    do_sample: bool = Field(True, description="sample rollouts (false: greedy)")
    temperature: float = Field(
        1.0, gt=0, description="rollout sampling temperature; log-probabilities use it too"
    )
    top_k: int = Field(0, ge=0, description="rollout top-k sampling (0: off)")
    top_p: float = Field(1.0, gt=0, le=1, description="rollout nucleus sampling (1: off)")
    max_prompt_length: int | None = Field(
        None,
        ge=1,
        description="prompts cut from the left to this many tokens (unset: the policy's "
        "context minus max_new_tokens)",
    )
    lora_r: int = Field(0, ge=0, description="rank of a peft LoRA adapter to train (0: no LoRA)")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    lora_target_modules: list[str] | None = Field(
        None, description="modules given adapters (unset: peft's default for the model)"
    )
    eval_samples: int = Field(
        64, ge=1, description="held-out prompts per evaluation (all processes together)"
    )
    max_skipped_chunks: int = Field(
        8, ge=1, description="chunks with unusable rewards in a row before the stage fails"
    )

    @property
    def minibatch_size(self) -> int:
        """Experiences per optimizer step, per process (trlX's ``train.batch_size``)."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @model_validator(mode="after")
    def _batches_divide(self) -> RolloutSettings:
        if self.num_rollouts % self.chunk_size:
            raise ValueError(
                f"num_rollouts ({self.num_rollouts}) must be a multiple of chunk_size "
                f"({self.chunk_size}): every update collects whole generation chunks"
            )
        if self.num_rollouts % self.minibatch_size:
            raise ValueError(
                f"num_rollouts ({self.num_rollouts}) must be a multiple of the minibatch, "
                f"per_device_train_batch_size x gradient_accumulation_steps "
                f"({self.per_device_train_batch_size} x {self.gradient_accumulation_steps} = "
                f"{self.minibatch_size}): every PPO epoch uses each experience once"
            )
        return self

    @model_validator(mode="after")
    def _reward_scaling(self) -> RolloutSettings:
        if self.ref_std is not None and self.scale_reward != "ref":
            raise ValueError(
                f"ref_std ({self.ref_std:g}) is used only with scale_reward = 'ref', "
                f"not {self.scale_reward!r}"
            )
        return self

    @model_validator(mode="after")
    def _schedule(self) -> RolloutSettings:
        if self.lr_scheduler_type == "constant" and self.warmup_steps > 0:
            raise ValueError(
                f"lr_scheduler_type 'constant' has no warmup (warmup_steps = "
                f"{self.warmup_steps:g}); use 'constant_with_warmup'"
            )
        return self

    @model_validator(mode="after")
    def _lora(self) -> RolloutSettings:
        if not self.lora_r:
            unused = sorted(
                {"lora_alpha", "lora_dropout", "lora_target_modules"} & self.model_fields_set
            )
            if unused:
                raise ValueError(f"{', '.join(unused)} set but lora_r is 0 (no LoRA adapter)")
            return self
        if self.num_layers_unfrozen != -1:
            raise ValueError(
                "a LoRA policy trains adapters on every layer: leave num_layers_unfrozen "
                "at -1 (the reference is the policy with its adapter switched off)"
            )
        if self.separate_critic:
            raise ValueError("separate_critic is not available with a LoRA policy")
        return self


class PPOSettings(RolloutSettings):
    """PPO (trlX's ``PPOConfig``) on the shared training settings: GAE and the clipped
    surrogate."""

    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    cliprange: float = Field(0.2, gt=0, description="policy ratio clip (1 +- cliprange)")
    whiten_advantages: bool = Field(True, description="whiten advantages across processes")


class PolicyGradientSettings(RolloutSettings):
    """The ``policy-gradient`` engine: PPO's loop with a group of completions per prompt, the
    KL to the reference as a reward penalty or a loss term, and DAPO's filters. The advantage
    estimator and the policy loss are components with their own settings."""

    num_generations: int = Field(
        4, ge=1, description="completions sampled per prompt (a group); divides chunk_size"
    )
    kl_placement: Literal["reward", "loss"] = Field(
        "loss",
        description="the KL to the reference as a per-token reward penalty (PPO) or a loss "
        "term weighted by the KL coefficient (GRPO)",
    )
    kl_controller: Literal["adaptive", "fixed"] = Field(
        "fixed", description="KL coefficient: adaptive (Ziegler et al.) or fixed"
    )
    init_kl_coef: float = Field(
        0.04, ge=0, description="initial (or fixed) KL coefficient (0: no KL term)"
    )
    kl_estimator: Literal["k1", "k2", "k3", "low_var_kl"] = Field(
        "k3",
        description="per-token KL estimate: k1 (log p - log q), k2 (half its square), k3 "
        "(non-negative), low_var_kl (k3 clamped to +-10, verl's)",
    )
    filter_groups: bool = Field(
        False,
        description="drop groups whose completions all scored the same (DAPO's dynamic "
        "sampling) and sample more until num_rollouts remain",
    )
    overlong_buffer: int = Field(
        0,
        ge=0,
        description="DAPO's soft overlong penalty: responses within this many tokens of "
        "max_new_tokens lose up to overlong_penalty, linearly (0: off)",
    )
    overlong_penalty: float = Field(
        1.0, ge=0, description="the largest overlong penalty, at max_new_tokens"
    )

    @model_validator(mode="after")
    def _groups(self) -> PolicyGradientSettings:
        if self.chunk_size % self.num_generations:
            raise ValueError(
                f"chunk_size ({self.chunk_size}) must be a multiple of num_generations "
                f"({self.num_generations}): a chunk holds whole groups"
            )
        if self.overlong_buffer >= self.max_new_tokens:
            raise ValueError(
                f"overlong_buffer ({self.overlong_buffer}) must be below max_new_tokens "
                f"({self.max_new_tokens})"
            )
        return self
