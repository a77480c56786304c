"""The checks: pure functions ``(session, config) -> CheckResult``, no pytest inside.

Ids are stable; ``CHECKS`` maps each to ``"module:function"`` so that choosing a check does
not import the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nndiag.backends import Session
    from nndiag.config import Config
    from nndiag.results import CheckResult

    CheckFunction = Callable[[Session, Config], CheckResult]

__all__ = ["CHECKS", "get_check"]

CHECKS: dict[str, str] = {
    "initial_loss": "nndiag.checks.initial_loss:initial_loss",
    "regularization_loss": "nndiag.checks.regularization:regularization_loss",
    "overfit_small": "nndiag.checks.overfit:overfit_small",
    "gradient_check": "nndiag.checks.gradients:gradient_check",
    "activation_stats": "nndiag.checks.activations:activation_stats",
    "dead_neurons": "nndiag.checks.activations:dead_neurons",
}


def get_check(check_id: str) -> CheckFunction:
    """The function behind ``check_id``.

    Raises:
        ValueError: unknown id; the message lists the known ones.
    """
    target = CHECKS.get(check_id)
    if target is None:
        raise ValueError(f"unknown check {check_id!r}; known checks: {', '.join(CHECKS)}")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
