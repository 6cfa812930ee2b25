"""The ``rouge`` evaluator stage: generate with each policy, score, gather across ranks, report.

With N processes the evaluated rows are cut into N contiguous shards of equal size (the last
row repeated as padding so that every rank makes the same number of generation and reward
calls, which sharded models need); each rank generates and scores its shard, the per-sample
records are gathered with ``accelerate.utils.gather_object`` and every rank computes the same
metrics; the main process writes the reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rlhf_builtins.rouge.kl import check_vocabularies, completion_kl
from rlhf_builtins.rouge.report import Evaluation, write_reports
from rlhf_builtins.rouge.scoring import mean, rouge_fmeasures, summary_metrics
from rlhf_plugins import (
    Dataset,
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
from rlhf_plugins.torch_helpers import SamplingSettings, ensure_pad_token, generate_texts

PROMPT, REFERENCE = "prompt", "reference"
PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def expand_variants(policies: Mapping[str, Policy]) -> dict[str, Policy]:
    """Labelled policies to evaluate: a policy with a ``variants()`` method (returning
    ``dict[str, Policy]``) becomes one entry per variant, labelled ``<label>[<variant>]``;
    an empty ``variants()`` leaves the policy itself."""
    expanded: dict[str, Policy] = {}
    for label, policy in policies.items():
        variants = policy.variants() if callable(getattr(policy, "variants", None)) else {}
        for name, variant in variants.items():
            if not isinstance(variant, Policy):
                raise UserError(
                    f"policy '{label}': variant {name!r} is not a Policy "
                    f"(got {type(variant).__name__})"
                )
            expanded[f"{label}[{name}]"] = variant
        if not variants:
            expanded[label] = policy
    return expanded


def shard_indices(total: int, rank: int, world: int) -> list[int]:
    """Row indices for ``rank`` of ``world``: a contiguous block of ``ceil(total / world)``
    rows, padded with the last row index to that length."""
    size = math.ceil(total / world)
    block = list(range(min(rank * size, total), min((rank + 1) * size, total)))
    return block + [total - 1] * (size - len(block))


def merge_shards(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records gathered from every rank, padding duplicates dropped, in row order."""
    by_index = {}
    for sample in samples:
        by_index.setdefault(sample["index"], sample)
    return [by_index[i] for i in sorted(by_index)]


def gather_samples(samples: list[dict[str, Any]], stage: StageContext) -> list[dict[str, Any]]:
    """Every rank's records, merged in row order (the local ones when running alone)."""
    if stage.num_processes > 1:
        from accelerate.utils import gather_object

        samples = gather_object(samples)
    return merge_shards(samples)


def evaluation_columns(dataset: Dataset, limit: int | None) -> dict[str, list]:
    """The first ``limit`` rows of ``dataset`` as column lists; ``prompt`` and ``reference``
    are required."""
    require_columns(dataset, (PROMPT, REFERENCE), component="rouge", slot="dataset", view="prompts")
    rows = dataset.select(range(min(limit, len(dataset)))) if limit else dataset
    return rows.to_dict()


def score_with(
    reward: RewardFunction,
    prompts: list[str],
    completions: list[str],
    columns: Mapping[str, list],
    batch_size: int,
) -> list[float]:
    """``reward`` over the rows, ``batch_size`` at a time; ``columns`` (every dataset column but
    ``prompt``) arrive as keyword lists. Scores are checked as PPO checks them
    (``reward_scores``); an unusable batch or an unavailable reward fails the stage
    (``StageFailed``)."""
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        extra = {name: values[chunk] for name, values in columns.items()}
        checked, problem = reward_scores(reward, prompts[chunk], completions[chunk], extra)
        if checked is None:
            raise StageFailed(f"rouge evaluator: the reward function {problem}")
        scores.extend(checked)
    return scores


