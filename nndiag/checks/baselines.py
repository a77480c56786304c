"""The loss of uninformative outputs, from the session's primitives alone: what
``initial_loss`` compares a model at init against, and the loss's floor on the targets
that ``overfit_small`` aims for (any check may use them).

Written once for every backend: a backend gives ``evaluate`` and ``loss_of``, and the
baselines follow. Every value goes through the user's own loss, so a summed loss, a VAE's
KL term or a BCE on probabilities is measured as it is, never assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nndiag.contract import Batch, Session
from nndiag.errors import InvalidSubject, ModelError

__all__ = ["Baselines", "baselines", "floor"]

# A constant output moved by _STEP changes a smooth loss by about as much as the next
# _STEP does; a loss that sits on a clamp or near a pole there (BCE's log clamped at -100
# for an output of exactly 0, a hand-written log(p + 1e-5)) changes by _CLIFF times more
# on the first step than on the second: a log pole within _STEP / 8 gives a ratio above 3.
_STEP = 1e-2
_CLIFF = 3.0
# Outputs whose exp sums to 1 per row are log-probabilities; float16 and bfloat16
# log_softmax miss 1 by up to 1.6e-3 and 1.1e-2 (a false positive costs nothing: the
# cross-entropy of scores does not change when every score shifts alike).
_LOG_PROB_ATOL = 2e-2
_FAILED = (ModelError, InvalidSubject, ValueError, TypeError, RuntimeError)

_WORDS = {
    "uniform": "uniform scores",
    "prior": "the label prior's scores",
    "zero": "all-zero outputs",
    "mean": "the targets' mean",
    "half": "0.5 everywhere",
}


@dataclass(frozen=True)
class Baselines:
    """Losses of uninformative outputs by name (``uniform``/``prior`` for a classifier;
    ``zero``, ``mean``, ``half`` for other targets), the reference among them, and those
    left out with the reason."""

    values: dict[str, float]
    expected: str
    left_out: dict[str, str] = field(default_factory=dict)
    # The outputs of each continuous baseline (classes on axis 1), for per-row losses.
    outputs: dict[str, Any] = field(default_factory=dict, repr=False)

    def words(self, name: str) -> str:
        return _WORDS.get(name, name)


def baselines(session: Session, batch: Batch) -> Baselines:
    """The subject's loss of uninformative outputs on ``batch``. Inside isolated()."""
    outputs = np.asarray(session.evaluate(batch, outputs=True).outputs, dtype=np.float64)
    if session.task.kind == "classification":
        return _classifier(session, batch, outputs)
    return _continuous(session, batch, outputs)


def _classifier(session: Session, batch: Batch, outputs: Any) -> Baselines:
    counts = np.asarray(session.task.label_counts, dtype=np.float64)
    prior = np.log(np.maximum(counts, 1e-9) / counts.sum())
    shape = [1, -1] + [1] * (outputs.ndim - 2)  # classes on axis 1
    # A model that ends in log_softmax (for nll_loss): uniform log-probabilities are
    # -ln C, not 0 (which nll_loss would score as a certain hit).
    normalized = _log_probabilities(outputs)
    uniform = -math.log(outputs.shape[1]) if normalized else 0.0
    values = {
        "uniform": session.loss_of(batch, np.full_like(outputs, uniform)),
        "prior": session.loss_of(batch, np.broadcast_to(prior.reshape(shape), outputs.shape)),
    }
    return Baselines(values, "prior")


def _log_probabilities(outputs: Any) -> bool:
    if outputs.ndim < 2 or outputs.shape[1] < 2 or not np.isfinite(outputs).all():
        return False
    top = outputs.max(axis=1, keepdims=True)
    total = top[:, 0] + np.log(np.exp(outputs - top).sum(axis=1))
    return bool(np.abs(total).max() < _LOG_PROB_ATOL)


