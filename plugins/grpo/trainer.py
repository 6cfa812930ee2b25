"""The ``grpo`` and ``rloo`` stages: a TRL trainer that samples a group of completions per
prompt (``GRPOTrainer``, ``RLOOTrainer``), configured from the recipe and the stage.

TRL calls each reward function as ``fn(prompts=..., completions=..., completion_ids=...,
trainer_state=..., log_extra=..., log_metric=..., **columns)`` (``columns``: every dataset
column but ``prompt``, one entry per completion); ``NamedReward`` passes all of it on, so a
reward function takes ``**kwargs`` (the project's convention) and ignores what it does not
use. TRL's log records are renamed into the project's metric names (``metric_names``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlhf_builtins.grpo import GroupSettings
from rlhf_plugins import (
    LoraSettings,
    Policy,
    Prompt,
    RewardFunction,
    StageContext,
    StageFailed,
    TrainingSettings,
    UserError,
    check_chat_data,
    message_text,
    model_context,
    prompt_budget,
    render_prompts,
    require_columns,
    reward_scores,
    wait_for_everyone,
)
from rlhf_plugins.torch_helpers import (
    StageCallback,
    peft_config,
    run_trainer,
    save_final,
    training_arguments,
)

RENAMED = {"reward": "reward/mean", "reward_std": "reward/std"}
"""TRL's metric -> the project's (``ppo`` logs ``reward/mean``, ``reward/std``, ``kl``)."""
LORA_ONLY = tuple(set(LoraSettings.model_fields) - set(TrainingSettings.model_fields))
"""The LoRA settings, which go to peft, not to TRL's config."""
FINAL = ("reward/mean", "reward/std", "kl", "eval/reward/mean")
"""The metrics whose last logged value is among the stage's final metrics."""


class NamedReward:
    """A reward function as TRL calls it: everything TRL passes goes on to ``function``,
    whose scores are checked (one real number per completion, NaN allowed: TRL leaves such a
    completion out); ``__name__`` names its metrics in TRL's logs. With conversational prompts
    TRL gives each completion as assistant messages: ``function`` gets their text."""

    def __init__(self, function: RewardFunction, name: str):
        self.function = function
        self.__name__ = name

    def __call__(self, prompts: list[Prompt], completions: list, **kwargs: Any) -> list[float]:
        texts = [message_text(c) for c in completions]
        scores, problem = reward_scores(self.function, prompts, texts, kwargs, finite=False)
        if scores is None:
            raise StageFailed(f"reward function {self.__name__} ({self.function!r}) {problem}")
        return scores


def named_rewards(rewards: list[RewardFunction]) -> list[NamedReward]:
    """One reward is named ``reward``; a list's functions by their index (``0``, ``1``, ...)."""
    if len(rewards) == 1:
        return [NamedReward(rewards[0], "reward")]
    return [NamedReward(function, str(i)) for i, function in enumerate(rewards)]


def metric_names(functions: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A ``StageCallback`` rename of TRL's log records: ``reward`` -> ``reward/mean``,
    ``reward_std`` -> ``reward/std``, ``frac_reward_zero_std`` -> ``reward/frac_zero_std``,
    a list's ``rewards/<i>/mean`` -> ``reward/<i>/mean`` (dropped for one function: the same
    as ``reward/mean``), ``eval_<name>`` -> ``eval/<renamed name>``; ``kl``, ``loss``,
    ``learning_rate``, ``entropy``, ``completions/...`` keep their names."""

    def one(key: str) -> str | None:
        if key.startswith("rewards/"):
            return None if functions == 1 else key.replace("rewards/", "reward/", 1)
        if key == "frac_reward_zero_std":
            return "reward/frac_zero_std"
        return RENAMED.get(key, key)

    def rename(logs: dict[str, Any]) -> dict[str, Any]:
        renamed = {}
        for key, value in logs.items():
            evaluated = key.startswith("eval_")
            name = one(key.removeprefix("eval_") if evaluated else key)
            if name is not None:
                renamed[f"eval/{name}" if evaluated else name] = value
        return renamed

    return rename


def check_prompt_lengths(
    data: Any, tokenizer: Any, budget: int | None, *, component: str, slot: str
) -> None:
    """``UserError`` naming the longest prompt of ``data`` when it has more than ``budget``
    tokens (TRL does not cut prompts; None: the context is unknown, nothing to check)."""
    if data is None or budget is None:
        return
    prompts = render_prompts(tokenizer, list(data["prompt"]), component)
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] > budget:
        raise UserError(
            f"{component}: {slot} row {longest} has a {lengths[longest]}-token prompt, but "
            f"{budget} tokens are left for prompts (the context minus max_completion_length); "
            "cut the prompts (e.g. tldr's max_prompt_tokens) or lower max_completion_length"
        )


def reference_source(stage: StageContext, model: Any) -> None:
    """Make sure TRL can build the reference policy: it reloads the policy from
    ``model.name_or_path`` (a stage or local directory, or a hub id). A model built in memory
    (``tiny-causal-lm``) has none, so its initial weights are saved to ``<stage>/reference``
    first and named there."""
    if model.name_or_path:
        return
    directory = stage.output_dir / "reference"
    if stage.is_main_process:
        model.save_pretrained(str(directory))
    wait_for_everyone()
    model.config._name_or_path = str(directory)


@dataclass
class GroupStage:
    """Train ``policy`` with ``trainer_class`` (``GRPOTrainer`` or ``RLOOTrainer``) on the
    prompts of ``dataset``; every TRL setting goes to ``config_class`` under its own name,
    the LoRA settings become a ``peft_config``. ``component`` names the stage's trainer in
    messages."""

    component: str
    config_class: type
    trainer_class: type
    policy: Policy
    dataset: Any
    eval_dataset: Any
    rewards: list[RewardFunction]
    settings: GroupSettings

    def __call__(self, stage: StageContext) -> dict[str, float]:
        datasets = {"dataset": self.dataset, "eval_dataset": self.eval_dataset}
        tokenizer = self.policy.load_tokenizer()
        for slot, data in datasets.items():
            require_columns(data, ("prompt",), component=self.component, slot=slot, view="prompts")
            check_chat_data(data, tokenizer, f"{self.component}: {slot}")
        model = self.policy.load_model()
        settings = self.settings.model_dump()
        lora = {name: settings.pop(name) for name in LORA_ONLY}
        budget = prompt_budget(
            None,
            settings["max_completion_length"],
            model_context(model),
            policy=self.policy.name,
            component=self.component,
        )
        for slot, data in datasets.items():
            check_prompt_lengths(data, tokenizer, budget, component=self.component, slot=slot)
        if settings["beta"] > 0 and not lora["use_peft"]:
            reference_source(stage, model)
        evaluated = self.eval_dataset is not None
        args = training_arguments(
            stage,
            self.config_class,
            **settings,
            eval_strategy="steps" if evaluated else "no",
        )
        functions = named_rewards(self.rewards)
        rename = metric_names(len(functions))
        trainer = self.trainer_class(
            model=model,
            reward_funcs=functions,
            args=args,
            train_dataset=self.dataset,
            eval_dataset=self.eval_dataset if evaluated else None,
            processing_class=tokenizer,
            callbacks=[StageCallback(stage, rename=rename)],
            peft_config=peft_config(lora),
        )
        metrics = run_trainer(stage, trainer)
        save_final(stage, trainer, tokenizer)
        for record in map(rename, trainer.state.log_history):
            metrics.update({key: record[key] for key in FINAL if key in record})
        return metrics
