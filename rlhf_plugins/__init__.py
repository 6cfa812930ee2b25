"""rlhf-plugins: a small pluggy core for RLHF recipes. This module is the public plugin API's
pure-Python part (it imports neither torch nor transformers); the torch-importing helpers are in
``rlhf_plugins.torch_helpers``. docs/plugins.md documents every name; everything under
``rlhf_plugins._engine`` is the engine's own and may change in any release.

- hooks: ``hookimpl`` marks the ``register_*`` and lifecycle hook implementations of a module
  named by an entry point in the ``rlhf_plugins`` group;
- component contracts: ``AdvantageEstimator`` (with ``AdvantageInputs``), ``PolicyLoss``,
  ``Dataset`` (and the ``Views`` a dataset slot accepts), ``Policy``,
  ``RewardFunction``, ``StageFn`` and the running stage ``StageContext``; ``require_columns``,
  ``TEXT_COLUMNS``; reward scores: ``as_score``, ``checked_scores``, ``reward_scores``;
- chat-formatted data: ``Prompt``, ``COMPLETION_COLUMNS``, ``Message``, ``is_conversation``, ``message_text``,
  ``render_prompt``, ``render_prompts``, ``render_completion``, ``require_chat_template``,
  ``check_chat_data``, ``saved_chat_template``, ``display_text``;
- errors: ``UserError``, ``StageFailed``, ``RewardUnavailable``;
- pretrained models: ``ModelSource`` (hub id, directory or ``pip:<distribution>``),
  ``resolve_installed``, ``ModelDtype``, ``AttnImplementation``,
  ``TokenizerSource``;
- settings: ``Settings``, ``LocalPath``, ``FromDataclass``, ``did_you_mean``, the shared
  trainer settings ``TrainingSettings``, ``EpochTrainingSettings``, ``LearningRateFloor``,
  ``LoraSettings``, ``PreferenceSettings`` (with ``TRAINING_ARGUMENTS``, ``EXCLUDED``,
  ``REFERENCE_BOUNDS``);
- capabilities declared at registration: ``Length`` and the length readers
  (``max_length_setting``, ``generation_settings``, ``saved_model_context``, ``model_context``,
  ``fit_max_length``, ``prompt_budget``), stage rules (``Problem``, ``view_problems``);
- ranks: ``is_main_process``, ``wait_for_everyone``;
- the reward server's HTTP contract: ``SCORE_PATH``, ``ScoreRequest``, ``ScoreResponse``,
  ``ErrorResponse``.
"""

from rlhf_plugins._engine.chat import (
    COMPLETION_COLUMNS,
    Message,
    Prompt,
    check_chat_data,
    display_text,
    is_conversation,
    message_text,
    render_completion,
    render_prompt,
    render_prompts,
    require_chat_template,
    saved_chat_template,
)
from rlhf_plugins._engine.components import (
    TEXT_COLUMNS,
    AdvantageEstimator,
    AdvantageInputs,
    Dataset,
    Policy,
    PolicyLoss,
    RewardFunction,
    StageFn,
    Views,
    as_score,
    checked_scores,
    require_columns,
    reward_scores,
)
from rlhf_plugins._engine.errors import RewardUnavailable, StageFailed, UserError
from rlhf_plugins._engine.hookspecs import hookimpl
from rlhf_plugins._engine.lengths import (
    Length,
    fit_max_length,
    generation_settings,
    max_length_setting,
    model_context,
    prompt_budget,
    saved_model_context,
)
from rlhf_plugins._engine.lora import LoraSettings
from rlhf_plugins._engine.preference import (
    EXCLUDED,
    REFERENCE_BOUNDS,
    TRAINING_ARGUMENTS,
    PreferenceSettings,
)
from rlhf_plugins._engine.pretrained import (
    AttnImplementation,
    ModelDtype,
    ModelSource,
    TokenizerSource,
    resolve_installed,
)
from rlhf_plugins._engine.ranks import is_main_process, wait_for_everyone
from rlhf_plugins._engine.reward_api import SCORE_PATH, ErrorResponse, ScoreRequest, ScoreResponse
from rlhf_plugins._engine.rules import Problem, view_problems
from rlhf_plugins._engine.settings import FromDataclass, LocalPath, Settings, did_you_mean
from rlhf_plugins._engine.stage_context import StageContext
from rlhf_plugins._engine.training import EpochTrainingSettings, LearningRateFloor, TrainingSettings

__version__ = "0.1.0"

__all__ = [
    "COMPLETION_COLUMNS",
    "EXCLUDED",
    "REFERENCE_BOUNDS",
    "SCORE_PATH",
    "TEXT_COLUMNS",
    "TRAINING_ARGUMENTS",
    "AdvantageEstimator",
    "AdvantageInputs",
    "AttnImplementation",
    "Dataset",
    "EpochTrainingSettings",
    "ErrorResponse",
    "FromDataclass",
    "LearningRateFloor",
    "Length",
    "LocalPath",
    "LoraSettings",
    "Message",
    "ModelDtype",
    "ModelSource",
    "Policy",
    "PolicyLoss",
    "PreferenceSettings",
    "Problem",
    "Prompt",
    "RewardFunction",
    "RewardUnavailable",
    "ScoreRequest",
    "ScoreResponse",
    "Settings",
    "StageContext",
    "StageFailed",
    "StageFn",
    "TokenizerSource",
    "TrainingSettings",
    "UserError",
    "Views",
    "__version__",
    "as_score",
    "check_chat_data",
    "checked_scores",
    "did_you_mean",
    "display_text",
    "fit_max_length",
    "generation_settings",
    "hookimpl",
    "is_conversation",
    "is_main_process",
    "max_length_setting",
    "message_text",
    "model_context",
    "prompt_budget",
    "render_completion",
    "render_prompt",
    "render_prompts",
    "require_chat_template",
    "require_columns",
    "resolve_installed",
    "reward_scores",
    "saved_chat_template",
    "saved_model_context",
    "view_problems",
    "wait_for_everyone",
]
