"""Hypothesis strategies for testing models with the data they will see.

In the style of ``hypothesis.extra.numpy``: plural nouns, keyword-only bounds (``min_*`` /
``max_*``), arguments validated when the strategy is first used (so a mistake surfaces as
the test's error, not as an import error of the test module). Torch is imported lazily,
inside the strategies.

* :func:`batches` -- input batches shaped and scaled like a subject's data;
* :func:`labels` -- targets like a subject's (class ids or float targets);
* :func:`examples` -- ``(X, y)`` pairs of one size, real rows keeping their real label;
* :func:`seeds` -- integer seeds;
* :func:`architectures` -- small random MLPs (``torch.nn.Sequential``).

A batch is drawn as a list of *row recipes* (a row of the data, a constant row, a row of
random values from a seeded generator, a row of extreme values), so that drawing a batch
costs a handful of choices whatever the input size, and a failing batch shrinks to a
readable one: fewer rows, data row 0, constant 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

if TYPE_CHECKING:
    import torch
    from hypothesis.strategies import SearchStrategy

    from nndiag.subject import Subject

__all__ = [
    "ACTIVATIONS",
    "NORMALIZATIONS",
    "architectures",
    "batches",
    "examples",
    "labels",
    "seeds",
]

# Rows read from a subject's data to learn its shape, range and per-feature statistics.
_MAX_DATA_ROWS = 4096
# Largest batch drawn when max_size is not given (and the data has more rows than this).
_DEFAULT_MAX_SIZE = 64

ACTIVATIONS: tuple[str, ...] = ("relu", "tanh", "sigmoid", "gelu", "leaky_relu", "elu", "silu")
NORMALIZATIONS: tuple[str | None, ...] = (None, "batch", "layer")


# -- argument validation (messages in the style of hypothesis.extra.numpy) -----------------
def _type_error(expected: str, name: str, value: Any) -> InvalidArgument:
    return InvalidArgument(
        f"Expected {expected} but got {name}={value!r} (type={type(value).__name__})"
    )


def _check_int(
    name: str, value: Any, *, minimum: int | None = None, optional: bool = False
) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error("int" if not optional else "int or None", name, value)
    if minimum is not None and value < minimum:
        raise InvalidArgument(f"Expected {name} >= {minimum} but got {name}={value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _type_error("bool", name, value)


def _check_number(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error("a number or None", name, value)
    if not math.isfinite(value):
        raise InvalidArgument(f"Expected a finite number but got {name}={value!r}")


def _check_order(low_name: str, low: Any, high_name: str, high: Any) -> None:
    if low is not None and high is not None and low > high:
        raise InvalidArgument(f"Cannot have {low_name}={low!r} > {high_name}={high!r}")


# -- what the data looks like ----------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    """Shape, dtype, range and statistics of one tensor of a subject's data."""

    rows: Any  # torch.Tensor holding up to _MAX_DATA_ROWS real rows
    integer: bool
    low: float
    high: float
    mean: Any  # per-feature mean (float data only)
    std: Any

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.rows.shape[1:])

    @property
    def count(self) -> int:
        return int(self.rows.shape[0])


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach()
    if hasattr(value, "__array__") and hasattr(value, "shape"):
        return torch.as_tensor(value)
    raise _type_error("an nndiag.Subject, a tensor or an array", name, value)


