"""Helpers for plugins whose stages wrap a Hugging Face ``Trainer`` (TRL's SFT, reward, ...).

Import this module inside a factory's body or a plugin's implementation module, never from a
plugin's hook module: it imports transformers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import PrinterCallback, TrainerCallback, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.utils import is_peft_available

from rlhf_plugins._engine.errors import UserError
from rlhf_plugins._engine.logprobs import trl_logprob_tiles
from rlhf_plugins._engine.ranks import process_state, wait_for_everyone
from rlhf_plugins._engine.rundir import checkpoint_step
from rlhf_plugins._engine.stage_context import StageContext


class StageCallback(TrainerCallback):
    """Connects a ``Trainer`` to its stage: every log record goes to ``stage.log``
    (metrics.jsonl and the loggers), the stage's progress bar follows the steps (the
    Trainer's own bar and printed dicts are off), and every checkpoint is marked complete
    once all ranks saved it, so a resume never picks a half-written one. ``rename`` maps a
    Trainer's log record to the names the stage logs (e.g. TRL's ``reward`` to
    ``reward/mean``); unset, records are logged as they come."""

    def __init__(
        self, stage: StageContext, rename: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    ):
        self.stage = stage
        self.rename = rename
        self.bar: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = self.stage.progress(total=state.max_steps, desc="steps")
        self.bar.update(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.stage.log(self.rename(logs) if self.rename else logs, step=state.global_step)
            if self.bar is not None and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.4g}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_save(self, args, state, control, **kwargs):
        wait_for_everyone()
        self.stage.complete_checkpoint(self.stage.checkpoint_dir(state.global_step))
        wait_for_everyone()


def training_arguments(stage: StageContext, config_class: type, **settings: Any) -> Any:
    """``config_class`` (``TrainingArguments`` or a TRL config) for this stage: checkpoints
    under the stage directory, the recipe seed, precision and DeepSpeed from ``[launch]``,
    no third-party reporting (the stage logs itself). ``settings`` override the defaults and
    keep the meanings of ``rlhf_plugins.TrainingSettings``: ``save_steps = 0`` saves
    no checkpoints, ``max_grad_norm = None`` does not clip; ``gradient_checkpointing`` maps to
    ``activation_checkpointing`` where transformers renamed it.
    With DeepSpeed the Trainer reuses the process state configured here (gloo without CUDA).
    A rule of ``config_class`` that the settings break (TRL checks some in ``__post_init__``,
    e.g. with the number of processes) raises ``UserError`` with its message."""
    precision = stage.launch.mixed_precision
    deepspeed = stage.launch.deepspeed is not None
    if deepspeed:
        process_state()
    defaults: dict[str, Any] = dict(
        output_dir=str(stage.output_dir),
        seed=stage.seed,
        data_seed=stage.seed,
        report_to=[],
        logging_steps=10,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=500,
        save_total_limit=2,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available() and not deepspeed,
        disable_tqdm=True,
        deepspeed=str(stage.launch.deepspeed) if deepspeed else None,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )
    if deepspeed:
        defaults["accelerator_config"] = {"use_configured_state": True}
    merged = {**defaults, **settings}
    if merged["save_steps"] == 0:
        merged["save_strategy"] = "no"
    if merged.get("max_grad_norm", 0.0) is None:
        merged["max_grad_norm"] = 0.0
    fields = inspect.signature(config_class).parameters
    if "gradient_checkpointing" in merged and "activation_checkpointing" in fields:
        merged["activation_checkpointing"] = merged.pop("gradient_checkpointing")
    try:
        return config_class(**merged)
    except ValueError as exc:
        raise UserError(f"{config_class.__name__}: {exc}") from exc


def run_trainer(stage: StageContext, trainer: Any) -> dict[str, float]:
    """Run ``trainer.train()``, continuing from the stage's newest complete checkpoint when the
    stage resumes; returns ``steps`` and ``train_loss`` (of the steps this call trained).

    A checkpoint already at ``max_steps`` is loaded instead of trained on (the Trainer would
    take one step past ``max_steps``), and ``train_loss`` is then absent. TRL's fused LM head
    computes its logits in small tiles on the CPU (``logprobs.trl_logprob_tiles``)."""
    trainer.remove_callback(PrinterCallback)
    checkpoint = stage.latest_checkpoint() if stage.resume else None
    if checkpoint is not None and 0 < trainer.args.max_steps <= checkpoint_step(checkpoint):
        trainer._load_from_checkpoint(str(checkpoint))
        trainer.state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_NAME))
        return {"steps": trainer.state.global_step}
    with trl_logprob_tiles(trainer.accelerator.device):
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return {"train_loss": result.training_loss, "steps": result.global_step}


def save_final(stage: StageContext, trainer: Any, tokenizer: Any) -> None:
    """Save the trained model and its tokenizer into the stage directory (main process writes;
    every rank must call it, DeepSpeed gathers shards). A peft model is saved with its
    adapters merged (a plain ``from_pretrained`` model); merging changes it in place, so this
    is the trainer's last use."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if is_peft_model(model):
        if stage.is_main_process:
            model.merge_and_unload().save_pretrained(str(stage.output_dir))
        wait_for_everyone()
    else:
        trainer.save_model(str(stage.output_dir))
    if stage.is_main_process:
        tokenizer.save_pretrained(str(stage.output_dir))


def is_peft_model(model: Any) -> bool:
    """True for a peft ``PeftModel`` (False when peft is not installed)."""
    if not is_peft_available():
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def peft_config(settings: Mapping[str, Any]) -> Any:
    """A peft ``LoraConfig`` for a causal LM from ``rlhf_plugins.LoraSettings`` fields
    (dumped), or None when ``use_peft`` is off."""
    if not settings["use_peft"]:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=settings["lora_r"],
        lora_alpha=settings["lora_alpha"],
        lora_dropout=settings["lora_dropout"],
        target_modules=settings["lora_target_modules"],
        task_type="CAUSAL_LM",
    )


def decoder_blocks(model: Any) -> torch.nn.ModuleList:
    """The transformer blocks of a Hugging Face model (a causal LM, its trunk or a sequence
    classifier): the first ``ModuleList`` under its base model with one entry per hidden layer.
    Raises ``UserError`` for a model laid out otherwise."""
    config = model.config.get_text_config()
    count = getattr(config, "num_hidden_layers", None)
    for module in getattr(model, "base_model", model).modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise UserError(f"{type(model).__name__}: no list of {count} transformer blocks found")
