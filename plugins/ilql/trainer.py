"""The ``ilql`` training stage: an Accelerate loop over offline episodes.

Each of ``N`` processes takes its own ``per_device_train_batch_size`` rows of a global batch
drawn from a per-epoch permutation seeded by the recipe seed, so the data order depends only on
the step (resume skips nothing and repeats nothing). After every optimizer step the target Q
heads are Polyak-averaged toward the Q heads once ``target_sync_steps`` steps have passed.
Checkpoints (``accelerator.save_state``, marked complete by the stage) go to ``checkpoint-<step>/``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rlhf_builtins.ilql.batches import Episode, collate, episodes
from rlhf_builtins.ilql.maths import ilql_objective
from rlhf_builtins.ilql.models import (
    ILQLHeads,
    ILQLModel,
    heads_for,
    save_ilql_model,
)
from rlhf_builtins.ilql.settings import ILQLSettings
from rlhf_plugins import Dataset, Policy, StageContext, UserError, fit_max_length, model_context
from rlhf_plugins.torch_helpers import (
    eval_shard,
    fill_deepspeed_config,
    freeze_bottom,
    gathered_parameters,
    learning_rate_factor,
    load_models_whole,
    warmup_count,
)

LOGGED_TERMS = (
    "loss",
    "loss_q",
    "loss_v",
    "loss_cql",
    "loss_awac",
    "value_mean",
    "q_mean",
    "target_q_mean",
    "awac_weight_mean",
)


def steps_per_epoch(num_examples: int, batch_size: int, world: int) -> int:
    """Full global batches in one pass over the data (a partial last batch is dropped)."""
    return num_examples // (batch_size * world)


def total_steps(settings: ILQLSettings, per_epoch: int) -> int:
    """``max_steps`` when positive, else ``num_train_epochs`` passes (at least one step)."""
    if settings.max_steps > 0:
        return settings.max_steps
    return max(1, math.ceil(settings.num_train_epochs * per_epoch))


def batch_indices(
    step: int, *, num_examples: int, batch_size: int, world: int, rank: int, seed: int
) -> list[int]:
    """The rows that ``rank`` trains on at optimizer step ``step``: its slice of the
    ``step``-th global batch of the permutation of epoch ``step // steps_per_epoch``."""
    epoch, position = divmod(step, steps_per_epoch(num_examples, batch_size, world))
    start = (position * world + rank) * batch_size
    return list(epoch_order(num_examples, seed + epoch)[start : start + batch_size])


@functools.lru_cache(maxsize=1)
def epoch_order(num_examples: int, seed: int) -> tuple[int, ...]:
    """The permutation of one epoch, drawn once per epoch rather than at every step."""
    return tuple(
        torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed)).tolist()
    )


def batch_losses(
    model: Any, batch: Mapping[str, torch.Tensor], weights: ILQLSettings
) -> dict[str, torch.Tensor]:
    """Forward ``batch`` through ``model`` (an ``ILQLModel``, possibly wrapped) and score it
    with the objective's coefficients in ``weights``."""
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        state_indices=batch["state_indices"],
        actions=batch["actions"],
    )
    return ilql_objective(
        lm_logprobs=outputs.lm_logprobs,
        q_taken=outputs.q_taken,
        q_logprobs=outputs.q_logprobs,
        target_q=outputs.target_q,
        values=outputs.values,
        rewards=batch["rewards"],
        terminal=batch["terminal"],
        weights=weights,
    )


def starting_point(policy: Policy, two_qs: bool) -> tuple[Any, ILQLHeads]:
    """The causal LM to train and its heads: the saved heads when ``policy`` is an ILQL model
    (``ilql`` policy), fresh ones otherwise."""
    if callable(getattr(policy, "load_parts", None)):
        model, heads = policy.load_parts()
        if heads.config.two_qs != two_qs:
            raise UserError(
                f"ilql: the policy {policy.name} was trained with two_qs = "
                f"{heads.config.two_qs}; set two_qs to match"
            )
        return model, heads.to(dtype=model.get_output_embeddings().weight.dtype)
    model = policy.load_model()
    return model, heads_for(model, two_qs)