def _data_of(source: Any, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """X and y of a Subject, an ``(X, y)`` pair, or a bare tensor / array (X only)."""
    import torch

    from nndiag.subject import Subject

    if isinstance(source, Subject):
        X = torch.cat([b.X.detach() for b in source.batches])
        y = torch.cat([b.y.detach() for b in source.batches])
        return X, y
    if isinstance(source, (tuple, list)) and len(source) == 2:
        return _as_tensor(source[0], name), _as_tensor(source[1], name)
    return _as_tensor(source, name), None


def _spec(
    tensor: torch.Tensor,
    name: str,
    low: float | None = None,
    high: float | None = None,
    integer_low: float | None = None,
) -> _Spec:
    if tensor.ndim == 0 or tensor.shape[0] == 0:
        raise InvalidArgument(f"{name} holds no rows (shape {tuple(tensor.shape)})")
    rows = tensor[:_MAX_DATA_ROWS]
    integer = not (rows.is_floating_point() or rows.is_complex())
    if rows.is_complex():
        raise InvalidArgument(f"{name} is complex ({rows.dtype}); only real data is supported")
    values = rows.double()
    data_low, data_high = float(values.min()), float(values.max())
    if integer and integer_low is not None:
        data_low = min(data_low, integer_low)
    low = data_low if low is None else float(low)
    high = data_high if high is None else float(high)
    if integer:
        low, high = float(math.ceil(low)), float(math.floor(high))
    if low > high:
        raise InvalidArgument(f"No value of {name} lies in [{low!r}, {high!r}]")
    mean = std = None
    if not integer:
        mean = values.mean(0)
        std = values.std(0) if len(values) > 1 else values.abs().mean(0)
    return _Spec(rows, integer, low, high, mean, std)


# -- row recipes -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """How one row of a generated batch is made; its repr is what a failure shows."""

    kind: str  # data, constant, uniform, normal, extremes
    value: float | int

    def __repr__(self) -> str:
        if self.kind == "data":
            return f"data[{self.value}]"
        if self.kind == "constant":
            return f"constant({self.value!r})"
        return f"{self.kind}(seed={self.value})"


@dataclass(frozen=True)
class BatchRecipe:
    """A list of row recipes; :meth:`build` turns it into a tensor."""

    rows: tuple[Row, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"[{', '.join(map(repr, self.rows))}]"

    def build(self, spec: _Spec) -> torch.Tensor:
        import torch

        made = [_make_row(spec, row) for row in self.rows]
        out = torch.stack(made) if made else spec.rows[:0].clone()
        return out.clamp(spec.low, spec.high) if not spec.integer else out

    def describe(self, spec: _Spec) -> str:
        """``2 rows (shape (2, 8), values in [-1, 1]): [data[0], constant(0.0)]``."""
        shape = (len(self.rows), *spec.row_shape)
        noun = "row" if len(self.rows) == 1 else "rows"
        return (
            f"{len(self.rows)} {noun} (shape {shape}, values in [{spec.low:.4g}, "
            f"{spec.high:.4g}]): {self!r}"
        )


def _generator(seed: int) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(int(seed))


def _make_row(spec: _Spec, row: Row) -> torch.Tensor:
    import torch

    template = spec.rows[0]
    shape, dtype, device = template.shape, template.dtype, template.device
    if row.kind == "data":
        return spec.rows[int(row.value)].clone()
    if row.kind == "constant":
        return torch.full(shape, row.value, dtype=dtype, device=device)
    g = _generator(int(row.value))
    if spec.integer:
        low, high = int(spec.low), int(spec.high)
        if row.kind == "extremes":
            made = torch.where(torch.rand(shape, generator=g) < 0.5, low, high)
        else:
            made = torch.randint(low, high + 1, shape, generator=g)
        return made.to(dtype=dtype, device=device)
    if row.kind == "uniform":
        made = torch.rand(shape, generator=g, dtype=torch.float64)
        made = spec.low + made * (spec.high - spec.low)
    elif row.kind == "normal":
        made = spec.mean.cpu() + spec.std.cpu() * torch.randn(
            shape, generator=g, dtype=torch.float64
        )
    else:  # extremes: every entry at one end of the range
        pick = torch.rand(shape, generator=g) < 0.5
        made = torch.where(
            pick,
            torch.tensor(spec.low, dtype=torch.float64),
            torch.tensor(spec.high, dtype=torch.float64),
        )
    return made.clamp(spec.low, spec.high).to(dtype=dtype, device=device)


def _value_strategy(spec: _Spec) -> SearchStrategy[Any]:
    if spec.integer:
        return st.integers(int(spec.low), int(spec.high))
    import torch

    narrow = spec.rows.dtype in (torch.float32, torch.float16, torch.bfloat16)
    width: Literal[32, 64] = 32 if narrow else 64
    low, high = spec.low, spec.high
    if narrow:  # hypothesis wants bounds exactly representable at the drawn width
        low, high = _float32_inside(low, up=True), _float32_inside(high, up=False)
        if low > high:
            return st.just(_float32_inside(spec.low, up=False))
    return st.floats(low, high, allow_nan=False, allow_infinity=False, width=width)


def _float32_inside(value: float, *, up: bool) -> float:
    """The float32 nearest ``value`` on the inside of a bound (rounding up for a lower
    bound, down for an upper one)."""
    import torch

    v = torch.tensor(value, dtype=torch.float32)
    if up and float(v) < value:
        v = torch.nextafter(v, torch.tensor(math.inf))
    elif not up and float(v) > value:
        v = torch.nextafter(v, torch.tensor(-math.inf))
    return float(v)


def _row_strategy(spec: _Spec, real_rows: bool, synthetic_rows: bool = True) -> SearchStrategy[Row]:
    """Rows in shrinking order: real data first, then constants, then random rows."""
    if not (real_rows or synthetic_rows):
        raise InvalidArgument("real_rows=False and synthetic_rows=False leave no row to draw")
    choices: list[SearchStrategy[Row]] = []
    if real_rows:
        choices.append(st.integers(0, spec.count - 1).map(lambda i: Row("data", i)))
    if not synthetic_rows:
        return choices[0]
    choices.append(_value_strategy(spec).map(lambda v: Row("constant", v)))
    seed = st.integers(0, 2**32 - 1)
    choices.append(seed.map(lambda s: Row("uniform", s)))
    if not spec.integer:
        choices.append(seed.map(lambda s: Row("normal", s)))
    if spec.high > spec.low:
        choices.append(seed.map(lambda s: Row("extremes", s)))
    return st.one_of(choices)


def _sizes(spec: _Spec, min_size: Any, max_size: Any) -> tuple[int, int]:
    _check_int("min_size", min_size, minimum=1)
    _check_int("max_size", max_size, minimum=1, optional=True)
    _check_order("min_size", min_size, "max_size", max_size)
    if max_size is None:
        max_size = max(min_size, min(spec.count, _DEFAULT_MAX_SIZE))
    return min_size, max_size


def _subset_sizes(count: int, min_size: int, max_size: int) -> tuple[int, int]:
    if min_size > count:
        raise InvalidArgument(
            f"Cannot draw min_size={min_size} distinct rows from data of "
            f"{count} rows (synthetic_rows=False)"
        )
    return min_size, min(max_size, count)


def _batch_recipes(
    source: Any,
    *,
    min_size: int = 1,
    max_size: int | None = None,
    min_value: float | None = None,
    max_value: float | None = None,
    real_rows: bool = True,
    synthetic_rows: bool = True,
) -> tuple[_Spec, SearchStrategy[BatchRecipe]]:
    """The data spec and a strategy of :class:`BatchRecipe` (what :func:`batches` builds
    from); used where a failure should name how its batch was made."""
    _check_number("min_value", min_value)
    _check_number("max_value", max_value)
    _check_order("min_value", min_value, "max_value", max_value)
    _check_bool("real_rows", real_rows)
    _check_bool("synthetic_rows", synthetic_rows)
    X, _ = _data_of(source, "subject")
    spec = _spec(X, "the subject's inputs", min_value, max_value)
    low_size, high_size = _sizes(spec, min_size, max_size)
    if synthetic_rows:
        rows = st.lists(
            _row_strategy(spec, real_rows, synthetic_rows), min_size=low_size, max_size=high_size
        )
    else:  # subsets of the data: distinct rows
        low_size, high_size = _subset_sizes(spec.count, low_size, high_size)
        rows = st.lists(
            _row_strategy(spec, real_rows, False),
            min_size=low_size,
            max_size=high_size,
            unique_by=lambda row: row.value,
        )
    return spec, rows.map(lambda r: BatchRecipe(tuple(r)))


def batches(
    subject: Subject | Any,
    *,
    min_size: int = 1,
    max_size: int | None = None,
    min_value: float | None = None,
    max_value: float | None = None,
    real_rows: bool = True,
    synthetic_rows: bool = True,
) -> SearchStrategy[torch.Tensor]:
    """Input batches shaped, typed and scaled like ``subject``'s data.

    Each row is a row of the data, a constant row, or a row of uniform, normal (the data's
    per-feature mean and std) or extreme values from a seeded generator; every value lies
    in the data's range ``[min, max]`` unless ``min_value`` / ``max_value`` say otherwise.
    Integer inputs (token ids) stay integers. Batches are on the data's device.

    Args:
        subject: An :class:`nndiag.Subject`, an ``(X, y)`` pair, or an input tensor/array
            whose first dimension indexes rows.
        min_size: Fewest rows in a batch (at least 1, the default: batch size 1 is drawn).
        max_size: Most rows. Default: the number of data rows, at most 64 (and at least
            ``min_size``).
        min_value: Lower bound of the values. Default: the data's minimum.
        max_value: Upper bound. Default: the data's maximum.
        real_rows: Whether rows of the data itself are drawn (default True).
        synthetic_rows: Whether constant and random rows are drawn (default True); False
            draws subsets of the data (distinct real rows, at most all of them).

    Returns:
        A strategy of ``torch.Tensor`` of shape ``(n, *row_shape)``.

    Raises:
        InvalidArgument: (when the strategy is first used) an argument of the wrong type
            or out of range, or data with no rows.
    """

    def build() -> SearchStrategy[torch.Tensor]:
        spec, recipes = _batch_recipes(
            subject,
            min_size=min_size,
            max_size=max_size,
            min_value=min_value,
            max_value=max_value,
            real_rows=real_rows,
            synthetic_rows=synthetic_rows,
        )
        return recipes.map(lambda recipe: recipe.build(spec))

    return st.deferred(build)


def _label_spec(source: Any, num_classes: Any) -> _Spec:
    _check_int("num_classes", num_classes, minimum=1, optional=True)
    if isinstance(source, int) and not isinstance(source, bool):
        import torch

        _check_int("num_classes", source, minimum=1)
        return _spec(torch.arange(source), "the labels", 0, source - 1)
    _, y = _data_of(source, "subject")
    if y is None:
        raise InvalidArgument(
            "labels() needs targets: pass an nndiag.Subject, an (X, y) pair or a number of classes"
        )
    if num_classes is not None:
        return _spec(y, "the subject's targets", 0, num_classes - 1)
    return _spec(y, "the subject's targets", integer_low=0)


def labels(
    subject: Subject | Any,
    *,
    min_size: int = 1,
    max_size: int | None = None,
    num_classes: int | None = None,
) -> SearchStrategy[torch.Tensor]:
    """Targets like ``subject``'s: class ids (integer labels) or float targets.

    Args:
        subject: An :class:`nndiag.Subject`, an ``(X, y)`` pair, or a number of classes.
        min_size: Fewest labels (default 1).
        max_size: Most labels. Default: the number of data rows, at most 64.
        num_classes: Class ids are drawn from ``0 .. num_classes - 1``. Default: from 0 to
            the largest label in the data.

    Returns:
        A strategy of 1-d (class ids) or ``(n, *target_shape)`` (float targets) tensors.
    """

    def build() -> SearchStrategy[torch.Tensor]:
        spec = _label_spec(subject, num_classes)
        low_size, high_size = _sizes(spec, min_size, max_size)
        rows = st.lists(_row_strategy(spec, real_rows=True), min_size=low_size, max_size=high_size)
        return rows.map(lambda r: BatchRecipe(tuple(r)).build(spec))

    return st.deferred(build)


def examples(
    subject: Subject | Any,
    *,
    min_size: int = 1,
    max_size: int | None = None,
    num_classes: int | None = None,
    synthetic_rows: bool = True,
) -> SearchStrategy[tuple[torch.Tensor, torch.Tensor]]:
    """``(X, y)`` pairs of one size: a drawn data row comes with its own target, other rows
    with a drawn target (see :func:`batches` and :func:`labels`).

    Args:
        subject: An :class:`nndiag.Subject` or an ``(X, y)`` pair.
        min_size: Fewest rows (default 1).
        max_size: Most rows. Default: the number of data rows, at most 64.
        num_classes: As in :func:`labels`.
        synthetic_rows: Whether made-up rows (with drawn targets) are drawn besides real
            ones (default True); False draws subsets of the data (distinct real rows), e.g.
            to test gradients on in-distribution inputs only.

    Returns:
        A strategy of ``(X, y)`` tuples of tensors.
    """

    def build() -> SearchStrategy[tuple[torch.Tensor, torch.Tensor]]:
        _check_bool("synthetic_rows", synthetic_rows)
        X, y = _data_of(subject, "subject")
        if y is None:
            raise InvalidArgument(
                "examples() needs targets: pass an nndiag.Subject or an (X, y) pair"
            )
        if len(X) != len(y):
            raise InvalidArgument(f"X has {len(X)} rows but y has {len(y)}")
        x_spec = _spec(X, "the subject's inputs")
        y_spec = _label_spec((X, y), num_classes)
        low_size, high_size = _sizes(x_spec, min_size, max_size)
        real = st.integers(0, min(x_spec.count, y_spec.count) - 1).map(
            lambda i: (Row("data", i), Row("data", i))
        )
        made = st.tuples(
            _row_strategy(x_spec, real_rows=False), _row_strategy(y_spec, real_rows=False)
        )
        if synthetic_rows:
            pairs = st.lists(st.one_of(real, made), min_size=low_size, max_size=high_size)
        else:  # subsets of the data: distinct rows
            low_size, high_size = _subset_sizes(
                min(x_spec.count, y_spec.count), low_size, high_size
            )
            pairs = st.lists(
                real, min_size=low_size, max_size=high_size, unique_by=lambda pair: pair[0].value
            )
        return pairs.map(
            lambda p: (
                BatchRecipe(tuple(a for a, _ in p)).build(x_spec),
                BatchRecipe(tuple(b for _, b in p)).build(y_spec),
            )
        )

    return st.deferred(build)


def seeds(*, min_value: int = 0, max_value: int = 2**32 - 1) -> SearchStrategy[int]:
    """Integer seeds for ``torch.manual_seed``, ``numpy.random.default_rng`` and
    ``nndiag.Config(seed=...)``; they shrink towards ``min_value``.

    Args:
        min_value: Smallest seed (default 0).
        max_value: Largest seed (default 2**32 - 1, what numpy accepts).
    """
    _check_int("min_value", min_value, minimum=0)
    _check_int("max_value", max_value, minimum=0)
    _check_order("min_value", min_value, "max_value", max_value)
    return st.integers(min_value, max_value)


@dataclass(frozen=True)
class _Plan:
    in_features: int
    out_features: int
    widths: tuple[int, ...]
    activations: tuple[str, ...]
    normalization: str | None
    bias: bool
    seed: int


def _activation(name: str) -> Any:
    from torch import nn

    return {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "gelu": nn.GELU,
        "leaky_relu": nn.LeakyReLU,
        "elu": nn.ELU,
        "silu": nn.SiLU,
    }[name]()


def _build(plan: _Plan) -> Any:
    import torch
    from torch import nn

    layers: list[nn.Module] = []
    width = plan.in_features
    # Initialize from the drawn seed without touching the caller's generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.seed)
        for hidden, activation in zip(plan.widths, plan.activations):
            layers.append(nn.Linear(width, hidden, bias=plan.bias))
            if plan.normalization == "batch":
                layers.append(nn.BatchNorm1d(hidden))
            elif plan.normalization == "layer":
                layers.append(nn.LayerNorm(hidden))
            layers.append(_activation(activation))
            width = hidden
        layers.append(nn.Linear(width, plan.out_features, bias=plan.bias))
    return nn.Sequential(*layers)


def _check_choices(name: str, value: Any, known: Sequence[Any]) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _type_error("a sequence", name, value)
    if not value:
        raise InvalidArgument(f"{name} must not be empty")
    for item in value:
        if item not in known:
            raise InvalidArgument(
                f"Unknown {name} entry {item!r}; known: {', '.join(map(repr, known))}"
            )
    return tuple(value)


def architectures(
    *,
    in_features: int = 8,
    out_features: int = 3,
    min_depth: int = 1,
    max_depth: int = 3,
    min_width: int = 1,
    max_width: int = 32,
    activations: Sequence[str] = ("relu", "tanh", "gelu"),
    normalization: Sequence[str | None] = (None, "layer"),
    bias: bool | None = True,
) -> SearchStrategy[Any]:
    """Small random MLPs: ``torch.nn.Sequential`` of Linear -> [norm] -> activation blocks
    and a final Linear, initialized from a drawn seed (PyTorch's default init).

    Args:
        in_features: Input width (default 8).
        out_features: Output width (default 3).
        min_depth: Fewest hidden layers (default 1; 0 allows a single Linear).
        max_depth: Most hidden layers (default 3).
        min_width: Narrowest hidden layer (default 1).
        max_width: Widest hidden layer (default 32).
        activations: Names drawn per hidden layer, from :data:`ACTIVATIONS` (default
            relu, tanh, gelu).
        normalization: Choices for the whole model: ``None``, ``"batch"`` (BatchNorm1d:
            needs 2+ rows per batch in training mode) or ``"layer"`` (default: None or
            layer).
        bias: Whether Linear layers have a bias; ``None`` draws it (default True).

    Returns:
        A strategy of ``torch.nn.Sequential`` modules in training mode, on the CPU.
    """

    def build() -> SearchStrategy[Any]:
        _check_int("in_features", in_features, minimum=1)
        _check_int("out_features", out_features, minimum=1)
        _check_int("min_depth", min_depth, minimum=0)
        _check_int("max_depth", max_depth, minimum=0)
        _check_order("min_depth", min_depth, "max_depth", max_depth)
        _check_int("min_width", min_width, minimum=1)
        _check_int("max_width", max_width, minimum=1)
        _check_order("min_width", min_width, "max_width", max_width)
        acts = _check_choices("activations", activations, ACTIVATIONS)
        norms = _check_choices("normalization", normalization, NORMALIZATIONS)
        if bias is not None and not isinstance(bias, bool):
            raise _type_error("bool or None", "bias", bias)

        @st.composite
        def plans(draw: Any) -> _Plan:
            depth = draw(st.integers(min_depth, max_depth))
            widths = tuple(
                draw(st.lists(st.integers(min_width, max_width), min_size=depth, max_size=depth))
            )
            chosen = tuple(draw(st.lists(st.sampled_from(acts), min_size=depth, max_size=depth)))
            norm = draw(st.sampled_from(norms))
            has_bias = draw(st.booleans()) if bias is None else bias
            seed = draw(st.integers(0, 2**32 - 1))
            return _Plan(in_features, out_features, widths, chosen, norm, has_bias, seed)

        return plans().map(_build)

    return st.deferred(build)