def _continuous(session: Session, batch: Batch, outputs: Any) -> Baselines:
    """Constant predictors: zero, the targets' mean (the best constant under squared
    error) and, for targets in [0, 1], 0.5; one where the loss sits on a clamp is left
    out, and the best kept one is the reference."""
    y = _targets(batch)
    constants: dict[str, Any] = {"zero": np.zeros_like(outputs)}
    if y.size == outputs.size:
        mean = np.broadcast_to(y.mean(axis=0, keepdims=True), y.shape)
        constants["mean"] = mean.reshape(outputs.shape)
        if y.size and float(y.min()) >= 0.0 and float(y.max()) <= 1.0:
            constants["half"] = np.full_like(outputs, 0.5)
    values: dict[str, float] = {}
    left_out: dict[str, str] = {}
    for name, constant in constants.items():
        reason, value = _smooth_at(session, batch, constant)
        if reason:
            left_out[name] = reason
        else:
            values[name] = value
    if not values:  # every constant on a clamp: compare with them all the same
        values = {name: session.loss_of(batch, c) for name, c in constants.items()}
        left_out = {}
    best = min(values, key=values.__getitem__)
    return Baselines(values, best, left_out, outputs=constants)


def _smooth_at(session: Session, batch: Batch, constant: Any) -> tuple[str, float]:
    """("", loss) where the loss is smooth around ``constant``; (why not, loss) else."""
    value = session.loss_of(batch, constant)
    step = _STEP * max(1.0, float(np.abs(constant).max()) if constant.size else 1.0)
    try:
        one = session.loss_of(batch, constant + step)
        two = session.loss_of(batch, constant + 2 * step)
    except _FAILED:  # outside the loss's domain a step away (BCE past 1)
        return "", value
    if not all(math.isfinite(v) for v in (value, one, two)):
        return "the loss is not finite there", value
    first, second = abs(one - value), abs(two - one)
    scale = _STEP * max(abs(value), 1e-12)
    if first > _CLIFF * second and first > scale:
        return (
            f"the loss sits on a clamp there ({value:.4g}, {one:.4g} a step of {step:g} away)",
            value,
        )
    return "", value


def floor(session: Session, batch: Batch) -> tuple[float, str]:
    """An estimate of the lowest loss outputs reach on ``batch``'s continuous or soft
    targets, and how it was found: the loss of the targets themselves as outputs (0 for
    squared error, their entropy for BCE on probabilities), of their logits (a loss that
    takes logits: BCE-with-logits) or of their logs (cross-entropy on soft labels). A
    candidate counts only below both the model's loss at init and the loss of the targets'
    mean, which any floor is under; (0, "") when none is."""
    evaluation = session.evaluate(batch, outputs=True)
    outputs = np.asarray(evaluation.outputs, dtype=np.float64)
    y = _targets(batch)
    if y.size != outputs.size:
        return 0.0, ""
    shaped = y.reshape(outputs.shape)
    mean = np.broadcast_to(y.mean(axis=0, keepdims=True), y.shape).reshape(outputs.shape)
    candidates = {"the targets as outputs": shaped}
    if y.size and float(y.min()) >= 0.0 and float(y.max()) <= 1.0:
        p = np.clip(shaped, 1e-6, 1 - 1e-6)
        candidates["the targets' logits as outputs"] = np.log(p / (1 - p))
        candidates["the targets' logs as outputs"] = np.log(np.maximum(shaped, 1e-12))
    try:
        above = min(evaluation.loss, session.loss_of(batch, mean))
    except _FAILED:
        above = evaluation.loss
    found: list[tuple[float, str]] = []
    for how, candidate in candidates.items():
        try:
            value = session.loss_of(batch, candidate)
        except _FAILED:
            continue
        if math.isfinite(value) and value < above:
            found.append((value, how))
    return min(found) if found else (0.0, "")


def _targets(batch: Batch) -> Any:
    """A batch's targets as float64 numpy (a torch tensor leaves its device first)."""
    y = batch.y
    if hasattr(y, "detach"):
        y = y.detach().cpu()
    return np.asarray(y, dtype=np.float64)
