"""``regularization_loss``: raising the regularization strength must raise the loss.

CS231n notes: with regularization 0 the loss is the data loss; cranking it up (to 1e3)
must raise it. A loss that does not move is a loss that ignores the knob.
"""

from __future__ import annotations

import math

from nndiag.config import Config
from nndiag.contract import Session
from nndiag.results import CheckResult

CHECK = "regularization_loss"


def regularization_loss(session: Session, config: Config) -> CheckResult:
    """Fail when the loss does not rise as the regularization strength sweeps 0 -> 1e3."""
    if not session.has_regularization:
        return CheckResult(
            CHECK,
            "skip",
            "No regularization knob: pass regularization= (a "
            "model attribute name, a function (model, strength) -> None, or "
            "for JAX penalty(params) -> scalar).",
        )
    batch = session.rows(config.max_samples)
    strengths = list(config.regularization_strengths)
    losses = []
    for strength in strengths:
        session.set_regularization(strength)
        losses.append(session.evaluate(batch).loss)
    first, last = losses[0], losses[-1]
    curve = ", ".join(f"{x:.4g} ({s:g})" for s, x in zip(strengths, losses))
    metrics = {"loss_at_" + f"{s:g}": x for s, x in zip(strengths, losses)}
    metrics["min_relative_rise"] = config.regularization_min_rise
    evidence = {"strengths": strengths, "losses": losses}
    tolerance = config.regularization_min_rise * max(abs(first), 1e-12)
    if not all(math.isfinite(x) for x in losses):
        return CheckResult(
            CHECK,
            "fail",
            f"The loss becomes non-finite as regularization rises: {curve}.",
            metrics,
            evidence,
            "Look for an overflow in the penalty (e.g. exp of the weights).",
        )
    falls = [
        (strengths[i + 1], losses[i + 1])
        for i in range(len(losses) - 1)
        if losses[i + 1] < losses[i] - tolerance
    ]
    if last - first <= tolerance and not falls:
        return CheckResult(
            CHECK,
            "fail",
            f"The loss ignores the regularization strength: {curve}.",
            metrics,
            evidence,
            "The knob is not what the loss reads: make the loss add "
            "strength * penalty from the same attribute the knob sets, and make sure the "
            "penalty is not computed once and cached.",
        )
    if falls:
        where = ", ".join(f"{s:g}" for s, _ in falls)
        return CheckResult(
            CHECK,
            "fail",
            f"The loss falls as regularization rises (at {where}): {curve}.",
            metrics,
            evidence,
            "The penalty enters the loss with the wrong sign.",
        )
    return CheckResult(
        CHECK,
        "pass",
        f"The loss rises with the regularization strength: {curve}.",
        metrics,
        evidence,
    )
