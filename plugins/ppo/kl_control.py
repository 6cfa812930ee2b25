"""KL coefficient controllers (pure Python, no torch).

``AdaptiveKLController`` follows Ziegler et al. (2019): the coefficient moves towards the value
that keeps the measured KL near ``target``, with the proportional error clipped to +-0.2 and the
step scaled by ``n_steps / horizon``. ``FixedKLController`` keeps its coefficient.
``update_steps`` says how often the trainer updates a controller after a rollout (``kl_update``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROPORTIONAL_ERROR_CLIP = 0.2


@dataclass
class AdaptiveKLController:
    """``value *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon``."""

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> float:
        error = current_kl / self.target - 1.0
        error = min(max(error, -PROPORTIONAL_ERROR_CLIP), PROPORTIONAL_ERROR_CLIP)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


@dataclass
class FixedKLController:
    """A constant coefficient; ``update`` returns it unchanged."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


def make_kl_controller(
    kind: str, init_kl_coef: float, target: float | None, horizon: int
) -> AdaptiveKLController | FixedKLController:
    """``kind`` is ``"adaptive"`` (needs ``target``) or ``"fixed"``."""
    if kind == "adaptive":
        if target is None:
            raise ValueError("the adaptive KL controller needs a target")
        return AdaptiveKLController(value=init_kl_coef, target=target, horizon=horizon)
    return FixedKLController(value=init_kl_coef)


def update_steps(
    kl_update: str, *, num_rollouts: int, batch_size: int, ppo_epochs: int
) -> list[int]:
    """The ``n_steps`` of each controller update made after one rollout, in order, for the
    ``ppo`` setting ``kl_update``.

    ``"samples"`` (Ziegler et al.): one update counting the rollout's ``num_rollouts``
    samples. ``"trlx"``: trlX's ``post_backward_callback``, called once per PPO epoch with
    ``n_steps = batch_size``, so ``ppo_epochs`` updates of ``batch_size`` each (with
    ``num_rollouts = 128``, ``batch_size = 4`` and 4 epochs the coefficient moves about 8
    times less per rollout than with ``"samples"``)."""
    if kl_update == "trlx":
        return [batch_size] * ppo_epochs
    return [num_rollouts]
