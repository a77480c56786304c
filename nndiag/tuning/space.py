"""The search space: what each hyperparameter may take, and how a stage narrows it.

The lecture samples learning rate and regularization in log space ("10 ** uniform(-6, 1)")
and narrows the ranges between a coarse and a fine stage around the values that did best.
Imports no optimizer library: Optuna's distributions are built in :func:`distribution`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nndiag.errors import InvalidSetting, InvalidSettingType, describe

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

__all__ = [
    "Choice",
    "LogUniform",
    "Param",
    "Uniform",
    "narrow",
    "parse_param",
    "validate_space",
]

# The best trials a stage narrows around: the top quarter of the complete ones, at least 3.
TOP_SHARE, TOP_MIN = 0.25, 3
# The narrowed span is padded by this share of itself on each side (a best value on the
# boundary of the top trials is not the optimum's edge), and is never thinner than
# MIN_SPAN of the range it came from (a single lucky value does not pin a range).
PAD, MIN_SPAN = 0.25, 0.1
# A best value this close to an edge of its range (share of the width): the optimum may lie
# outside, and the next stage extends past that edge (the lecture's warning).
EDGE = 0.1


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidSettingType(where, f"expected a finite number, got {describe(value)}")
    return float(value)


@dataclass(frozen=True)
class LogUniform:
    """A positive float sampled uniformly in log space (learning rates, regularization)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        low, high = _number("LogUniform.low", self.low), _number("LogUniform.high", self.high)
        if not 0 < low < high:
            raise InvalidSetting(
                "LogUniform",
                f"needs 0 < low < high, got low={low:g}, high={high:g}",
                "pass e.g. nndiag.LogUniform(1e-5, 1e-1)",
            )
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    kind = "log"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Uniform:
    """A float sampled uniformly between ``low`` and ``high`` (momentum, dropout)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        low, high = _number("Uniform.low", self.low), _number("Uniform.high", self.high)
        if not low < high:
            raise InvalidSetting(
                "Uniform",
                f"needs low < high, got low={low:g}, high={high:g}",
                "pass e.g. nndiag.Uniform(0.5, 0.99)",
            )
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    kind = "uniform"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high}


@dataclass(frozen=True, init=False)
class Choice:
    """One of a few options (an optimizer's name, a layer width): ``Choice("sgd", "adam")``
    or ``Choice(["sgd", "adam"])``. Options are str, int, float, bool or None."""

    options: tuple[Any, ...]

    def __init__(self, *options: Any) -> None:
        if len(options) == 1 and isinstance(options[0], (list, tuple)):
            options = tuple(options[0])
        if not options:
            raise InvalidSetting("Choice", "needs at least one option", 'pass Choice("a", "b")')
        for option in options:
            if option is not None and not isinstance(option, (str, int, float, bool)):
                raise InvalidSettingType(
                    "Choice",
                    f"options must be str, int, float, bool or None, got {describe(option)}",
                    "pass names and numbers; build objects from them in the factory",
                )
        if len(set(options)) != len(options):
            raise InvalidSetting("Choice", f"repeats an option in {options!r}")
        object.__setattr__(self, "options", tuple(options))

    kind = "choice"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "options": list(self.options)}


Param = LogUniform | Uniform | Choice


def from_description(described: Mapping[str, Any]) -> Param:
    """The inverse of ``Param.describe()`` (ranges stored in a study or a JSON file)."""
    if described["kind"] == "choice":
        return Choice(*described["options"])
    cls = LogUniform if described["kind"] == "log" else Uniform
    return cls(float(described["low"]), float(described["high"]))


def validate_space(space: Any) -> dict[str, Param]:
    """The space as a dict, checked: names are str, values are space values.

    Raises:
        InvalidSettingType: ``space`` is not a mapping of names to space values.
        InvalidSetting: it is empty.
    """
    if not isinstance(space, Mapping):
        raise InvalidSettingType(
            "space",
            f"expected a dict of name -> nndiag.LogUniform/Uniform/Choice, got {describe(space)}",
            'pass {"lr": nndiag.LogUniform(1e-5, 1e-1)}',
        )
    if not space:
        raise InvalidSetting("space", "is empty", 'pass {"lr": nndiag.LogUniform(1e-5, 1e-1)}')
    checked: dict[str, Param] = {}
    for name, value in space.items():
        if not isinstance(name, str) or not name:
            raise InvalidSettingType("space", f"names must be non-empty str, got {describe(name)}")
        if not isinstance(value, (LogUniform, Uniform, Choice)):
            raise InvalidSettingType(
                f"space[{name!r}]",
                f"expected nndiag.LogUniform, Uniform or Choice, got {describe(value)}",
                f'pass "{name}": nndiag.LogUniform(low, high)',
            )
        checked[name] = value
    return checked


def parse_param(text: str) -> tuple[str, Param]:
    """One ``--space`` item: ``lr=log:1e-5:1e-1``, ``momentum=uniform:0.5:0.99`` or
    ``opt=choice:sgd,adam`` (choice options that read as numbers become numbers).

    Raises:
        InvalidSetting: naming the item and the accepted forms.
    """
    forms = "name=log:LOW:HIGH, name=uniform:LOW:HIGH or name=choice:A,B,..."
    name, sep, rest = text.partition("=")
    kind, _, values = rest.partition(":")
    name = name.strip()
    if not sep or not name or not values:
        raise InvalidSetting("--space", f"cannot read {text!r}", f"write {forms}")
    if kind == "choice":
        return name, Choice(*(_option(v.strip()) for v in values.split(",")))
    if kind not in ("log", "uniform"):
        raise InvalidSetting("--space", f"unknown kind {kind!r} in {text!r}", f"write {forms}")
    parts = values.split(":")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise InvalidSetting(
            "--space", f"{text!r} needs two numbers LOW:HIGH", f"write {forms}"
        ) from None
    return name, (LogUniform if kind == "log" else Uniform)(low, high)


def _option(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def distribution(param: Param) -> BaseDistribution:
    """Optuna's distribution for a space value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(param, Choice):
        return CategoricalDistribution(param.options)
    return FloatDistribution(param.low, param.high, log=isinstance(param, LogUniform))


def narrow(
    space: Mapping[str, Param], complete: Sequence[tuple[Mapping[str, Any], float]], maximize: bool
) -> tuple[dict[str, Param], str]:
    """The next stage's space: each range narrowed around the best complete trials.

    Args:
        space: This stage's space.
        complete: ``(params, value)`` of this stage's complete trials.
        maximize: Whether a higher value is better.

    Returns:
        The narrowed space and why, in one sentence per parameter.
    """
    ranked = sorted(complete, key=lambda item: item[1], reverse=maximize)
    if len(ranked) < TOP_MIN:
        return dict(space), (
            f"{len(ranked)} complete trial(s), fewer than {TOP_MIN}: the ranges are kept"
        )
    top = ranked[: max(TOP_MIN, math.ceil(TOP_SHARE * len(ranked)))]
    narrowed: dict[str, Param] = {}
    reasons = [f"around the best {len(top)} of {len(ranked)} complete trials"]
    for name, param in space.items():
        values = [params[name] for params, _ in top if name in params]
        if not values:
            narrowed[name] = param
            continue
        if isinstance(param, Choice):
            kept = tuple(o for o in param.options if o in values)
            narrowed[name] = Choice(*kept)
            reasons.append(f"{name}: kept {', '.join(map(str, kept))}")
            continue
        narrowed[name], why = _narrow_range(param, values, top[0][0].get(name, values[0]))
        reasons.append(f"{name}: {why}")
    return narrowed, "; ".join(reasons)


def _narrow_range(
    param: LogUniform | Uniform, values: list[float], best: float
) -> tuple[LogUniform | Uniform, str]:
    log = isinstance(param, LogUniform)
    to = math.log10 if log else float

    def back(v: float) -> float:
        return 10**v if log else v

    low, high = to(param.low), to(param.high)
    width = high - low
    points = [to(v) for v in values]
    lo, hi = min(points), max(points)
    pad = max(PAD * (hi - lo), MIN_SPAN * width / 2)
    new_lo, new_hi = max(lo - pad, low), min(hi + pad, high)
    edge = ""
    where = (to(best) - low) / width
    # A log range (a rate, a strength) may extend past the edge its best value sits on:
    # the optimum may lie outside. A linear one (momentum, dropout) often has hard bounds.
    if log and where < EDGE:
        new_lo = lo - pad
        edge = ", the best is at the low edge, so it extends below it"
    elif log and where > 1 - EDGE:
        new_hi = hi + pad
        edge = ", the best is at the high edge, so it extends above it"
    unit = " (log10)" if log else ""
    made = type(param)(back(new_lo), back(new_hi))
    why = (
        f"{_g(made.low)}..{_g(made.high)}, the top trials' span{unit} "
        f"{_g(back(lo))}..{_g(back(hi))} padded by {PAD:.0%}{edge}"
    )
    return made, why


def _g(value: float) -> str:
    return f"{value:.3g}"
