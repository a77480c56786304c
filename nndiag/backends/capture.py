"""Per-layer activation statistics, reduced the same way for every backend.

A backend hands each activation function's output to :meth:`Accumulator.add` as a
``(rows, units)`` array while the forward pass runs; only per-unit counters and a
fixed-bin histogram are kept, so memory grows with layers x units, not with the batch.
"""

from __future__ import annotations

import numpy as np

from nndiag.backends import LayerRecord

__all__ = ["HIST_VALUES", "Accumulator"]

HIST_VALUES = 4096  # values per call that feed a layer's histogram (a strided row sample)


class Accumulator:
    """Statistics keyed by layer name; layers are numbered in the order first seen."""

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.records: dict[str, LayerRecord] = {}

    def add(
        self,
        name: str,
        kind: str,
        x: np.ndarray,
        weight: tuple[str, int, float] | None = None,
        normalized: bool = False,
    ) -> None:
        """Fold one ``(rows, units)`` output of layer ``name`` into its statistics.

        ``weight`` is the (name, fan-in, std) of the weight layer feeding it, if known;
        ``normalized`` whether a normalization ran since the previous activation.
        """
        record = self.records.get(name)
        if record is None:
            record = self.records[name] = self._new(name, kind, x, weight)
            record.normalized = normalized
        elif record.units != x.shape[1]:
            return  # a layer whose width changes between calls: keep the first shape
        with np.errstate(over="ignore", invalid="ignore"):  # a diverged step's Inf/NaN
            self._fold(record, kind, x)

    def _fold(self, record: LayerRecord, kind: str, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = x.size
        mean = float(x.sum(dtype=np.float64)) / n
        centered = (x - np.float32(mean)).ravel()
        m2 = float(np.dot(centered, centered))
        if record.count:  # Chan et al.'s merge of two (count, mean, m2) summaries
            delta = mean - record.mean
            m2 += delta * delta * record.count * n / (record.count + n)
        record.count += n
        record.total += mean * n
        record.m2 += m2
        if kind == "relu":
            record.fires += x.max(axis=0) > 0
        elif kind == "tanh":
            record.saturated += int(np.count_nonzero(np.abs(x) > 0.99))
        elif kind == "sigmoid":
            record.saturated += int(np.count_nonzero((x < 0.01) | (x > 0.99)))
        record.hist_counts += self._histogram(x, record.hist_edges)

    def _histogram(self, x: np.ndarray, edges: tuple[float, float]) -> np.ndarray:
        """Counts over fixed bins of a strided sample of at most HIST_VALUES values
        (``np.histogram`` is several times slower than binning by hand)."""
        sample = x[:: -(-x.size // HIST_VALUES)].ravel()
        sample = sample[np.isfinite(sample)]  # a diverged step's NaN has no bin
        low, high = edges
        index = ((np.clip(sample, low, high) - low) * (self.bins / (high - low))).astype(np.intp)
        np.minimum(index, self.bins - 1, out=index)
        return np.bincount(index, minlength=self.bins)

    def _new(
        self, name: str, kind: str, x: np.ndarray, weight: tuple[str, int, float] | None
    ) -> LayerRecord:
        if kind == "tanh":
            edges = (-1.0, 1.0)
        elif kind == "sigmoid":
            edges = (0.0, 1.0)
        else:  # unbounded: the first batch's range, later values clipped into the end bins
            low = 0.0 if kind == "relu" else float(x.min())
            high = float(x.max())
            edges = (low, high if high > low else low + 1.0)
        record = LayerRecord(
            name,
            kind,
            depth=len(self.records),
            units=int(x.shape[1]),
            hist_counts=np.zeros(self.bins, dtype=np.int64),
            hist_edges=edges,
        )
        if kind == "relu":
            record.fires = np.zeros(record.units, dtype=np.int64)
        if weight is not None:
            record.weight_layer, record.fan_in, record.weight_std = weight
        return record

    def layers(self) -> list[LayerRecord]:
        return sorted(self.records.values(), key=lambda r: r.depth)
