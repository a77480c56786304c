"""Answer leaks at init, for ``initial_loss``: the targets are the inputs (or a position
behind them, which a causal model can read), or a freshly made model already scores its
labels better than the same outputs score other rows' labels.

The second is the honest reference for tied embeddings and residual paths that favour the
input token: the loss of the model's own outputs against shuffled labels goes through the
same loss, with the same label multiset, so only the pairing of rows with labels differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nndiag.config import Config
from nndiag.contract import IGNORED_TARGET, Batch, Session

_SHUFFLES = 16  # permutations of the rows whose losses give the shuffled reference
# Standard deviations of the shuffled losses a gap must exceed. Our calibration
# (docs/calibration.md): healthy models reach 2.5 (a 0.26% gap); GPT-2 reading its input
# tokens 16 (a 14% gap).
_SIGMAS = 5.0


@dataclass(frozen=True)
class Leak:
    """A finding: the sentence for the message, the fix, and its numbers."""

    text: str
    hint: str
    metrics: dict[str, Any]


def copied_targets(session: Session, batch: Batch, shift: int = 0) -> Leak | None:
    """Integer targets that are inputs the model reads where it is scored: the loss scores
    the output at t against the label at t + ``shift``, and that label is the input at the
    same position (k = shift) or one behind (k = shift + 1), readable by any model, a
    causal one included."""
    X, y = session.sequence(batch), session.arrays(batch)[1]
    if X is None or X.shape != y.shape or X.dtype.kind not in "iu" or y.dtype.kind not in "iu":
        return None
    kept = y != IGNORED_TARGET
    for k in (shift, shift + 1):
        if not 0 <= k < X.shape[1]:
            continue
        same = X[:, : X.shape[1] - k] == y[:, k:]
        if kept[:, k:].any() and bool(same[kept[:, k:]].all()):
            where = "the inputs" if k == shift else "the inputs one position behind"
            return Leak(
                f"the targets are {where}: the model can read every answer",
                "The targets are the inputs: shift them for next-token prediction "
                "(X = ids[:, :-1], y = ids[:, 1:]), or give a model that shifts labels "
                "itself (transformers' causal LMs) labels=input_ids with nndiag's own loss.",
                {"targets_are_inputs_shifted_by": k - shift},
            )
    return None


def shuffled_gap(
    session: Session, batch: Batch, outputs: Any, measured: float, config: Config
) -> Leak | None:
    """For token sequences: the model's outputs score their own labels better than other
    rows' labels by more
    than ``_SIGMAS`` standard deviations of the shuffles and
    ``initial_loss_leak`` of the shuffled loss."""
    tokens, y = session.sequence(batch), session.arrays(batch)[1]
    if tokens is None or tokens.dtype.kind not in "iu" or y.ndim < 2 or len(batch) < 4:
        # Token sequences with a target per position only: there tied embeddings and
        # residual paths read the input token at init. A fresh classifier's outputs
        # already group well-separated classes, and half the time in the labels' order
        # (2 classes: 2-10 of 20 seeds 5 sd below the shuffles).
        return None
    rng = np.random.default_rng(config.seed)
    shuffled = []
    for _ in range(_SHUFFLES):
        order = rng.permutation(len(batch))
        shuffled.append(session.loss_of(session.take(batch, order.tolist()), outputs))
    reference, spread = float(np.mean(shuffled)), float(np.std(shuffled))
    gap = reference - measured
    if not np.isfinite(gap) or gap <= _SIGMAS * spread:
        return None
    if gap <= config.initial_loss_leak * abs(reference):
        return None
    return Leak(
        f"the untrained model's outputs score their own labels {gap:.4g} lower than the "
        f"same outputs score other rows' labels ({measured:.4g} against {reference:.4g} "
        f"+- {spread:.2g} over {_SHUFFLES} shuffles, {gap / abs(reference):.0%}): the "
        "labels can be read from the inputs at init",
        "The inputs carry the labels: targets that are the inputs or a shift of them "
        "(for next-token prediction, y = ids[:, 1:] against X = ids[:, :-1]), a label "
        "column left in the features, or weights that are already trained.",
        {"shuffled_loss": reference, "shuffled_spread": spread, "leak_gap": gap},
    )
