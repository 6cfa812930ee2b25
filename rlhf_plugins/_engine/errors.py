"""Errors a user can cause: they end as one clear message and a non-zero exit."""


class UserError(Exception):
    """A problem the user can fix (recipe, data, paths, plugins). Exit code 2 by default."""

    exit_code = 2


class StageFailed(UserError):
    """A stage raised while running; the run stops with exit code 1."""

    exit_code = 1


class RewardUnavailable(Exception):
    """A reward function cannot score this batch now (e.g. its server cannot be reached after
    retries). ``rlhf_plugins.reward_scores`` turns it into ``(None, why)``: a
    trainer skips the batch and counts it, an evaluator fails. Wrappers let it pass through."""
