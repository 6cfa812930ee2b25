"""The ``ppo`` stage: rollouts, scoring, GAE and clipped PPO updates on Accelerate.

One update: every process generates ``num_rollouts`` responses in chunks of ``chunk_size``
(KV cache, left padding, stop at EOS), scores its own chunks with the reward function, computes
log-probabilities, values and reference log-probabilities in one pass, turns scores and the KL
penalty into per-token rewards, estimates advantages (GAE, whitened across processes) and runs
``ppo_epochs`` passes of clipped policy and value losses over minibatches of
``per_device_train_batch_size x gradient_accumulation_steps`` experiences.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from rlhf_builtins.ppo import maths
from rlhf_builtins.ppo.kl_control import make_kl_controller, update_steps
from rlhf_builtins.ppo.models import Responses, build_models
from rlhf_builtins.ppo.rollout import Chunk, PromptSampler, Rollout, model_inputs
from rlhf_builtins.ppo.settings import PPOSettings
from rlhf_plugins import (
    Policy,
    RewardFunction,
    StageContext,
    StageFailed,
    UserError,
    model_context,
    prompt_budget,
    require_columns,
    reward_scores,
)
from rlhf_plugins.torch_helpers import (
    RunningMoments,
    SamplingSettings,
    encode_prompts,
    ensure_pad_token,
    eval_shard,
    fill_deepspeed_config,
    gathered_for_generation,
    generate_texts,
    learning_rate_factor,
    load_models_whole,
    warmup_count,
    zero3_enabled,
)

logger = logging.getLogger("rlhf_builtins.ppo")

VALUE_HEAD_FILE = "value_head.safetensors"


@dataclass
class PPOStage:
    """The stage function the ``ppo`` factory returns."""

    policy: Policy
    reward: RewardFunction
    dataset: Any
    eval_dataset: Any
    settings: PPOSettings

    def __call__(self, stage: StageContext) -> dict[str, float]:
        for slot, data in (("dataset", self.dataset), ("eval_dataset", self.eval_dataset)):
            require_columns(data, ("prompt",), component="ppo", slot=slot, view="prompts")
        trainer = PPOTrainer(
            stage,
            self.policy,
            self.reward,
            self.dataset,
            self.eval_dataset,
            self.settings,
        )
        return trainer.train()


class PPOTrainer:
    """Holds the models, optimizer and counters of one ``ppo`` stage."""

    def __init__(
        self,
        stage: StageContext,
        policy: Policy,
        reward: RewardFunction,
        dataset: Any,
        eval_dataset: Any,
        settings: PPOSettings,
    ):
        self.stage, self.reward, self.eval_dataset, self.settings = (
            stage,
            reward,
            eval_dataset,
            settings,
        )
        s = settings
        self.accelerator = stage.accelerator(
            gradient_accumulation_steps=s.gradient_accumulation_steps
        )
        # ZeRO-3: the reference copies whole weights before prepare; reward models stay whole
        load_models_whole(self.accelerator)
        self._configure_deepspeed()
        self.device = self.accelerator.device
        self.tokenizer = ensure_pad_token(policy.load_tokenizer())
        lora = (
            dict(
                r=s.lora_r,
                alpha=s.lora_alpha,
                dropout=s.lora_dropout,
                target_modules=s.lora_target_modules,
            )
            if s.lora_r
            else None
        )
        base = policy.load_model(dtype=torch.float32)
        self.max_prompt_length = prompt_budget(
            s.max_prompt_length,
            s.max_new_tokens,
            model_context(base),
            policy=policy.name,
            component="ppo",
        )
        model, self.reference = build_models(
            base,
            lora=lora,
            num_layers_unfrozen=s.num_layers_unfrozen,
            separate_critic=s.separate_critic,
        )
        if s.gradient_checkpointing:
            for trunk in (model.policy, model.critic):
                if trunk is not None:
                    trunk.gradient_checkpointing_enable({"use_reentrant": False})
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            self.trainable,
            lr=s.learning_rate,
            eps=s.adam_epsilon,
            betas=(s.adam_beta1, s.adam_beta2),
            weight_decay=s.weight_decay,
        )
        warmup = warmup_count(s.warmup_steps, s.max_steps)
        min_ratio = s.min_learning_rate / s.learning_rate
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: learning_rate_factor(
                step,
                schedule=s.lr_scheduler_type,
                warmup=warmup,
                max_steps=s.max_steps,
                min_ratio=min_ratio,
            ),
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # DeepSpeed may have cast the policy (bf16/fp16): the reference computes like it
        self.reference.to(self.device, next(self.unwrapped.policy.parameters()).dtype)
        self.sampling = SamplingSettings(
            max_new_tokens=s.max_new_tokens,
            do_sample=s.do_sample,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
        )
        self.sampler = PromptSampler(dataset, stage.seed, stage.process_index, stage.num_processes)
        self.extra_columns = [c for c in dataset.column_names if c != "prompt"]
        self.kl_controller = make_kl_controller(
            s.kl_controller, s.init_kl_coef, s.target, s.horizon
        )
        self.moments = RunningMoments()
        self.ref_std = s.ref_std
        self.step = 0
        self.skipped_chunks = 0

    # -- distributed helpers -------------------------------------------------------------

    def _configure_deepspeed(self) -> None:
        if self.accelerator.state.deepspeed_plugin is None:
            return
        if zero3_enabled(self.accelerator) and self.settings.lora_r:
            raise UserError(
                "ppo: lora_r > 0 runs with DeepSpeed ZeRO stages 0-2 (merging the adapter "
                "into partitioned ZeRO-3 weights is not supported); use a ZeRO-2 config such "
                "as recipes/deepspeed/zero2.json (an adapter's weights are small anyway)"
            )
        fill_deepspeed_config(
            self.accelerator,
            micro_batch_size=self.settings.per_device_train_batch_size,
            gradient_accumulation_steps=self.settings.gradient_accumulation_steps,
            num_processes=self.stage.num_processes,
            max_grad_norm=self.settings.max_grad_norm,
        )

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes (the identity on one process)."""
        if self.stage.num_processes == 1:
            return tensor
        return self.accelerator.reduce(tensor.to(self.device), reduction="sum")

    @property
    def unwrapped(self) -> Any:
        return self.accelerator.unwrap_model(self.model)

    @contextmanager
    def full_model(self) -> Iterator[Any]:
        """The unwrapped model in eval mode, for generation and scoring; under ZeRO-3 with
        every parameter gathered on every rank (``rlhf_plugins.torch_helpers.gathered_for_generation``),
        so the reference pass may call the policy's blocks and shared head directly."""
        with gathered_for_generation(self.accelerator, self.model) as model:
            model.eval()
            try:
                yield model
            finally:
                model.train()

    # -- rollouts ------------------------------------------------------------------------

    @torch.no_grad()
    def generate_chunk(self, prompts: list[str]) -> Chunk:
        """Generate one chunk and compute its old log-probabilities, values and reference
        log-probabilities in one pass."""
        tokenizer = self.tokenizer
        batch = encode_prompts(tokenizer, prompts, self.max_prompt_length, self.device)
        with self.full_model() as model, self.accelerator.autocast():
            sequences = model.policy.generate(**batch, **self.sampling.generate_kwargs(tokenizer))
            start = batch["input_ids"].shape[1]
            responses = sequences[:, start:]
            mask = maths.response_mask(responses, tokenizer.eos_token_id)
            width = max(1, int(mask.sum(dim=1).max()))
            responses, mask = responses[:, :width], mask[:, :width]
            responses = responses.masked_fill(mask == 0, tokenizer.pad_token_id)
            inputs = model_inputs(batch["input_ids"], batch["attention_mask"], responses, mask)
            scored = Responses(start, responses, self.settings.temperature)
            logprobs, values, ref_logprobs = self.reference.run(model, inputs, scored)
        return Chunk(
            queries=[
                row[m.bool()]
                for row, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)
            ],
            responses=responses,
            mask=mask,
            logprobs=logprobs * mask,
            ref_logprobs=ref_logprobs * mask,
            values=values * mask,
        )

    def score(self, rows: dict[str, list], chunk: Chunk) -> bool:
        """Score the chunk with the reward function; False (on every process) when any
        process got unusable scores, so that all of them skip this chunk together."""
        completions = self.tokenizer.batch_decode(chunk.responses, skip_special_tokens=True)
        extra = {c: rows[c] for c in self.extra_columns}
        scores, problem = reward_scores(self.reward, rows["prompt"], completions, extra)
        failed = self.reduce(torch.tensor([0.0 if scores is not None else 1.0], device=self.device))
        if float(failed.item()) > 0:
            self.skipped_chunks += 1
            where = f"the reward function {problem}" if problem else "another process"
            logger.warning(
                "ppo: skipped a chunk of %d samples (%s); %d skipped so far",
                len(completions),
                where,
                self.skipped_chunks,
            )
            return False
        raw = torch.tensor(scores, dtype=torch.float32, device=self.device)
        if self.settings.scale_reward == "running" or (
            self.settings.scale_reward == "ref" and self.ref_std is None
        ):
            self.add_to_moments(raw)
            if self.settings.scale_reward == "ref":
                self.ref_std = self.moments.std or 1.0
        divisor = {"running": self.moments.std, "ref": self.ref_std}.get(self.settings.scale_reward)
        scaled = maths.scale_scores(raw, divisor, self.settings.cliprange_reward)
        chunk.scores, chunk.scaled_scores = raw, scaled
        return True

    def add_to_moments(self, scores: torch.Tensor) -> None:
        """Merge ``scores`` of every process into the running reward moments."""
        x64 = scores.detach().to(torch.float64)
        count = torch.tensor(float(x64.numel()), dtype=torch.float64, device=x64.device)
        totals = self.reduce(torch.stack([count, x64.sum(), (x64 * x64).sum()]))
        self.moments.add(*totals.tolist())

    def collect_rollout(self) -> tuple[Rollout, dict[str, float]]:
        """``num_rollouts`` scored experiences with advantages and returns, plus statistics."""
        s, chunks, consecutive = self.settings, [], 0
        started = time.perf_counter()
        while len(chunks) * s.chunk_size < s.num_rollouts:
            rows = self.sampler.next_rows(s.chunk_size)
            chunk = self.generate_chunk(rows["prompt"])
            if self.score(rows, chunk):
                chunks.append(chunk)
                consecutive = 0
                continue
            consecutive += 1
            if consecutive >= s.max_skipped_chunks:
                raise StageFailed(
                    f"stage '{self.stage.name}' failed: ppo: the reward function gave "
                    f"unusable scores for {consecutive} chunks in a row (max_skipped_chunks); "
                    "see the warnings above"
                )
        rollout = Rollout.from_chunks(chunks, self.tokenizer.pad_token_id)
        kl = maths.kl_penalty(rollout.logprobs, rollout.ref_logprobs, s.kl_estimator) * rollout.mask
        rewards = maths.token_rewards(
            rollout.scaled_scores, kl, rollout.mask, self.kl_controller.value
        )
        advantages, rollout.returns = maths.gae(
            rewards, rollout.values, rollout.mask, s.gamma, s.lam
        )
        if s.whiten_advantages:
            advantages = maths.masked_whiten(advantages, rollout.mask, reduce=self.reduce)
        rollout.advantages = advantages
        n = len(rollout)
        totals = self.reduce(
            torch.stack(
                [
                    torch.tensor(float(n), device=rollout.scores.device),
                    rollout.scores.sum(),
                    (rollout.scores**2).sum(),
                    kl.sum(),
                    rollout.mask.sum().float(),
                    (-rollout.logprobs * rollout.mask).sum(),
                    rollout.scaled_scores.sum(),
                ]
            ).to(torch.float64)
        ).tolist()
        count, total_tokens = totals[0], totals[4]
        mean = totals[1] / count
        stats = {
            "reward/mean": mean,
            "reward/std": max(totals[2] / count - mean**2, 0.0) ** 0.5,
            "reward/scaled_mean": totals[6] / count,
            "kl": totals[3] / count,
            "kl_coef": self.kl_controller.value,
            "rollout/entropy": totals[5] / total_tokens,
            "rollout/response_length": total_tokens / count,
            "rollout/samples": count,
            "rollout/tokens": total_tokens,
            "time/rollout": time.perf_counter() - started,
            "skipped_chunks": self.skipped_chunks,
        }
        return rollout, stats

    # -- optimisation --------------------------------------------------------------------

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logprobs, values, entropy = self.model(
            **batch["inputs"],
            response_start=batch["response_start"],
            responses=batch["responses"],
            temperature=self.settings.temperature,
            entropy=True,
        )
        mask = batch["mask"]
        pg_loss, pg_stats = maths.policy_loss(
            logprobs, batch["logprobs"], batch["advantages"], mask, self.settings.cliprange
        )
        vf_loss, vf_stats = maths.value_loss(
            values, batch["values"], batch["returns"], mask, self.settings.cliprange_value
        )
        with torch.no_grad():
            stats = {
                **pg_stats,
                **vf_stats,
                "loss/policy": pg_loss.detach(),
                "loss/value": vf_loss.detach(),
                "policy/entropy": maths.masked_mean(entropy, mask),
            }
        return pg_loss + self.settings.vf_coef * vf_loss, stats

    def optimise(self, rollout: Rollout, progress: Any) -> dict[str, float]:
        """``ppo_epochs`` passes over ``rollout`` in shuffled minibatches; stops early at
        ``max_steps``: minibatches of ``minibatch_size`` experiences per optimizer step, in
        ``gradient_accumulation_steps`` forward passes of ``per_device_train_batch_size``.
        Returns the mean of each loss statistic."""
        s, sums, counted = self.settings, {}, 0
        micro = s.per_device_train_batch_size
        pad_id = self.tokenizer.pad_token_id
        started = time.perf_counter()
        self.model.train()
        for _ in range(s.ppo_epochs):
            order = torch.randperm(len(rollout)).tolist()
            for first in range(0, len(order), s.minibatch_size):
                minibatch = order[first : first + s.minibatch_size]
                for start in range(0, len(minibatch), micro):
                    with self.accelerator.accumulate(self.model):
                        loss, stats = self.loss(
                            rollout.minibatch(minibatch[start : start + micro], pad_id)
                        )
                        self.accelerator.backward(loss)
                        if self.accelerator.sync_gradients and s.max_grad_norm is not None:
                            self.accelerator.clip_grad_norm_(self.trainable, s.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                    for key, value in stats.items():
                        sums[key] = sums.get(key, 0.0) + value.detach()
                    counted += 1
                self.scheduler.step()
                self.step += 1
                progress.update(1)
                if self.step >= s.max_steps:
                    break
            if self.step >= s.max_steps:
                break
        keys = sorted(sums)
        means = self.reduce(torch.stack([sums[k] for k in keys]).double() / counted)
        result = dict(zip(keys, (means / self.stage.num_processes).tolist(), strict=True))
        result["time/optimise"] = time.perf_counter() - started
        result["learning_rate"] = self.scheduler.get_last_lr()[0]
        return result

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Greedy completions for the first ``eval_samples`` held-out prompts (each process
        its ``eval_shard``), scored by the reward function: ``eval/reward_mean``."""
        count = min(len(self.eval_dataset), self.settings.eval_samples)
        if count == 0:
            return {}
        indices, included = eval_shard(count, self.stage.process_index, self.stage.num_processes)
        rows = self.eval_dataset.select(indices)[:]
        greedy = SamplingSettings(max_new_tokens=self.settings.max_new_tokens)
        with self.full_model() as model, self.accelerator.autocast():
            completions = generate_texts(
                model.policy,
                self.tokenizer,
                rows["prompt"],
                greedy,
                batch_size=self.settings.per_device_eval_batch_size,
                max_prompt_length=self.max_prompt_length,
            )
        extra = {c: rows[c] for c in self.eval_dataset.column_names if c != "prompt"}
        scores, problem = reward_scores(self.reward, rows["prompt"], completions, extra)
        ok = scores is not None
        kept = [x for x, keep in zip(scores, included, strict=True) if keep] if ok else []
        totals = self.reduce(
            torch.tensor([sum(kept), sum(included), 0.0 if ok else 1.0], dtype=torch.float64)
        )
        if float(totals[2]) > 0:
            logger.warning("ppo: evaluation skipped (%s)", problem or "on another process")
            return {}
        return {"eval/reward_mean": float(totals[0] / totals[1]), "eval/samples": int(totals[1])}

    # -- checkpoints ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "skipped_chunks": self.skipped_chunks,
            "ref_std": self.ref_std,
            "sampler": self.sampler.state_dict(),
            "kl_controller": self.kl_controller.state_dict(),
            "moments": self.moments.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def save_checkpoint(self) -> Path:
        """Model, optimizer and RNG states (Accelerate) plus the counters of ``state_dict`` in
        ``checkpoint-<step>/``; keeps the newest ``save_total_limit``."""
        return self.stage.save_checkpoint(
            self.accelerator, self.step, self.state_dict(), self.settings.save_total_limit
        )

    def load_checkpoint(self) -> bool:
        """Continue from the newest complete checkpoint when the stage resumes."""
        loaded = self.stage.load_checkpoint(self.accelerator)
        if loaded is None:
            return False
        state = loaded[1]
        self.step, self.skipped_chunks = int(state["step"]), int(state["skipped_chunks"])
        self.ref_std = state["ref_std"]
        self.sampler.load_state_dict(state["sampler"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.moments.load_state_dict(state["moments"])
        self.scheduler.load_state_dict(state["scheduler"])
        return True

    def save_final(self) -> None:
        """The policy as a plain ``from_pretrained`` causal LM plus tokenizer in the stage
        directory; the value head (and a separate critic's trunk) beside it."""
        out = self.stage.output_dir
        state = self.accelerator.get_state_dict(self.model)
        if not self.stage.is_main_process:
            return
        model = self.unwrapped
        policy_state = {
            k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")
        }
        if self.settings.lora_r:
            self.reference.peft_model[0].merge_and_unload().save_pretrained(out)
        else:
            model.policy.save_pretrained(out, state_dict=policy_state)
        self.tokenizer.save_pretrained(out)
        head = {
            k.removeprefix("value_head."): v.contiguous()
            for k, v in state.items()
            if k.startswith("value_head.")
        }
        save_file(
            head,
            str(out / VALUE_HEAD_FILE),
            metadata={
                "hidden_size": str(model.policy.config.hidden_size),
                "layout": "Linear(h,2h)-ReLU-Linear(2h,1)",
                "input": "critic" if model.critic is not None else "policy trunk",
            },
        )
        if model.critic is not None:
            critic_state = {
                k.removeprefix("critic."): v for k, v in state.items() if k.startswith("critic.")
            }
            model.critic.save_pretrained(out / "critic", state_dict=critic_state)

    # -- the loop ------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        s, stage = self.settings, self.stage
        resumed_from = None
        if self.load_checkpoint():
            resumed_from = self.step
        progress = stage.progress(total=s.max_steps, desc="ppo steps")
        progress.update(self.step)
        last: dict[str, float] = {}
        while self.step < s.max_steps:
            before = self.step
            started = time.perf_counter()
            rollout, stats = self.collect_rollout()
            stats.update(self.optimise(rollout, progress))
            for n_steps in update_steps(
                s.kl_update,
                num_rollouts=s.num_rollouts,
                batch_size=s.minibatch_size,
                ppo_epochs=s.ppo_epochs,
            ):
                self.kl_controller.update(stats["kl"], n_steps=n_steps)
            elapsed = time.perf_counter() - started
            stats["samples_per_s"] = stats["rollout/samples"] / elapsed
            stats["tokens_per_s"] = stats["rollout/tokens"] / elapsed
            if self._crossed(before, s.logging_steps) or self.step >= s.max_steps:
                stage.log(stats, step=self.step)
            progress.set_postfix(reward=f"{stats['reward/mean']:.3f}", kl=f"{stats['kl']:.3f}")
            last = stats
            if self.step >= s.max_steps:
                break
            if self.eval_dataset is not None and self._crossed(before, s.eval_steps):
                stage.log(self.evaluate(), step=self.step)
            if self._crossed(before, s.save_steps):
                self.save_checkpoint()
        progress.close()
        final = {"steps": self.step, "skipped_chunks": self.skipped_chunks}
        spread = self.rank_param_spread()
        if spread is not None:
            final["rank_param_spread"] = spread
        final.update(
            {k: last[k] for k in ("reward/mean", "kl", "kl_coef", "samples_per_s") if k in last}
        )
        if resumed_from is not None:
            final["resumed_from_step"] = resumed_from
        self.save_final()
        if self.eval_dataset is not None:
            # a rerun after a failed final evaluation resumes here instead of retraining
            if resumed_from != self.step:
                self.save_checkpoint()
            final.update(self.evaluate())
            stage.log({k: v for k, v in final.items() if k.startswith("eval/")}, step=self.step)
        return final

    def rank_param_spread(self) -> float | None:
        """Largest difference between the processes' sums of trainable weights: 0 when every
        rank holds the same model. None under ZeRO-3, where no rank holds whole weights (each
        holds its own partition, and gathering them gives every rank the same tensors by
        construction), so there is nothing to compare."""
        if zero3_enabled(self.accelerator):
            return None
        checksum = torch.stack([p.detach().double().sum() for p in self.trainable]).sum()
        if self.stage.num_processes == 1:
            return 0.0
        sums = self.accelerator.gather(checksum.reshape(1).to(self.device))
        return float(sums.max() - sums.min())

    def _crossed(self, before: int, interval: int | None) -> bool:
        """True when the last update passed a multiple of ``interval`` (0 or None: never)."""
        return bool(interval) and self.step // interval > before // interval
