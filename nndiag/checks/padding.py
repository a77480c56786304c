"""Padding under an attention mask, for ``causality``: the tokens an attention mask marks
as padding never change the outputs at real positions (nor a sequence's one output).

Evidence, in evaluation mode, from one batch: each padded row as it is and a copy whose
padding tokens are other ids. A model that drops the mask on its way to the attention (a
wrapper that passes ``input_ids`` alone) or builds its own mask wrongly fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nndiag.config import Config
from nndiag.contract import Batch, Session


@dataclass(frozen=True)
class PaddingLeak:
    """Row ``row``'s real outputs moved by ``change`` (they reach ``size``) when only its
    padding tokens changed."""

    row: int
    change: float
    size: float


@dataclass(frozen=True)
class Padding:
    """What was probed: the padded rows and the leaks found among them."""

    rows: list[int]
    leaks: list[PaddingLeak]

    def sentence(self) -> str:
        if not self.leaks:
            return (
                f"changing the padding tokens of {len(self.rows)} padded row(s) left their "
                "real outputs as they were"
            )
        first = self.leaks[0]
        return (
            f"changing only the padding tokens (attention mask 0) of row {first.row} moved "
            f"its outputs at real positions by {first.change:.3g} (they reach "
            f"{first.size:.3g}); rows leaking: {', '.join(str(x.row) for x in self.leaks)}"
        )


ADVICE = (
    "Padding must be invisible: pass the attention_mask on to the model (a wrapper that "
    "calls model(input_ids=...) alone drops it), and mask the padded keys before the "
    "softmax."
)


def other_ids(values: np.ndarray, seen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each id replaced by another id the inputs hold (never one the model has no
    embedding for): ``seen`` is their sorted unique ids, at least two."""
    index = np.searchsorted(seen, values)
    step = rng.integers(1, len(seen), size=values.shape)
    return seen[(index + step) % len(seen)]


def padding(session: Session, batch: Batch, config: Config) -> Padding | None:
    """The padding probe; None when no attention mask marks padding in ``batch``."""
    real = session.real_positions(batch)
    seq = session.sequence(batch)
    if real is None or seq is None:
        return None
    rows = [r for r in range(len(batch)) if not real[r].all()]
    if not rows:
        return None
    seen = np.unique(seq)
    if len(seen) < 2:
        return None  # one token id throughout: no other id to put in its place
    rng = np.random.default_rng(config.seed)
    changed = seq[rows + rows].copy()
    for k, r in enumerate(rows):
        pad = ~real[r]
        changed[len(rows) + k][pad] = other_ids(changed[len(rows) + k][pad], seen, rng)
    probe = session.with_sequence(session.take(batch, rows + rows), changed)
    outputs = np.asarray(session.evaluate(probe, mode="eval", outputs=True).outputs)
    return Padding(rows, _moved(outputs, real, rows, config))


def _moved(
    outputs: np.ndarray, real: np.ndarray, rows: list[int], config: Config
) -> list[PaddingLeak]:
    """Rows whose real outputs differ between the copy as given and the changed one."""
    length = real.shape[1]
    axes = [a for a in range(1, outputs.ndim) if outputs.shape[a] == length]
    found = []
    for k, r in enumerate(rows):
        before, after = outputs[k], outputs[len(rows) + k]
        if axes:  # per-position outputs: the real positions only
            keep: Any = real[r]
            before = np.moveaxis(before, axes[-1] - 1, 0)[keep]
            after = np.moveaxis(after, axes[-1] - 1, 0)[keep]
        size = float(np.abs(before).max()) if before.size else 0.0
        change = float(np.abs(after - before).max()) if before.size else 0.0
        if change > config.causality_rtol * max(size, 1e-12):
            found.append(PaddingLeak(r, change, size))
    return found
