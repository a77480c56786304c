"""Backends: one adapter per framework behind one protocol, chosen by the model's type.

Detection only looks at frameworks already in ``sys.modules``: a model of framework X can
only exist once X was imported, so nndiag is never the one to import torch or jax.
Third-party backends register under the ``nndiag.backends`` entry-point group; the object
an entry point names implements :class:`Backend`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from nndiag.errors import InvalidSubject, describe

__all__ = [
    "Backend",
    "SessionBase",
    "Batch",
    "LayerRecord",
    "Objective",
    "Session",
    "Task",
    "Trainer",
    "backend_for",
    "read_items",
    "unpack",
    "validate_arrays",
]

# name -> (framework module that must already be imported, "module:attribute" of the backend)
_BUILTIN: dict[str, tuple[str, str]] = {
    "torch": ("torch", "nndiag.backends.torch:BACKEND"),
    "jax": ("jax", "nndiag.backends.jax:BACKEND"),
    "numpy": ("numpy", "nndiag.backends.numpy:BACKEND"),  # last: every framework loads numpy
}
ENTRY_POINT_GROUP = "nndiag.backends"
PER_SAMPLE_ROWS = 256  # rows whose individual losses estimate the initial loss's noise


@dataclass(frozen=True)
class Batch:
    """Inputs and targets of one batch, in the backend's own array type."""

    X: Any
    y: Any

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Task:
    """What the model is asked to do, learned from one probe forward pass."""

    kind: Literal["classification", "regression"]
    num_classes: int = 0  # classification only
    label_counts: tuple[int, ...] = ()


@dataclass
class LayerRecord:
    """Per-layer activation statistics, reduced while the forward pass runs.

    ``depth`` orders layers as the forward pass reached them. ``m2`` is the sum of squared
    deviations from the mean (merged per call, so no cancellation in float32). ``fires``
    counts, per unit, the forward calls in which the unit output > 0 for some sample: 0
    means dead (ReLU family only).
    """

    name: str
    kind: str  # relu, tanh, sigmoid, or the function's name for other activations
    depth: int
    units: int
    count: int = 0
    total: float = 0.0
    m2: float = 0.0
    saturated: int = 0
    fires: Any = None  # numpy int array over units, or None
    hist_counts: Any = None
    hist_edges: tuple[float, float] = (0.0, 1.0)
    # The weight layer feeding this activation: name, fan-in and current weight std.
    weight_layer: str | None = None
    fan_in: int | None = None
    weight_std: float | None = None

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def std(self) -> float:
        return (self.m2 / self.count) ** 0.5 if self.count else float("nan")

    @property
    def saturated_fraction(self) -> float:
        return self.saturated / self.count if self.count else 0.0


class Objective(Protocol):
    """The subject's loss on one batch as a float64 function of its trainable tensors."""

    names: list[str]
    shapes: Mapping[str, tuple[int, ...]]
    note: str  # said in the result, e.g. that float32 parameters were promoted

    def value_and_grad(self) -> tuple[float, dict[str, Any]]:
        """Loss and analytic gradients (numpy float64; None where no gradient reached)."""

    def value(self, shifts: Mapping[str, Any], scale: float = 1.0) -> float:
        """Loss with each named tensor shifted by ``scale`` times the given float64 numpy
        array (``scale`` saves the check a tensor-sized temporary per evaluation)."""

    def move(self, shifts: Mapping[str, Any]) -> None:
        """Shift the point itself (on nndiag's private float64 copy)."""

    def values(self) -> dict[str, Any]:
        """The tensors' current float64 values, as numpy arrays (read-only views where the
        backend can give them)."""


class Trainer(Protocol):
    optimizer: str  # description stated in results

    def step(self) -> tuple[float, float | None]:
        """One optimizer step; returns the loss and accuracy measured before it."""

    def unchanged(self) -> list[str]:
        """Names of trainable tensors whose values never changed."""


class Session(Protocol):
    """One diagnose run on one subject; every method leaves the user's model as it was."""

    task: Task
    has_regularization: bool
    framework: str

    def passes(self) -> tuple[int, int]:
        """Forward and backward passes of the model so far."""

    def isolated(self, check: str) -> AbstractContextManager[None]:
        """Snapshot everything a check could change; restore it exactly on exit."""

    def rows(self, n: int) -> Batch:
        """The first ``n`` samples, across the stored batches."""

    def set_regularization(self, strength: float) -> None: ...

    def losses(self, batch: Batch, per_sample: bool = True) -> tuple[float, Any]:
        """Mean loss, and per-sample losses (numpy; None when not asked for or when the
        loss cannot take single rows)."""

    def baselines(self, batch: Batch) -> dict[str, float]:
        """The loss of uninformative outputs: ``uniform`` (all zeros) and ``prior``."""

    def objective(self, batch: Batch) -> AbstractContextManager[Objective]: ...

    def trainer(self, batch: Batch) -> AbstractContextManager[Trainer]: ...

    def capture(self) -> list[LayerRecord]:
        """Activation statistics over the stored batches (computed once per session)."""