def sync_target_heads(model: Any, accelerator: Any, alpha: float) -> None:
    """One Polyak step of the target heads (parameters gathered first under ZeRO-3, the step
    taken on the main process and broadcast)."""
    heads = accelerator.unwrap_model(model).heads
    params = [*heads.q_heads.parameters(), *heads.target_q_heads.parameters()]
    with gathered_parameters(accelerator, params) as changes_here:
        if changes_here:
            heads.sync_targets(alpha)


class ILQLStage:
    """The ``StageFn`` the ``ilql`` factory returns (settings documented there)."""

    def __init__(
        self, policy: Policy, dataset: Dataset, eval_dataset: Dataset | None, settings: ILQLSettings
    ):
        self.policy = policy
        self.dataset = dataset
        self.eval_dataset = eval_dataset
        self.settings = settings

    def __call__(self, stage: StageContext) -> dict[str, Any]:
        s = self.settings
        accelerator = stage.accelerator()
        load_models_whole(accelerator)
        tokenizer = self.policy.load_tokenizer()
        pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        model, optimizer = self.build(accelerator, stage.num_processes)
        max_length = fit_max_length(
            s.max_length,
            model_context(accelerator.unwrap_model(model).base),
            policy=self.policy.name,
            component="ilql",
        )
        train, evals = self.load_episodes(tokenizer, max_length)
        per_epoch = steps_per_epoch(len(train), s.per_device_train_batch_size, stage.num_processes)
        if per_epoch == 0:
            raise UserError(
                f"ilql: {len(train)} rows make no full batch of "
                f"{s.per_device_train_batch_size} x {stage.num_processes} processes"
            )
        total = total_steps(s, per_epoch)
        step = resumed_at = self.resume(stage, accelerator)
        window: list[dict[str, torch.Tensor]] = []
        logged: dict[str, float] = {}
        started = time.monotonic()
        with stage.progress(total=total, desc="ilql") as progress:
            progress.update(step)
            while step < total:
                rows = batch_indices(
                    step,
                    num_examples=len(train),
                    batch_size=s.per_device_train_batch_size,
                    world=stage.num_processes,
                    rank=stage.process_index,
                    seed=stage.seed,
                )
                window.append(
                    self.train_step(
                        model,
                        optimizer,
                        accelerator,
                        step,
                        total,
                        collate([train[i] for i in rows], pad_id),
                    )
                )
                step += 1
                progress.update(1)
                if step % s.target_sync_steps == 0:
                    sync_target_heads(model, accelerator, s.alpha)
                if step % s.logging_steps == 0 or step == total:
                    logged = self.log_window(stage, accelerator, window, step, optimizer)
                    window = []
                    progress.set_postfix(loss=f"{logged['loss']:.4g}")
                if evals is not None and s.eval_steps and step % s.eval_steps == 0 and step < total:
                    stage.log(self.evaluate(model, accelerator, evals, pad_id, stage), step=step)
                if s.save_steps and step % s.save_steps == 0 and step < total:
                    self.save_checkpoint(stage, accelerator, step)
        metrics: dict[str, Any] = {**logged, "steps": step}
        metrics["train_seconds"] = round(time.monotonic() - started, 2)
        self.save_final(stage, accelerator, model, tokenizer)
        if evals is not None:
            # a rerun after a failed final evaluation resumes here instead of retraining
            if resumed_at != step:
                self.save_checkpoint(stage, accelerator, step)
            final_eval = self.evaluate(model, accelerator, evals, pad_id, stage)
            stage.log(final_eval, step=step)
            metrics.update(final_eval)
        return metrics

    def load_episodes(
        self, tokenizer: Any, max_length: int
    ) -> tuple[list[Episode], list[Episode] | None]:
        """The training episodes and, with an ``eval_dataset``, the evaluation ones, each at
        most ``max_length`` tokens."""
        s = self.settings
        train = episodes(
            self.dataset, tokenizer, max_length=max_length, normalize_rewards=s.normalize_rewards
        )
        if self.eval_dataset is None:
            return train, None
        evals = episodes(
            self.eval_dataset,
            tokenizer,
            max_length=max_length,
            normalize_rewards=s.normalize_rewards,
            label="eval_dataset",
        )
        return train, evals

    def build(self, accelerator: Any, world: int) -> tuple[Any, Any]:
        """The ``ILQLModel`` (layers frozen as asked) and its AdamW, prepared by Accelerate."""
        s = self.settings
        base, heads = starting_point(self.policy, s.two_qs)
        freeze_bottom(base, s.num_layers_unfrozen)
        if s.gradient_checkpointing:
            base.gradient_checkpointing_enable({"use_reentrant": False})
        model = ILQLModel(base, heads)
        model.train()
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=s.learning_rate,
            betas=(s.adam_beta1, s.adam_beta2),
            eps=s.adam_epsilon,
            weight_decay=s.weight_decay,
        )
        fill_deepspeed_config(
            accelerator,
            micro_batch_size=s.per_device_train_batch_size,
            gradient_accumulation_steps=1,
            num_processes=world,
            max_grad_norm=s.max_grad_norm,
        )
        return accelerator.prepare(model, optimizer)

    def train_step(
        self,
        model: Any,
        optimizer: Any,
        accelerator: Any,
        step: int,
        total: int,
        batch: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        s = self.settings
        factor = learning_rate_factor(
            step,
            schedule=s.lr_scheduler_type,
            warmup=warmup_count(s.warmup_steps, total),
            max_steps=total,
            min_ratio=s.min_learning_rate / s.learning_rate,
        )
        for group in optimizer.param_groups:
            group["lr"] = s.learning_rate * factor
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        losses = batch_losses(model, batch, self.settings)
        accelerator.backward(losses["loss"])
        if s.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), s.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {k: losses[k].detach().float() for k in LOGGED_TERMS}

    def log_window(
        self,
        stage: StageContext,
        accelerator: Any,
        window: list[dict[str, torch.Tensor]],
        step: int,
        optimizer: Any,
    ) -> dict[str, float]:
        """Log the mean of each term over the steps since the last log and over all ranks."""
        stacked = torch.stack([torch.stack([w[k] for k in LOGGED_TERMS]) for w in window])
        means = accelerator.reduce(stacked.mean(dim=0), reduction="mean").tolist()
        record = dict(zip(LOGGED_TERMS, means, strict=True))
        record["lr"] = optimizer.param_groups[0]["lr"]
        stage.log(record, step=step)
        return record

    @torch.no_grad()
    def evaluate(
        self, model: Any, accelerator: Any, evals: list[Episode], pad_id: int, stage: StageContext
    ) -> dict[str, float]:
        """Every loss term over the whole evaluation set (a mean per action, all ranks)."""
        rows, included = eval_shard(len(evals), stage.process_index, stage.num_processes)
        size = self.settings.per_device_eval_batch_size
        sums = torch.zeros(len(LOGGED_TERMS) + 1, device=accelerator.device)
        model.eval()
        for start in range(0, len(rows), size):
            chunk = slice(start, start + size)
            batch = collate([evals[i] for i in rows[chunk]], pad_id, included[chunk])
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            losses = batch_losses(model, batch, self.settings)
            count = (1 - batch["terminal"][:, :-1]).sum().float()
            sums += torch.stack([*(losses[k].float() * count for k in LOGGED_TERMS), count])
        model.train()
        sums = accelerator.reduce(sums, reduction="sum")
        count = sums[-1].clamp(min=1.0)
        return {
            f"eval/{k}": (v / count).item() for k, v in zip(LOGGED_TERMS, sums[:-1], strict=True)
        }

    def resume(self, stage: StageContext, accelerator: Any) -> int:
        """The step to continue from: the newest complete checkpoint's when the stage
        resumes, else 0."""
        loaded = stage.load_checkpoint(accelerator)
        return 0 if loaded is None else loaded[0]

    def save_checkpoint(self, stage: StageContext, accelerator: Any, step: int) -> None:
        stage.save_checkpoint(accelerator, step, {}, self.settings.save_total_limit)

    def save_final(self, stage: StageContext, accelerator: Any, model: Any, tokenizer: Any) -> None:
        """The plain causal LM (``save_pretrained``), the tokenizer and the heads beside them."""
        accelerator.wait_for_everyone()
        state = accelerator.get_state_dict(model)
        if stage.is_main_process:
            save_ilql_model(Path(stage.output_dir), accelerator.unwrap_model(model), state)
            tokenizer.save_pretrained(stage.output_dir)
        accelerator.wait_for_everyone()