class RougeEvaluator:
    """The ``StageFn`` that the ``rouge`` factory returns (settings documented there)."""

    def __init__(
        self,
        policies: Mapping[str, Policy],
        dataset: Dataset,
        reward: RewardFunction | None,
        *,
        reference: Policy | None = None,
        sampling: SamplingSettings,
        limit: int | None,
        batch_size: int,
        max_prompt_length: int | None,
        num_samples_shown: int,
    ):
        self.policies = policies
        self.dataset = dataset
        self.reward = reward
        self.reference = reference
        self._reference_model: Any = None
        self.sampling = sampling
        self.limit = limit
        self.batch_size = batch_size
        self.max_prompt_length = max_prompt_length
        self.num_samples_shown = num_samples_shown

    def __call__(self, stage: StageContext) -> dict[str, float]:
        columns = evaluation_columns(self.dataset, self.limit)
        total = len(columns[PROMPT])
        indices = shard_indices(total, stage.process_index, stage.num_processes)
        shard = {name: [values[i] for i in indices] for name, values in columns.items()}
        extra = {name: values for name, values in shard.items() if name != PROMPT}
        reference_rewards = None
        if self.reward is not None:
            reference_rewards = score_with(
                self.reward, shard[PROMPT], shard[REFERENCE], extra, self.batch_size
            )
        results: dict[str, dict[str, Any]] = {}
        flat: dict[str, float] = {"num_prompts": total}
        for label, policy in expand_variants(self.policies).items():
            generated, kls = self.generate(label, policy, shard[PROMPT], stage)
            samples = self.samples(indices, shard, extra, generated, reference_rewards)
            for sample, (kl, tokens) in zip(samples, kls or (), strict=False):
                sample.update(kl=kl, kl_tokens=tokens)
            samples = gather_samples(samples, stage)
            metrics = summary_metrics(samples)
            results[label] = {"policy": policy.name, "metrics": metrics, "samples": samples}
            flat.update({f"{label}/{key}": value for key, value in metrics.items()})
            stage.log({f"{label}/{key}": value for key, value in metrics.items()})
        reference = None
        if reference_rewards is not None:
            first = next(iter(results.values()))["samples"]
            reference = {
                "reward": mean([s["reference_reward"] for s in first]),
                "words": mean([len(s[REFERENCE].split()) for s in first]),
            }
            flat["reference/reward"] = reference["reward"]
            stage.log({"reference/reward": reference["reward"]})
        if stage.is_main_process:
            evaluation = Evaluation(
                title=f"{stage.recipe_name}/{stage.name}",
                results=results,
                reference=reference,
                settings=self.settings(),
                num_samples_shown=self.num_samples_shown,
            )
            write_reports(stage.output_dir, evaluation)
        return flat

    def settings(self) -> dict[str, Any]:
        return {
            **vars(self.sampling),
            "limit": self.limit,
            "batch_size": self.batch_size,
            "max_prompt_length": self.max_prompt_length,
        }

    def generate(
        self, label: str, policy: Policy, prompts: list[str], stage: StageContext
    ) -> tuple[list[str], list[tuple[float, int]] | None]:
        """``policy``'s completions for ``prompts``, sampled with the same seed for every
        policy, and with a reference policy each completion's ``(KL, tokens)`` to it."""
        from accelerate.utils import set_seed

        tokenizer = ensure_pad_token(policy.load_tokenizer())
        model = self.load(policy, stage)
        budget = prompt_budget(
            self.max_prompt_length,
            self.sampling.max_new_tokens,
            model_context(model),
            policy=label,
            component="rouge evaluator",
        )
        set_seed(stage.seed + stage.process_index)
        with stage.progress(total=len(prompts), desc=f"generating with {label}") as progress:
            generated = generate_texts(
                model,
                tokenizer,
                prompts,
                self.sampling,
                batch_size=self.batch_size,
                max_prompt_length=budget,
                progress=progress,
                policy=label,
            )
        kls = None
        if self.reference is not None:
            if self._reference_model is None:
                check_vocabularies(tokenizer, self.reference.load_tokenizer(), label)
                self._reference_model = self.load(self.reference, stage)
            kls = completion_kl(
                model,
                self._reference_model,
                tokenizer,
                prompts,
                generated,
                batch_size=self.batch_size,
                max_prompt_length=budget,
            )
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return generated, kls

    @staticmethod
    def load(policy: Policy, stage: StageContext) -> Any:
        """``policy``'s model on this rank's device, in eval mode, in the recipe's precision."""
        dtype = PRECISION_DTYPES.get(stage.launch.mixed_precision)
        model = policy.load_model(**({"dtype": dtype} if dtype else {})).to(stage.device)
        return model.eval()

    def samples(
        self,
        indices: list[int],
        shard: Mapping[str, list],
        extra: Mapping[str, list],
        generated: list[str],
        reference_rewards: list[float] | None,
    ) -> list[dict[str, Any]]:
        """One record per row of the shard: texts, ROUGE and (with a reward) both rewards."""
        scores = rouge_fmeasures(generated, shard[REFERENCE])
        records = [
            {"index": index, PROMPT: prompt, REFERENCE: reference, "generated": text, **rouge}
            for index, prompt, reference, text, rouge in zip(
                indices, shard[PROMPT], shard[REFERENCE], generated, scores, strict=True
            )
        ]
        if reference_rewards is not None:
            rewards = score_with(self.reward, shard[PROMPT], generated, extra, self.batch_size)
            for record, reward, reference_reward in zip(
                records, rewards, reference_rewards, strict=True
            ):
                record.update(reward=reward, reference_reward=reference_reward)
        return records
