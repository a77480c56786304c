"""What every backend shares, written once: reading and validating batches, the session
skeleton (pass counting, the isolation flag, one activation capture per setting, wrapping a
model's exception into :class:`~nndiag.errors.ModelError` naming the call), the reference
Adam for backends without an optimizer library, and the float64 note.

Imports no framework; numpy loads inside the functions that need it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from nndiag.contract import Batch, LayerRecord, Task
from nndiag.errors import InvalidSubject, ModelError, describe

__all__ = [
    "PROBE_ROWS",
    "SessionBase",
    "adam_update",
    "check_consistent",
    "check_default_targets",
    "float64_note",
    "read_items",
    "unpack",
    "validate_arrays",
]


# Rows the probe forward runs on: enough to see the output's shape and run the loss.
PROBE_ROWS = 64


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
    _refuse_unstacked(data, is_array)
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
        while len(items) < limit:
            try:
                item = next(iterator)
            except StopIteration:
                break
            except Exception as exc:  # the user's loader failed: say which batch
                raise InvalidSubject(
                    f"data (batch {len(items)})",
                    f"reading it raised {type(exc).__name__}: {exc}",
                    "make `next(iter(data))` work outside nndiag first",
                ) from exc
            items.append(item)
    if not items:
        raise InvalidSubject("data", "holds no batch", "pass at least one batch (X, y)")
    return items


def _refuse_unstacked(data: Any, is_array: Callable[[Any], bool]) -> None:
    """``(X, y)`` whose ``X`` is a list of per-sample arrays, as a Dataset's items collect:
    say "stack them", not "a batch must be a pair"."""
    if not (isinstance(data, (tuple, list)) and len(data) in (2, 3)):
        return
    X, y = data[0], data[1]
    if not (isinstance(X, (tuple, list)) and len(X) > 1 and all(is_array(x) for x in X)):
        return
    same = len({tuple(getattr(x, "shape", ())) for x in X}) == 1  # samples share a shape
    labels = (is_array(y) and getattr(y, "ndim", 0) >= 1) or (
        isinstance(y, (tuple, list))
        and all(isinstance(v, (int, float)) or getattr(v, "ndim", None) == 0 for v in y)
    )  # (a list of batches has a batch, not a label, in its second place)
    if same and labels and len(y) == len(X):
        raise InvalidSubject(
            "data",
            f"X is a {type(X).__name__} of {len(X)} arrays, one per sample, for {len(y)} targets",
            "stack them into one batch first: (torch.stack(X), torch.as_tensor(y)), or "
            "np.stack(X); samples of different lengths need padding (a DataLoader's "
            "collate_fn)",
        )


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
    return where, *_cap(item[0], item[1])


def _length(value: Any) -> int | None:
    if isinstance(value, Mapping):
        value = next(iter(value.values()), None)
    shape = getattr(value, "shape", None)
    return int(shape[0]) if shape else None


def _cap(X: Any, y: Any) -> tuple[Any, Any]:
    """At most MAX_ROWS rows of a batch, as views: nndiag never reads more, so a huge
    array costs no memory and no forward pass over all of it."""
    from nndiag.subject import MAX_ROWS

    n = _length(X)
    if n is None or n != _length(y) or n <= MAX_ROWS:
        return X, y  # mismatched lengths are reported by validate_arrays
    if isinstance(X, Mapping):
        X = {k: v[:MAX_ROWS] for k, v in X.items()}
    else:
        X = X[:MAX_ROWS]
    return X, y[:MAX_ROWS]


def validate_arrays(where: str, X: Any, y: Any, nonfinite: Callable[[Any], int]) -> None:
    """Refuse empty arrays, NaN/Inf values (``nonfinite`` counts them; 0 for integer
    arrays) and inputs and targets of different lengths.

    Raises:
        InvalidSubject: naming the batch and the fix.
    """
    if y.ndim == 0 and X.ndim >= 1:  # a Dataset's item: one sample, one label
        raise InvalidSubject(
            where,
            f"y is a single label (shape ()) for X of shape {tuple(X.shape)}: the data "
            "yields samples, not batches (a Dataset where a DataLoader was meant?)",
            "pass DataLoader(dataset, batch_size=64), or one batch (X, y)",
        )
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


def check_consistent(batches: Sequence[Batch]) -> None:
    """Refuse batches whose samples differ in shape or label kind from the first batch's:
    checks concatenate rows across batches.

    Raises:
        InvalidSubject: naming the first batch that differs, and how.
    """

    def shapes(X: Any) -> dict[str, tuple[int, ...]]:
        if isinstance(X, Mapping):
            return {f"X[{k!r}]": tuple(v.shape[1:]) for k, v in X.items()}
        return {"X": tuple(X.shape[1:])}

    def kind(y: Any) -> str:
        name = str(y.dtype)
        return "float" if "float" in name else "integer"

    first = batches[0]
    for index, batch in enumerate(batches[1:], start=1):
        found, expected = shapes(batch.X), shapes(first.X)
        found["y"], expected["y"] = tuple(batch.y.shape[1:]), tuple(first.y.shape[1:])
        for arg in sorted(set(found) | set(expected)):
            if found.get(arg) != expected.get(arg):
                raise InvalidSubject(
                    f"data (batch {index})",
                    f"its samples have {arg} of shape {found.get(arg)}, batch 0's have "
                    f"{expected.get(arg)}",
                    "yield batches of one sample shape (pad sequences to one length), or "
                    "pass one batch (X, y)",
                )
        if kind(batch.y) != kind(first.y):
            raise InvalidSubject(
                f"data (batch {index})",
                f"y holds {kind(batch.y)} values, batch 0's y {kind(first.y)} values",
                "use one label type in every batch: integer class ids or float targets",
            )


def check_default_targets(y: Any, output_shape: tuple[int, ...]) -> None:
    """With the default loss, float targets mean regression by mean squared error: refuse
    the float targets that are really labels (class ids, one-hot rows), which MSE would
    score as garbage. ``y`` is a numpy array of the first batch's targets.

    Raises:
        InvalidSubject: naming what the targets look like and the fix.
    """
    import numpy as np

    scores = len(output_shape) == 2 and output_shape[1] >= 2
    if y.ndim == 1 and scores:
        classes = output_shape[1]
        ids = bool(np.all(y == np.round(y)) and y.min() >= 0 and y.max() < classes)
        looks = f" (values that look like class ids 0..{int(y.max())})" if ids else ""
        raise InvalidSubject(
            "data",
            f"y holds one float per sample{looks}, but the model outputs {classes} scores "
            "per sample; the default loss for float targets is mean squared error",
            "pass integer class ids (y.long(), y.astype(int)) for classification, or a loss "
            "for these targets",
        )
    if y.ndim == 2 and tuple(y.shape) == tuple(output_shape) and scores:
        one_hot = bool(np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1))
        if one_hot:
            raise InvalidSubject(
                "data",
                "y holds one-hot rows; the default loss for float targets is mean squared "
                "error, not cross-entropy",
                "pass class ids (y.argmax(1)) for cross-entropy, or pass the loss to "
                "regress on one-hot rows on purpose",
            )


def cut_targets(y: Any, old: int, new: int) -> Any:
    """Per-position targets (axis 1 of length ``old``) cut to a shorter sequence of
    ``new`` positions; other targets as they are."""
    return y[:, :new] if y.ndim >= 2 and y.shape[1] == old and new < old else y


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
        self.causal: bool | None = getattr(subject, "causal", None)
        self.stochastic_eval = bool(getattr(subject, "stochastic_eval", False))
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
    def calling(argument: str, call: str, fix: str | None = None) -> Iterator[None]:
        """Run user code, turning what it raises into a ModelError naming ``call`` (and
        ``fix``, when the default "make it run outside nndiag" would be wrong)."""
        try:
            yield
        except (InvalidSubject, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise ModelError(argument, call, exc, fix=fix) from exc

    def model_causal(self) -> bool | None:
        return None  # overridden where a model can say so (transformers)

    def real_positions(self, batch: Batch) -> Any:
        return None  # overridden where inputs carry an attention mask (transformers)

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
