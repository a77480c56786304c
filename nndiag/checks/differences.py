"""Numeric directional derivatives on smooth segments: the measuring half of
``gradient_check`` (``nndiag/checks/gradients.py`` holds its localization and verdict).

A difference is taken along a direction at a step where no winner of the forward's
non-smooth operations changed (``Objective.sides``), from the side a unit on its kink stays
on where one sits at the point, extrapolated with the half step where it disagrees; with a
noise floor (float32 inside the model) over a wide fixed ladder instead. Directions are
balanced: each tensor adds about one share to the directional derivative.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nndiag.config import Config
from nndiag.contract import Objective, Sides

# Below this a float64 centered difference is mostly rounding, whatever the loss.
SMALLEST_STEP = 1e-11
BANDS = {"good": 1e-7, "kinks_ok": 1e-4, "wrong": 1e-2}  # CS231n notes
# A tensor's gain (1 / its gradient norm) is clipped to this multiple of the median
# tensor's: a near-zero gradient would otherwise get a huge step along its part.
_GAIN_CLIP = 1e3


def relative_error(analytic: float, numeric: float, zero: float, noise: float = 0.0) -> float:
    """|a - n| / max(|a|, |n|), less ``noise`` (the float64 resolution of the numeric
    estimate) in the numerator; 0 when both are below ``zero``."""
    scale = max(abs(analytic), abs(numeric))
    if not (math.isfinite(numeric) and math.isfinite(analytic)):
        return math.inf
    return 0.0 if scale < zero else max(abs(analytic - numeric) - noise, 0.0) / scale


def band(error: float) -> str:
    """The CS231n notes' name for a relative error."""
    if error < BANDS["good"]:
        return "good"
    if error < BANDS["kinks_ok"]:
        return "fine with kinks"
    if error < BANDS["wrong"]:
        return "uncomfortable"
    return "wrong"


def _noise(loss: float, h: float) -> float:
    """Rounding error of a centered difference: a few ulps of the loss over the step."""
    return 4 * float(np.finfo(np.float64).eps) * max(abs(loss), 1.0) / h


@dataclass
class Finding:
    """One directional derivative, analytic against numeric."""

    error: float  # what the verdict uses: rounding noise discounted, over the scale
    raw: float  # the notes' relative error at the step the verdict uses
    analytic: float
    numeric: float
    step: float
    # True: no winner changed at ``step``; None: the backend records no winners; False:
    # winners changed at every step down to the rounding limit (no evidence either way).
    smooth: bool | None = True
    confirmed: bool = False  # a disagreement seen again at a ten times smaller step
    one_sided: bool = False  # from the side a unit on its kink stays on
    errors: list[tuple[float, float]] = field(default_factory=list)  # (h, error) as tried
    crossings: list[tuple[float, int | None]] = field(default_factory=list)  # (h, changed)
    resolution: float = 0.0  # relative uncertainty of the numeric estimate (noisy losses)


@dataclass
class Probe:
    """What every measurement of one run shares: the objective at its point, the loss
    there, its noise floor, and the share each tensor adds to a screen."""

    f: Objective
    loss: float
    floor: float
    config: Config
    rows: int

    @property
    def noisy(self) -> bool:
        return _is_noisy(self.floor, self.loss)

    def rounding(self, h: float) -> float:
        return max(_noise(self.loss, h), 2 * self.floor / h)

    def measure(
        self, part: dict[str, np.ndarray], analytic: float, *, against: float | None
    ) -> Finding:
        """The directional derivative along ``part``; its error relative to ``against``
        (one tensor's share of a balanced direction), else the notes' relative error."""
        if self.noisy:
            return _noisy(self, part, analytic)
        return _smooth(self, part, analytic, against)


def _steps(config: Config) -> Iterator[float]:
    """The configured steps, then smaller ones by decades."""
    yield from config.gradient_steps
    h = min(config.gradient_steps)
    while h > SMALLEST_STEP:
        h /= 10
        yield h


def _difference(
    probe: Probe, part: dict[str, np.ndarray], h: float
) -> tuple[float, int | None, bool]:
    """The numeric derivative at step ``h`` (second-order accurate), the winners changed
    between x-h and x+h, and whether the estimate stands on a smooth segment (centered,
    or one-sided where a unit sits on its kink at x)."""
    sides = probe.f.sides(part, h)
    numeric = (sides.up - sides.down) / (2 * h)
    if not sides.crossings:
        return numeric, sides.crossings, True
    one = _one_sided(probe, part, h, sides)
    return (numeric, sides.crossings, False) if one is None else (one, sides.crossings, True)


