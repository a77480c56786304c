"""The loss of uninformative outputs, from the session's primitives alone: what
``initial_loss`` compares a model at init against (and any check may).

Written once for every backend: a backend gives ``evaluate`` and ``loss_of``, and the label
prior's baselines follow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nndiag.contract import Batch, Session

__all__ = ["baselines"]


def baselines(session: Session, batch: Batch) -> dict[str, float]:
    """The subject's loss of uninformative outputs: ``uniform`` (all-zero scores), and for
    a classifier ``prior`` (the log label prior as scores), for a regression ``mean`` (the
    targets' mean). Inside isolated()."""
    outputs = np.asarray(session.evaluate(batch, outputs=True).outputs, dtype=np.float64)
    found = {"uniform": session.loss_of(batch, np.zeros_like(outputs))}
    task = session.task
    if task.kind == "classification":
        counts = np.asarray(task.label_counts, dtype=np.float64)
        prior = np.log(np.maximum(counts, 1e-9) / counts.sum())
        shape = [1, -1] + [1] * (outputs.ndim - 2)  # classes on axis 1
        found["prior"] = session.loss_of(
            batch, np.broadcast_to(prior.reshape(shape), outputs.shape)
        )
    else:
        y = np.asarray(_numpy(batch.y), dtype=np.float64)
        if y.size == outputs.size:
            mean = np.broadcast_to(y.mean(axis=0, keepdims=True), y.shape)
            found["mean"] = session.loss_of(batch, mean.reshape(outputs.shape))
    return found


def _numpy(array: Any) -> Any:
    """A backend array as numpy (a torch tensor leaves its device and graph first)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu()
    return array
