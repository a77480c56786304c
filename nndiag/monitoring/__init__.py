"""The lecture's babysitting, live: rules watched during a real training loop.

::

    with nndiag.monitor(model, optimizer, name="cnn", every=50) as mon:
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            mon.step(loss)
    mon.report  # one result per rule

Importing this module imports no framework.
"""

from __future__ import annotations

from typing import Any

from nndiag.monitoring.engine import Monitor, OnFatal, TrainingWarning
from nndiag.monitoring.rules import RULES
from nndiag.monitoring.settings import MonitorSettings

__all__ = ["RULES", "Monitor", "MonitorSettings", "TrainingWarning", "monitor"]


def monitor(
    model: Any,
    optimizer: Any = None,
    *,
    name: str = "model",
    every: int = 50,
    on_fatal: OnFatal = "warn",
    settings: MonitorSettings | None = None,
) -> Monitor:
    """Watch a training run: use as a context manager around the loop, and call
    ``mon.step(loss)`` after each ``optimizer.step()`` (``mon.validate(metric)`` after a
    validation, when there is one).

    Args:
        model: The torch ``nn.Module`` being trained.
        optimizer: Its optimizer: the update/weight ratios are measured around its
            ``step()``, and its learning rate named in hints. Without one, updates are
            measured between ``mon.step`` calls.
        name: The subject name in the report.
        every: Sample statistics (activations, gradients, updates) on every ``every``-th
            step; the loss is read on every step.
        on_fatal: When a fatal rule fires (a non-finite loss or gradient, a loss spike):
            ``"warn"`` (a :class:`TrainingWarning`), ``"raise"``
            (:class:`nndiag.errors.TrainingUnhealthy`, the report attached), or
            ``"stop"`` (``mon.should_stop`` becomes True; the loop reads it). Every mode
            sets ``mon.should_stop``.
        settings: The rules' thresholds (:class:`MonitorSettings`).

    Raises:
        InvalidSubject: ``model`` is not a torch module, or ``optimizer`` not an optimizer.
        InvalidSetting: ``every`` or ``on_fatal`` is unusable.
    """
    return Monitor(model, optimizer, name=name, every=every, on_fatal=on_fatal, settings=settings)