def _smooth(
    probe: Probe, part: dict[str, np.ndarray], analytic: float, against: float | None
) -> Finding:
    """Differences over the step ladder: a step at which winners changed is skipped; the
    first smooth one that agrees ends it. A smooth disagreement is extrapolated with the
    half step (Richardson: (4 D(h/2) - D(h)) / 3 removes the h**2 truncation, which a deep
    net's curvature makes visible, e.g. batch norm over 4 rows): a wrong gradient's error
    stays (confirmed), truncation's goes; what still shrinks goes on down the ladder."""
    config = probe.config
    found: Finding | None = None
    errors: list[tuple[float, float]] = []
    crossings: list[tuple[float, int | None]] = []
    numeric = 0.0

    def judged(value: float, h: float, rounding: float) -> Finding:
        size = against or max(abs(analytic), abs(value))
        gap = abs(analytic - value) if math.isfinite(value) else math.inf
        error = max(gap - rounding, 0.0) / size if size > config.gradient_zero else 0.0
        # The notes' relative error of the whole derivative, less what rounding cannot
        # resolve (as the share error is): undiscounted, a deep net's rounding read as a
        # loose gradient (timm convnext_atto: 1.1e-5, 0 of a share).
        raw = relative_error(analytic, value, config.gradient_zero, rounding)
        return Finding(error, raw, analytic, value, h)

    for h in _steps(config):
        # Rounding is discounted from the error; a smaller step is useful while it would
        # not hide a tenth of an error at the fail threshold.
        scale = against or max(abs(analytic), abs(numeric))
        if errors and probe.rounding(h) > 0.1 * config.gradient_fail * scale:
            break
        numeric, crossed, smooth = _difference(probe, part, h)
        now = judged(numeric, h, probe.rounding(h))
        errors.append((h, now.error))
        crossings.append((h, crossed))
        if not smooth:
            continue
        now.smooth = None if crossed is None else True
        now.one_sided = bool(crossed)
        if now.error <= config.gradient_warn:
            found = now
            break
        half, _, halved = _difference(probe, part, h / 2)
        if halved:
            extrapolated = judged((4 * half - numeric) / 3, h, 3 * probe.rounding(h))
            extrapolated.smooth, extrapolated.one_sided = now.smooth, now.one_sided
            extrapolated.confirmed = extrapolated.error >= 0.5 * now.error
            now = extrapolated
        found = now
        if now.error <= config.gradient_warn or now.confirmed:
            break
    if found is None:  # winners changed at every step: no evidence either way
        h, error = errors[-1]
        found = Finding(error, error, analytic, math.nan, h, smooth=False)
    found.errors, found.crossings = errors, crossings
    return found


def _one_sided(probe: Probe, part: dict[str, np.ndarray], h: float, sides: Sides) -> float | None:
    """Where winners changed between x-h and x+h but not between x and one of them (a unit
    that sits on its kink at x), the difference on that side, from x, x+-h and x+-2h
    (second order: (-3 L(x) + 4 L(x+h) - L(x+2h)) / 2h), if no winner changed at x+-2h
    either; else None."""
    for sign, near, changed in (
        (1.0, sides.up, sides.up_changed),
        (-1.0, sides.down, sides.down_changed),
    ):
        if changed != 0:
            continue
        far = probe.f.sides(part, 2 * h)
        value, moved = (far.up, far.up_changed) if sign > 0 else (far.down, far.down_changed)
        if moved == 0:
            return sign * (-3 * probe.loss + 4 * near - value) / (2 * h)
    return None


def _noisy(probe: Probe, part: dict[str, np.ndarray], analytic: float) -> Finding:
    """With a noise floor (float32 inside the model) no step is exact: over a wide ladder
    (1e-2 down to 1e-8, half a decade apart) the change between successive steps
    estimates the truncation error and the floor over the step the rounding error; the
    verdict is taken at the step whose estimate is most precise, with that uncertainty
    discounted (never at whichever step happens to agree best)."""
    config = probe.config
    tried: list[tuple[float, float, float]] = []  # (h, numeric, rounding)
    for k in range(4, 17):
        h = 10.0 ** (-k / 2)
        sides = probe.f.sides(part, h)
        tried.append((h, (sides.up - sides.down) / (2 * h), probe.rounding(h)))
    spread = [  # both neighbours' changes: two estimates can agree by chance
        noise
        + (abs(numeric - tried[i - 1][1]) if i > 0 else math.inf)
        + (abs(tried[i + 1][1] - numeric) if i + 1 < len(tried) else math.inf)
        for i, (_, numeric, noise) in enumerate(tried)
    ]
    i = int(np.argmin(spread))
    h, numeric, _ = tried[i]
    error = relative_error(analytic, numeric, config.gradient_zero, spread[i])
    found = Finding(
        error, relative_error(analytic, numeric, config.gradient_zero), analytic, numeric, h, None
    )
    found.resolution = spread[i] / max(abs(analytic), abs(numeric), 1e-300)
    found.errors = [
        (t[0], relative_error(analytic, t[1], config.gradient_zero, s))
        for t, s in zip(tried, spread)
    ]
    return found


