"""DeepSpeed ZeRO-3 for hand-written training loops (``ppo``, ``ilql``, a plugin's), written
once on DeepSpeed's and Accelerate's own APIs.

Under ZeRO-3 every parameter of the prepared model is partitioned across the ranks: a rank
holds ``1 / N`` of each (``p.data`` is an empty placeholder) and DeepSpeed's module hooks gather
a layer's parameters just before it runs and free them after it. That suits one training
forward; it does not suit generation (one gather per layer per new token, and ranks that stop at
different lengths would wait for each other's gathers) or code that calls a submodule or reads a
weight outside the engine's forward. ``gathered_for_generation`` gathers everything once for such
a span; ``load_models_whole`` keeps models whole while they load, for code that copies weights
before ``accelerator.prepare`` partitions them and for models that never go through it;
``loading_whole`` does the same for one load inside a stage that keeps its registration (a TRL
trainer's).

Imports torch and deepspeed inside functions only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any


def zero3_enabled(accelerator: Any) -> bool:
    """True when ``accelerator`` runs DeepSpeed ZeRO stage 3."""
    plugin = accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


def load_models_whole(accelerator: Any) -> None:
    """Under ZeRO-3, unregister ``accelerator``'s DeepSpeed config from transformers
    (``transformers.integrations.unset_hf_deepspeed_config``); a no-op otherwise. Accelerate
    registers it when it creates the accelerator, and while it is registered transformers'
    ``from_pretrained``/``from_config`` build every model inside ``deepspeed.zero.Init``
    (partitioned as it loads: a weight copied before ``accelerator.prepare`` is an empty
    placeholder, and a reward or evaluation model loaded in this or a later stage cannot run
    outside an engine), and ``generate`` syncs ranks every token. A loop calls this right after
    creating its accelerator: from then on models load whole on every rank (as under ZeRO-2),
    ``accelerator.prepare`` partitions the ones it is given, ``gathered_for_generation`` gathers
    them back, and the registration does not outlive the stage. Accelerate's
    ``DeepSpeedPlugin.zero3_init_context_manager(enable=False)`` is no substitute: in 1.15 it
    registers the same config again."""
    if zero3_enabled(accelerator):
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


@contextmanager
def loading_whole() -> Iterator[None]:
    """Models that transformers builds inside this block load whole on this rank, even while
    a DeepSpeed ZeRO-3 config is registered with transformers (a TRL trainer's stage: its
    ``TrainingArguments`` and Accelerate's DeepSpeed plugin register one). For models that
    never go through an engine and are loaded lazily while such a stage runs, e.g. a reward
    function's model scoring completions for ``grpo``/``rloo``: built inside
    ``deepspeed.zero.Init`` each would be partitioned, its weights empty placeholders that no
    engine gathers (``'weight' must be 2-D`` at its first forward). The registration is taken
    away with ``transformers.integrations.unset_hf_deepspeed_config`` and registered again on
    exit (``set_hf_deepspeed_config``), so the stage's own models are unaffected. A no-op
    where none is registered; collective-free, so one rank may load alone."""
    from transformers.integrations import deepspeed as hf_deepspeed

    # transformers keeps the registration as a module-level weak reference and has no public
    # getter for the registered object, only for its config dict
    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        registered = reference() if reference is not None else None
        if registered is not None:
            hf_deepspeed.set_hf_deepspeed_config(registered)


@contextmanager
def gathered_for_generation(accelerator: Any, model: Any) -> Iterator[Any]:
    """The unwrapped ``model`` (as prepared by ``accelerator``) with every parameter whole on
    every rank. Under ZeRO-3 this is DeepSpeed's ``deepspeed.zero.unwrap_model_for_generation``:
    all parameters gathered once (``GatheredParameters``), the engine's fetch/release hooks
    removed while inside (so forwards run no collectives, whichever submodule is called and
    however many tokens each rank generates) and registered again on exit, which also
    invalidates the engine's recorded parameter trace. Nothing inside may change the weights or
    run a backward pass; each rank holds the whole model meanwhile. ``model`` must have been
    prepared with an optimizer (DeepSpeed's context needs it), and an exception inside ends the
    stage: the engine's hooks are not registered again. Without ZeRO-3 it yields
    ``accelerator.unwrap_model(model)`` and does nothing else."""
    if not zero3_enabled(accelerator):
        yield accelerator.unwrap_model(model)
        return
    import deepspeed

    with deepspeed.zero.unwrap_model_for_generation(model):
        yield accelerator.unwrap_model(model)


@contextmanager
def gathered_parameters(accelerator: Any, params: Iterable[Any]) -> Iterator[bool]:
    """Make ``params`` whole inside the block so that they can be changed in place: under
    ZeRO-3 ``deepspeed.zero.GatheredParameters`` with the main process as the modifier (its
    changes are broadcast to every rank and partitioned again on exit). Yields True where the
    caller must make the change: on the main process under ZeRO-3, on every rank otherwise
    (each holds its own whole copy). Every rank must enter it."""
    if not zero3_enabled(accelerator):
        yield True
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=0):
        yield accelerator.is_main_process
