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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from rlhf_builtins.ppo import maths
from rlhf_builtins.ppo.advantages import GAE
from rlhf_builtins.ppo.kl_control import make_kl_controller, update_steps
from rlhf_builtins.ppo.losses import TrlxClip, kl_loss
from rlhf_builtins.ppo.models import Responses, build_models
from rlhf_builtins.ppo.rollout import Chunk, PromptSampler, Rollout, model_inputs
from rlhf_builtins.ppo.settings import PolicyGradientSettings, PPOSettings, RolloutSettings
from rlhf_plugins import (
    AdvantageInputs,
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


ENGINE_SETTINGS = ("num_generations", "filter_groups", "overlong_buffer", "overlong_penalty")
"""The ``policy-gradient`` settings a stage's ``Parts`` carry under the same names."""


@dataclass(frozen=True)
class Parts:
    """What a stage of the engine plugs into the loop: the advantage estimator and the policy
    loss (the ``AdvantageEstimator`` and ``PolicyLoss`` contracts), whether a critic learns,
    completions per prompt, where the KL goes, DAPO's filters and whether the estimator reads
    greedy baselines (ReMax). ``ppo`` is GAE + trlX's clipped surrogate with a critic and the
    KL as a reward penalty."""

    estimator: Any
    loss: Any
    critic: bool
    component: str = "ppo"
    num_generations: int = 1
    kl_in_loss: bool = False
    filter_groups: bool = False
    overlong_buffer: int = 0
    overlong_penalty: float = 0.0
    greedy_baseline: bool = False
    names: dict[str, str] = field(default_factory=dict)
    """``{"estimator": ..., "loss": ...}``: how a failing part is named (its component and
    plugin)."""
    stage: str = ""
    """The stage's name, for the line a failing part ends the run with."""

    @classmethod
    def ppo(cls, settings: PPOSettings) -> Parts:
        return cls(
            estimator=GAE(
                gamma=settings.gamma, lam=settings.lam, whiten=settings.whiten_advantages
            ),
            loss=TrlxClip(settings.cliprange),
            critic=True,
        )

    @classmethod
    def engine(
        cls, settings: PolicyGradientSettings, estimator: Any, loss: Any, stage: StageContext
    ) -> Parts:
        """The parts of a ``policy-gradient`` stage: its ``advantage`` and ``loss`` slots, what
        they declared at registration (``stage.registered``: a critic learns when either
        needs one) and the engine settings."""
        declared = {"estimator": stage.registered["advantage"], "loss": stage.registered["loss"]}
        words = {"estimator": "advantage estimator", "loss": "policy loss"}
        return cls(
            estimator,
            loss,
            critic=any(component.needs_critic for component in declared.values()),
            component="policy-gradient",
            kl_in_loss=settings.kl_placement == "loss",
            greedy_baseline=declared["estimator"].greedy_baseline,
            names={
                part: f"{words[part]} '{component.name}' ({component.origin})"
                for part, component in declared.items()
            },
            stage=stage.name,
            **{name: getattr(settings, name) for name in ENGINE_SETTINGS},
        )

    def kl_term(
        self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, estimator: str
    ) -> torch.Tensor:
        """The KL-to-reference loss term (``kl_placement = "loss"``), aggregated over tokens as
        the policy loss aggregates its own (``aggregation``, ``norm_length``): verl's KL loss
        uses the actor's ``loss_agg_mode`` and TRL adds ``beta * KL`` to the per-token loss
        before its one aggregation. A loss without an ``aggregation`` gets the token mean."""
        return kl_loss(
            logprobs,
            ref_logprobs,
            mask,
            estimator=estimator,
            aggregation=getattr(self.loss, "aggregation", "token-mean"),
            norm_length=getattr(self.loss, "norm_length", None),
        )

    def call(self, part: str, *args: Any) -> Any:
        """``estimator(*args)`` or ``loss(*args)``; an exception of a plugged-in part fails the
        stage with one line naming it (``StageFailed``)."""
        try:
            return getattr(self, part)(*args)
        except Exception as exc:
            name = self.names.get(part)
            if name is None:
                raise
            raise StageFailed(
                f"stage '{self.stage}' failed: {name} raised {type(exc).__name__}: {exc}"
            ) from exc


@dataclass
class PPOStage:
    """The stage function the ``ppo`` and ``policy-gradient`` factories return."""

    policy: Policy
    reward: RewardFunction
    dataset: Any
    eval_dataset: Any
    settings: RolloutSettings
    parts: Callable[[StageContext], Parts]
    """The stage's parts, from the running stage (what its slots declared)."""

    def __call__(self, stage: StageContext) -> dict[str, float]:
        parts = self.parts(stage)
        for slot, data in (("dataset", self.dataset), ("eval_dataset", self.eval_dataset)):
            require_columns(data, ("prompt",), component=parts.component, slot=slot, view="prompts")
        trainer = PPOTrainer(
            stage,
            self.policy,
            self.reward,
            self.dataset,
            self.eval_dataset,
            self.settings,
            parts,
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
        settings: RolloutSettings,
        parts: Parts,
    ):
        self.stage, self.reward, self.eval_dataset, self.settings, self.parts = (
            stage,
            reward,
            eval_dataset,
            settings,
            parts,
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
            component=parts.component,
        )
        model, self.reference = build_models(
            base,
            lora=lora,
            num_layers_unfrozen=s.num_layers_unfrozen,
            separate_critic=s.separate_critic,
        )
        if not parts.critic:
            model.value_head.requires_grad_(False)
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

    def generate_greedy(self, prompts: list[str]) -> tuple[list[str], torch.Tensor]:
        """One greedy completion of each prompt (ReMax's baseline): texts and token counts."""
        tokenizer = self.tokenizer
        batch = encode_prompts(tokenizer, prompts, self.max_prompt_length, self.device)
        greedy = replace(self.sampling, do_sample=False).generate_kwargs(tokenizer)
        with self.full_model() as model, self.accelerator.autocast():
            sequences = model.policy.generate(**batch, **greedy)
        responses = sequences[:, batch["input_ids"].shape[1] :]
        lengths = maths.response_mask(responses, tokenizer.eos_token_id).sum(dim=1)
        return tokenizer.batch_decode(responses, skip_special_tokens=True), lengths

    def score(self, rows: dict[str, list], chunk: Chunk) -> bool:
        """Score the chunk with the reward function (in the same call, with a greedy baseline,
        one greedy completion of each prompt); False (on every process) when any process got
        unusable scores, so that all of them skip this chunk together."""
        prompts = list(rows["prompt"])
        completions = self.tokenizer.batch_decode(chunk.responses, skip_special_tokens=True)
        extra = {c: list(rows[c]) for c in self.extra_columns}
        lengths = chunk.mask.sum(dim=1)
        if self.parts.greedy_baseline:
            firsts = slice(None, None, self.parts.num_generations)
            texts, greedy_lengths = self.generate_greedy(prompts[firsts])
            prompts += prompts[firsts]
            completions += texts
            extra = {c: values + values[firsts] for c, values in extra.items()}
            lengths = torch.cat([lengths, greedy_lengths.to(lengths.device)])
        scores, problem = reward_scores(self.reward, prompts, completions, extra)
        failed = self.reduce(torch.tensor([0.0 if scores is not None else 1.0], device=self.device))
        if float(failed.item()) > 0:
            self.skipped_chunks += 1
            where = f"the reward function {problem}" if problem else "another process"
            logger.warning(
                "%s: skipped a chunk of %d samples (%s); %d skipped so far",
                self.parts.component,
                len(completions),
                where,
                self.skipped_chunks,
            )
            return False
        every = torch.tensor(scores, dtype=torch.float32, device=self.device)
        raw = every[: len(chunk)]
        if self.settings.scale_reward == "running" or (
            self.settings.scale_reward == "ref" and self.ref_std is None
        ):
            self.add_to_moments(raw)
            if self.settings.scale_reward == "ref":
                self.ref_std = self.moments.std or 1.0
        divisor = {"running": self.moments.std, "ref": self.ref_std}.get(self.settings.scale_reward)
        scaled = maths.scale_scores(every, divisor, self.settings.cliprange_reward)
        if self.parts.overlong_buffer:
            scaled = scaled + maths.overlong_penalty(
                lengths,
                self.settings.max_new_tokens,
                self.parts.overlong_buffer,
                self.parts.overlong_penalty,
            ).to(scaled.dtype)
        chunk.scores, chunk.scaled_scores = raw, scaled[: len(chunk)]
        if self.parts.greedy_baseline:
            greedy = scaled[len(chunk) :]
            chunk.baseline_scores = greedy.repeat_interleave(self.parts.num_generations)
        return True

    def add_to_moments(self, scores: torch.Tensor) -> None:
        """Merge ``scores`` of every process into the running reward moments."""
        x64 = scores.detach().to(torch.float64)
        count = torch.tensor(float(x64.numel()), dtype=torch.float64, device=x64.device)
        totals = self.reduce(torch.stack([count, x64.sum(), (x64 * x64).sum()]))
        self.moments.add(*totals.tolist())

    def next_rows(self) -> dict[str, list]:
        """The rows of one chunk: ``chunk_size / num_generations`` prompts, each repeated
        ``num_generations`` times in a row (a group)."""
        groups = self.parts.num_generations
        rows = self.sampler.next_rows(self.settings.chunk_size // groups)
        return {name: [v for v in values for _ in range(groups)] for name, values in rows.items()}

    def needs_more(self, collected: int) -> bool:
        """Whether any process has fewer than ``num_rollouts`` experiences (all processes
        generate the same number of chunks, so their collective calls stay in step)."""
        short = 1.0 if collected < self.settings.num_rollouts else 0.0
        return float(self.reduce(torch.tensor([short], device=self.device)).item()) > 0

    def collect_rollout(self) -> tuple[Rollout, dict[str, float]]:
        """``num_rollouts`` scored experiences with advantages and returns, plus statistics.
        With ``filter_groups`` a group whose completions all scored the same is dropped and
        more are sampled."""
        s, parts, chunks, consecutive, dropped = self.settings, self.parts, [], 0, 0
        started = time.perf_counter()
        collected = 0
        while self.needs_more(collected):
            rows = self.next_rows()
            chunk = self.generate_chunk(rows["prompt"])
            chunk.group_ids = self.group_ids(len(chunks))
            if not self.score(rows, chunk):
                consecutive += 1
                if consecutive >= s.max_skipped_chunks:
                    raise StageFailed(
                        f"stage '{self.stage.name}' failed: {parts.component}: the reward "
                        f"function gave unusable scores for {consecutive} chunks in a row "
                        "(max_skipped_chunks); see the warnings above"
                    )
                continue
            if parts.filter_groups:
                before = len(chunk)
                chunk = chunk.select(maths.varied_groups(chunk.scaled_scores, chunk.group_ids))
                dropped += before - len(chunk)
                consecutive = consecutive + 1 if len(chunk) == 0 else 0
                if consecutive >= s.max_skipped_chunks:
                    raise StageFailed(
                        f"stage '{self.stage.name}' failed: {parts.component}: every group of "
                        f"{consecutive} chunks in a row scored the same (filter_groups drops "
                        "them); raise the sampling temperature or num_generations, or turn "
                        "filter_groups off"
                    )
                if len(chunk) == 0:
                    continue
            consecutive = 0
            if collected < s.num_rollouts:
                chunks.append(
                    chunk.select(torch.arange(min(len(chunk), s.num_rollouts - collected)))
                )
                collected += len(chunks[-1])
        rollout = Rollout.from_chunks(chunks, self.tokenizer.pad_token_id)
        kl = maths.kl_penalty(rollout.logprobs, rollout.ref_logprobs, s.kl_estimator) * rollout.mask
        in_reward = 0.0 if parts.kl_in_loss else self.kl_controller.value
        rewards = maths.token_rewards(rollout.scaled_scores, kl, rollout.mask, in_reward)
        inputs = AdvantageInputs(
            scores=rewards.sum(dim=1),
            token_rewards=rewards,
            mask=rollout.mask,
            group_ids=rollout.group_ids,
            logprobs=rollout.logprobs,
            ref_logprobs=rollout.ref_logprobs,
            values=rollout.values if parts.critic else None,
            baseline_scores=rollout.baseline_scores,
            reduce=self.reduce if self.stage.num_processes > 1 else None,
        )
        rollout.advantages, rollout.returns = parts.call("estimator", inputs)
        n, baseline = len(rollout), rollout.baseline_scores
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
                    baseline.sum() if baseline is not None else rollout.scores.new_zeros(()),
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
        if parts.filter_groups:
            stats["rollout/filtered"] = dropped
        if baseline is not None:
            stats["reward/baseline_mean"] = totals[7] / count
        return rollout, stats

    def group_ids(self, chunk_index: int) -> torch.Tensor:
        """The group of each row of the ``chunk_index``-th chunk of a rollout: unique within
        the rollout, ``num_generations`` consecutive rows each."""
        groups = self.settings.chunk_size // self.parts.num_generations
        first = chunk_index * groups
        ids = torch.arange(first, first + groups, device=self.device)
        return ids.repeat_interleave(self.parts.num_generations)

    # -- optimisation --------------------------------------------------------------------

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logprobs, values, entropy = self.model(
            **batch["inputs"],
            response_start=batch["response_start"],
            responses=batch["responses"],
            temperature=self.settings.temperature,
            entropy=True,
        )
        mask, s = batch["mask"], self.settings
        pg_loss, pg_stats = self.parts.call(
            "loss", logprobs, batch["logprobs"], batch["advantages"], mask
        )
        total, stats = pg_loss, {**pg_stats, "loss/policy": pg_loss.detach()}
        if self.parts.critic:
            vf_loss, vf_stats = maths.value_loss(
                values, batch["values"], batch["returns"], mask, s.cliprange_value
            )
            total = total + s.vf_coef * vf_loss
            stats.update(vf_stats, **{"loss/value": vf_loss.detach()})
        if self.parts.kl_in_loss and self.kl_controller.value > 0:
            kl = self.parts.kl_term(logprobs, batch["ref_logprobs"], mask, s.kl_estimator)
            total = total + self.kl_controller.value * kl
            stats["loss/kl"] = kl.detach()
        stats["policy/entropy"] = maths.masked_mean(entropy, mask).detach()
        return total, stats

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
            logger.warning(
                "%s: evaluation skipped (%s)",
                self.parts.component,
                problem or "on another process",
            )
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
        if not self.parts.critic:
            return
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
        progress = stage.progress(total=s.max_steps, desc=f"{self.parts.component} steps")
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