def read_items(
    data: Any, limit: int, is_array: Callable[[Any], bool], guard: AbstractContextManager[Any]
) -> list[Any]:
    """The first ``limit`` items of ``data``: one pair ``(X, y)`` of arrays, or an iterable
    of pairs read under ``guard`` (a shuffling DataLoader draws from the global RNGs,
    which the guard gives back).

    Raises:
        InvalidSubject: no data, not iterable, or no batch in it.
    """
    if data is None:
        raise InvalidSubject("data", "got None", "pass one batch (X, y) or an iterable of batches")
    # One batch: (X, y) or (X, y, extra) led by an array; a list of batches leads with a pair.
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and is_array(data[0]):
        return [data]
    items: list[Any] = []
    with guard:
        try:
            iterator = iter(data)  # a DataLoader draws its seed here
        except TypeError:
            raise InvalidSubject(
                "data",
                f"expected (X, y) or an iterable of batches, got {describe(data)}",
                "pass data=(X, y)",
            ) from None
        for item in iterator:
            items.append(item)
            if len(items) >= limit:
                break
    if not items:
        raise InvalidSubject("data", "holds no batch", "pass at least one batch (X, y)")
    return items


def unpack(item: Any, index: int) -> tuple[str, Any, Any]:
    """``(where, X, y)`` of the ``index``-th data item; ``where`` names it in errors.

    Raises:
        InvalidSubject: the item is not a pair.
    """
    where = "data" if index == 0 else f"data (batch {index})"
    if not (isinstance(item, (tuple, list)) and len(item) >= 2):
        raise InvalidSubject(
            where,
            f"a batch must be a pair (X, y), got {describe(item)}",
            "yield (inputs, targets) from the data iterable",
        )
    return where, item[0], item[1]


def validate_arrays(where: str, X: Any, y: Any, nonfinite: Callable[[Any], int]) -> None:
    """Refuse empty arrays, NaN/Inf values (``nonfinite`` counts them; 0 for integer
    arrays) and inputs and targets of different lengths.

    Raises:
        InvalidSubject: naming the batch and the fix.
    """
    for arg, value in (("X", X), ("y", y)):
        if value.ndim == 0 or len(value) == 0:
            raise InvalidSubject(
                where,
                f"{arg} is empty (shape {tuple(value.shape)})",
                "pass a batch with at least one sample",
            )
        bad = nonfinite(value)
        if bad:
            raise InvalidSubject(
                where,
                f"{arg} holds {bad} NaN/Inf value(s)",
                "clean or impute the data before diagnosing",
            )
    if len(X) != len(y):
        raise InvalidSubject(
            where,
            f"X has {len(X)} samples but y has {len(y)}",
            "pass inputs and targets of the same length",
        )


class SessionBase:
    """Bookkeeping every backend's session shares: the subject's batches, pass counters,
    the one activation capture per session, and the label checks of the probe."""

    framework: str

    def __init__(self, subject: Any, config: Any) -> None:
        self.subject = subject
        self.config = config
        self.model = subject.model
        self.batches: list[Batch] = subject.batches[: max(1, config.max_batches)]
        self._forward = 0
        self._backward = 0
        self._capture: list[LayerRecord] | None = None

    def passes(self) -> tuple[int, int]:
        return self._forward, self._backward

    def rows(self, n: int) -> Batch:
        Xs, ys, have = [], [], 0
        for b in self.batches:
            take = min(len(b), n - have)
            Xs.append(b.X[:take])
            ys.append(b.y[:take])
            have += take
            if have >= n:
                break
        return Batch(self._concat(Xs), self._concat(ys))

    @staticmethod
    def _concat(parts: list[Any]) -> Any:
        raise NotImplementedError

    def capture(self) -> list[LayerRecord]:
        if self._capture is None:
            self._capture = self._capture_layers()
        return self._capture

    def _capture_layers(self) -> list[LayerRecord]:
        raise NotImplementedError

    @staticmethod
    def classification(classes: int, labels: list[Any]) -> Task:
        """The task for integer ``labels`` (numpy arrays) against ``classes`` scores.

        Raises:
            InvalidSubject: labels outside ``0 .. classes-1``.
        """
        import numpy as np

        flat = np.concatenate([np.asarray(y).reshape(-1) for y in labels]).astype(np.int64)
        low, high = int(flat.min()), int(flat.max())
        if classes < 2 or low < 0 or high >= classes:
            raise InvalidSubject(
                "data",
                f"labels span {low}..{high} but the model outputs {classes} class scores",
                f"use labels in 0..{classes - 1} or widen the last layer",
            )
        counts = np.bincount(flat, minlength=classes)
        return Task("classification", classes, tuple(int(c) for c in counts))


class Backend(Protocol):
    """What a framework adapter provides; see ``nndiag/backends/torch/``."""

    name: str

    def accepts(self, model: Any) -> bool: ...

    def validate_model(self, model: Any, *, optimizer: Any, regularization: Any) -> None: ...

    def read_batches(self, model: Any, data: Any, limit: int) -> list[Batch]: ...

    def session(self, subject: Any, config: Any) -> Session: ...


def _load(target: str) -> Backend:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _candidates() -> Iterator[Backend]:
    for framework, target in _BUILTIN.values():
        if framework in sys.modules:
            try:
                yield _load(target)
            except ImportError:  # a backend module not shipped in this version
                continue
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        yield ep.load()


def backend_for(model: Any) -> Backend:
    """The backend that accepts ``model``.

    Raises:
        InvalidSubject: no installed backend accepts the model.
    """
    for backend in _candidates():
        if backend.accepts(model):
            return backend
    raise InvalidSubject(
        "model",
        f"no nndiag backend accepts {describe(model)}",
        "pass a torch.nn.Module, a (apply_fn, params) pair for JAX, or an object with a "
        "params dict and loss(X, y) -> (loss, grads) (the CS231n protocol)",
    )
