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

from nndiag.monitoring.engine import Monitor, TrainingWarning
from nndiag.monitoring.rules import RULES
from nndiag.monitoring.settings import MonitorSettings

__all__ = ["RULES", "Monitor", "MonitorSettings", "TrainingWarning", "monitor"]


# ``nndiag.monitor(model, optimizer, ...)``: the class itself, documented there.
monitor = Monitor
