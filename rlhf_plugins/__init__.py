"""rlhf-plugins: a small pluggy core for RLHF recipes.

Public plugin API (stable; see docs/plugins.md):

- ``hookimpl``: decorate ``register_*`` functions in a module named by an entry point in the
  ``rlhf_plugins`` group.
- ``Policy``, ``Dataset``, ``RewardFunction``, ``StageContext``, ``StageFn``: the types that
  factory signatures use to declare component slots and to receive the running stage.
- ``UserError`` (a problem the user can fix), ``RewardUnavailable`` (a reward function cannot
  score a batch now: trainers skip it, evaluators fail).

This module imports neither torch nor transformers.
"""

from rlhf_plugins.components import Dataset, Policy, RewardFunction, StageFn, require_columns
from rlhf_plugins.errors import RewardUnavailable, UserError
from rlhf_plugins.hookspecs import hookimpl
from rlhf_plugins.stage import StageContext

__version__ = "0.1.0"

__all__ = [
    "Dataset",
    "Policy",
    "RewardFunction",
    "RewardUnavailable",
    "StageContext",
    "StageFn",
    "UserError",
    "__version__",
    "hookimpl",
    "require_columns",
]