def noise_floor(f: Objective, direction: dict[str, np.ndarray], loss: float) -> float:
    """How much the loss jitters under a tiny move: float64 rounding for a float64 model;
    far more when the model rounds parts of its computation to float32. The second
    difference also holds the curvature along the move (delta**2 times it) and, where a
    kink was crossed, its bend: a smaller move takes what persists, up to twice."""
    eps = float(np.finfo(np.float64).eps) * max(abs(loss), 1.0)
    floor = math.inf
    for delta in (1e-9, 1e-10, 1e-11):
        sides = f.sides(direction, delta)
        if sides.crossings:
            continue
        floor = min(floor, max(abs(sides.up + sides.down - 2 * loss) / 2, eps))
        if not _is_noisy(floor, loss):
            break
    return floor if math.isfinite(floor) else max(abs(sides.up + sides.down - 2 * loss) / 2, eps)


def _is_noisy(floor: float, loss: float) -> bool:
    """Whether the loss jitters far above float64 rounding: float32 parts inside give
    ~1e9 ulps; a deep float64 net's own rounding reaches ~1e3 (efficientnet_b0: 4e-13 on
    a loss of 1.9), which the smooth-segment steps take in their stride."""
    return floor > 1e5 * float(np.finfo(np.float64).eps) * max(abs(loss), 1.0)


def _norms(grads: dict[str, Any]) -> dict[str, float]:
    return {n: float(np.linalg.norm(g)) if g is not None else 0.0 for n, g in grads.items()}


def _gains(norms: dict[str, float]) -> dict[str, float]:
    """1 / each tensor's gradient norm, clipped to _GAIN_CLIP times the median tensor's
    (a tensor without a gradient gets the median's: its part must still move the loss
    where the graph is cut)."""
    positive = [v for v in norms.values() if v > 0]
    typical = float(np.median(positive)) if positive else 1.0
    return {n: min(1 / v, _GAIN_CLIP / typical) if v > 0 else 1 / typical for n, v in norms.items()}


def _part(rng: np.random.Generator, grad: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, float]:
    """One tensor's part of a balanced direction before its gain: the unit gradient plus a
    random normal part orthogonal to it (so that an error of any shape shows, not only a
    rescaled gradient; the part adds exactly 1 to the derivative along the unit
    gradient), in float32 (a direction need not be precise, only known exactly), and its
    squared norm."""
    part = rng.standard_normal(shape, dtype=np.float32)
    norm = float(np.linalg.norm(grad)) if grad is not None else 0.0
    if norm == 0:
        return part, float(np.vdot(part, part))
    unit = (grad / norm).astype(np.float32)
    along = float(np.vdot(part, unit))
    squared = float(np.vdot(part, part)) - along**2 + 1.0
    part += np.float32(1.0 - along) * unit
    return part, squared


def direction(
    rng: np.random.Generator, shapes: dict[str, tuple[int, ...]], grads: dict[str, Any]
) -> tuple[dict[str, np.ndarray], float]:
    """A balanced direction over every tensor: each tensor's part times its gain and a
    random weight in [0.5, 1.5], so each adds about the same amount (one tensor's share,
    always with the same sign) to the directional derivative; scaled to unit rms entry.
    Returns it and the share. Same signs and unequal weights: errors in several tensors
    (a whole backward scaled) add up in a group instead of cancelling exactly."""
    gains = _gains(_norms(grads))
    parts, total, size = {}, 0.0, 0
    for name, shape in shapes.items():
        parts[name], squared = _part(rng, grads.get(name), shape)
        gains[name] *= 0.5 + rng.random()
        total += squared * gains[name] ** 2
        size += parts[name].size
    rms = math.sqrt(total / max(size, 1)) or 1.0
    for name, part in parts.items():
        part *= np.float32(gains[name] / rms)
    return parts, 1 / rms


def analytic_derivative(grads: dict[str, Any], direction: dict[str, np.ndarray]) -> float:
    return float(sum(np.vdot(g, direction[n]) for n, g in grads.items() if g is not None))


def fresh_part(rng: np.random.Generator, grad: Any, shape: tuple[int, ...]) -> np.ndarray:
    """An independent direction for one tensor, at unit rms entry."""
    part, squared = _part(rng, grad, shape)
    return part / np.float32(math.sqrt(squared / max(part.size, 1)) or 1.0)
