"""Hook specifications. Each hook is called once when plugins load, with a ``register``
callable: ``register(name, factory, *, description="")``.

The factory's keyword parameters are the component's settings: a recipe table (minus ``use``)
is validated against the signature before anything heavy is imported, then passed as keyword
arguments.
"""

import pluggy

PROJECT = "rlhf_plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_datasets(register):
    """Register dataset factories. A dataset factory returns a ``datasets.Dataset``."""


@hookspec
def register_reward_functions(register):
    """Register reward-function factories. A reward function is
    ``fn(prompts: list[str], completions: list[str], **columns) -> list[float]``."""


@hookspec
def register_policies(register):
    """Register policy factories. A policy factory returns an object with
    ``name``, ``load_tokenizer()`` and
    ``load_model(auto_class=AutoModelForCausalLM, **from_pretrained_kwargs)`` (see ``Policy``)."""


@hookspec
def register_trainers(register):
    """Register trainer factories. A trainer factory returns a ``StageFn``: a callable that
    takes the running ``StageContext`` and returns final metrics (or None)."""


@hookspec
def register_evaluators(register):
    """Register evaluator factories; same contract as trainers."""
