"""What every backend shares, written once: reading and validating batches, the session
skeleton (pass counting, the isolation flag, one activation capture per setting, wrapping a
model's exception into :class:`~nndiag.errors.ModelError` naming the call), the reference
Adam for backends without an optimizer library, and the float64 note.

Imports no framework; numpy loads inside the functions that need it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from nndiag.contract import Batch, LayerRecord, Task
from nndiag.errors import InvalidSubject, ModelError, describe

__all__ = [
    "SessionBase",
    "adam_update",
    "float64_note",
    "read_items",
    "unpack",
    "validate_arrays",
]


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
    whether a check's isolation is open, one activation capture per (rows, bins), and the
    label checks of the probe."""

    framework: str
    _concat: Callable[[list[Any]], Any]  # each backend sets its framework's concatenate

    def __init__(self, subject: Any, config: Any) -> None:
        self.subject = subject
        self.config = config
        self.model = subject.model
        self.batches: list[Batch] = subject.batches[: max(1, config.max_batches)]
        self._forward = 0
        self._backward = 0
        self._inside = 0  # depth of open isolated() blocks
        self._captures: dict[tuple[int, int], list[LayerRecord]] = {}

    def passes(self) -> tuple[int, int]:
        return self._forward, self._backward

    def count(self, forward: int = 0, backward: int = 0) -> None:
        """Count passes of the user's model (they are the check's cost)."""
        self._forward += forward
        self._backward += backward

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Mark isolation open for the block (a backend's ``isolated()`` wraps its body)."""
        self._inside += 1
        try:
            yield
        finally:
            self._inside -= 1

    def require_isolated(self, member: str) -> None:
        """Refuse a primitive that works on private copies outside ``isolated()``.

        Raises:
            RuntimeError: called outside ``isolated()``: a bug in the calling check.
        """
        if not self._inside:
            raise RuntimeError(f"Session.{member}() works only inside session.isolated(check)")

    @staticmethod
    @contextmanager
    def calling(argument: str, call: str) -> Iterator[None]:
        """Run user code, turning what it raises into a ModelError naming ``call``."""
        try:
            yield
        except (InvalidSubject, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise ModelError(argument, call, exc) from exc

    def rows(self, n: int) -> Batch:
        Xs, ys, have = [], [], 0
        for b in self.batches:
            take = min(len(b), n - have)
            Xs.append(self._head(b.X, take))
            ys.append(b.y[:take])
            have += take
            if have >= n:
                break
        return Batch(self._concat(Xs), self._concat(ys))

    @staticmethod
    def _head(X: Any, n: int) -> Any:
        """The first ``n`` rows of a batch's inputs (a backend with dict inputs overrides)."""
        return X[:n]

    def capture(self, *, rows: int, bins: int) -> list[LayerRecord]:
        key = (rows, bins)
        if key not in self._captures:
            self._captures[key] = self._capture_layers(rows, bins)
        return self._captures[key]

    def _capture_layers(self, rows: int, bins: int) -> list[LayerRecord]:
        raise NotImplementedError

    def batch_statistics_layers(self) -> list[str]:
        return []

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

    def stored_batches(self) -> list[Batch]:
        return list(self.batches)


def float64_note(dtypes: Iterable[str]) -> str:
    """What a result says when parameters were promoted for the float64 check."""
    promoted = sorted(set(dtypes) - {"float64"})
    if not promoted:
        return ""
    return f"Parameters are {', '.join(promoted)}: checked on a float64 copy."


def adam_update(
    xp: Any,
    w: Any,
    g: Any,
    m: Any,
    v: Any,
    t: Any,
    lr: Any,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[Any, Any, Any]:
    """One Adam step (Kingma & Ba; CS231n's ``optim.adam``) on arrays of the array module
    ``xp`` (numpy, or jax.numpy inside a jitted function): returns ``(w, m, v)``. ``t`` and
    ``lr`` are numbers, or traced arrays under jit."""
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    step = lr * (m / (1 - beta1**t)) / (xp.sqrt(v / (1 - beta2**t)) + eps)
    return w - step, m, v
