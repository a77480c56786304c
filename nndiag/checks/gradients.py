"""``gradient_check``: analytic against numeric gradients, in float64.

Cost does not grow with the number of parameter tensors when the gradients are right:
after one backward pass, the whole model is screened along two independent random
directions (a centered difference each: 2 forward passes per step tried), each tensor's
part scaled so that every tensor contributes alike to the directional derivative — a 1%
error in one tensor of sixty still shows. Only a screen that fails is localized: each
tensor is checked along its own part of the direction, and a tensor fails only when an
independent re-measurement (a fresh direction) fails too; the worst one is then bisected
down to one coordinate.

Kinks (ReLU, max-pool) crossed by the step spoil a centered difference by an amount that
shrinks with the step; a wrong gradient does not shrink (docs/calibration.md: one-sided
differences at a kink agree for h <= 1e-6). Steps are tried from large to small until the
error is small. A torch forward's casts to float32 run in float64 during the check (the
backend's objective); a model that still computes parts below float64 gives the loss a
noise floor: it is measured, and steps and tolerance follow from it (and the result says
so). With a regularization knob, the check runs at strength
0 and again at a strength where the penalty's gradient is as large as the data term's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nndiag.config import Config
from nndiag.contract import Objective, Session
from nndiag.results import CheckResult

CHECK = "gradient_check"
# Below this a float64 centered difference is mostly rounding, whatever the loss.
_SMALLEST_STEP = 1e-11
BANDS = {"good": 1e-7, "kinks_ok": 1e-4, "wrong": 1e-2}  # CS231n notes


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


def _sides(f: Objective, name: str, direction: np.ndarray, h: float) -> tuple[float, float]:
    """The loss at +h and -h along ``direction``."""
    return f.value({name: direction}, h), f.value({name: direction}, -h)


def _difference(f: Objective, name: str, direction: np.ndarray, h: float) -> float:
    up, down = _sides(f, name, direction, h)
    return (up - down) / (2 * h)


def _noise(loss: float, h: float) -> float:
    """Rounding error of a centered difference: a few ulps of the loss over the step."""
    return 4 * float(np.finfo(np.float64).eps) * max(abs(loss), 1.0) / h


@dataclass
class _Finding:
    error: float  # what the verdict uses: rounding noise discounted, kinks ruled out
    raw: float  # the notes' relative error of the best centered difference
    analytic: float
    numeric: float
    step: float
    kink: bool = False
    errors: list[tuple[float, float]] = field(default_factory=list)  # (h, error) as tried
    resolution: float = 0.0  # relative uncertainty of the numeric estimate (noisy losses)


def _compare(
    sides: Callable[[float], tuple[float, float]],
    analytic: float,
    loss: float,
    floor: float,
    steps: tuple[float, ...],
    config: Config,
) -> _Finding:
    """Centered differences over ``steps`` (then smaller ones while kinks shrink away),
    stopping once one agrees; ``sides(h)`` gives the loss at +h and -h.

    A step that crosses a kink (a ReLU unit changing sides) spoils the centered difference
    but not both one-sided ones: the side that stays on the point's own linear piece
    matches the analytic gradient. A wrong gradient matches neither side.

    With a noise floor (float32 inside the model) no step is exact: the change between
    successive steps estimates the truncation error, the floor over the step the rounding
    error, and the verdict is taken at the step whose estimate is most precise, with that
    uncertainty discounted (never at whichever step happens to agree best).
    """
    noisy = _is_noisy(floor, loss)
    errors: list[tuple[float, float]] = []
    tried: list[tuple[float, float, float, float]] = []  # (h, numeric, uncertainty, error)
    best: _Finding | None = None
    sided: list[float] = []  # per step, the better one-sided difference's error
    for h in _ladder(steps, errors, analytic, loss, floor, config):
        up, down = sides(h)
        numeric = (up - down) / (2 * h)
        noise = max(_noise(loss, h), 2 * floor / h)
        if noisy:
            noise += abs(numeric - tried[-1][1]) if tried else math.inf
        error = relative_error(analytic, numeric, config.gradient_zero, noise)
        tried.append((h, numeric, noise, error))
        errors.append((h, error))
        if not noisy and (best is None or error < best.error):
            raw = relative_error(analytic, numeric, config.gradient_zero)
            best = _Finding(error, raw, analytic, numeric, h)
        if not noisy and error <= config.gradient_warn:
            break
        sided.append(
            min(
                relative_error(analytic, (up - loss) / h, config.gradient_zero, noise),
                relative_error(analytic, (loss - down) / h, config.gradient_zero, noise),
            )
        )
    if noisy:
        # Both neighbours' changes: two estimates can agree by chance.
        spread = [
            t[2] + (abs(tried[i + 1][1] - t[1]) if i + 1 < len(tried) else math.inf)
            for i, t in enumerate(tried)
        ]
        i = int(np.argmin(spread))
        h, numeric, _, _ = tried[i]
        noise = spread[i]
        error = relative_error(analytic, numeric, config.gradient_zero, noise)
        raw = relative_error(analytic, numeric, config.gradient_zero)
        best = _Finding(error, raw, analytic, numeric, h)
        best.resolution = noise / max(abs(analytic), abs(numeric), 1e-300)
        return best
    assert best is not None
    # Kinks: the error shrinks with the step (halves or better over the steps tried).
    shrinks = len(errors) >= 2 and errors[-1][1] < 0.5 * errors[0][1]
    # The side on the point's own linear piece agrees at every step that crosses the kink;
    # a one-sided difference's O(h) truncation can meet a wrong gradient at one step only
    # (it changes 10x from step to step), so one agreeing step alone is no kink unless the
    # centered error shrinks too.
    agreeing = [e for e in sided if e <= config.gradient_fail]
    if (
        best.error > config.gradient_warn
        and agreeing
        and (len(agreeing) >= 2 or shrinks)
        and min(agreeing) < best.error
    ):
        best.error, best.kink = min(agreeing), True
    if shrinks:
        best.kink = True
    best.errors = errors
    return best


def _checked(
    f: Objective,
    name: str,
    grad: np.ndarray,
    direction: np.ndarray,
    loss: float,
    config: Config,
    floor: float = 0.0,
) -> _Finding:
    """One tensor along ``direction``: see :func:`_compare`."""
    analytic = float(np.vdot(grad, direction))
    steps = _steps(config, floor, loss)
    found = _compare(lambda h: _sides(f, name, direction, h), analytic, loss, floor, steps, config)
    return found


def _localize(
    f: Objective,
    name: str,
    grad: np.ndarray,
    direction: np.ndarray,
    loss: float,
    config: Config,
    rng: np.random.Generator,
    h: float,
) -> dict[str, Any]:
    """Bisect the direction's support towards the coordinate with the largest mismatch,
    at the step ``h`` the tensor's own check settled on."""
    flat = np.flatnonzero(direction)
    rng.shuffle(flat)
    while len(flat) > 1:
        halves = np.array_split(flat, 2)
        gaps = []
        for half in halves:
            part = np.zeros_like(direction)
            part.flat[half] = direction.flat[half]
            gaps.append(abs(float(np.vdot(grad, part)) - _difference(f, name, part, h)))
        flat = halves[int(np.argmax(gaps))]
    index = int(flat[0])
    unit = np.zeros_like(direction)
    unit.flat[index] = 1.0
    numeric = _difference(f, name, unit, h)
    analytic = float(grad.flat[index])
    return {
        "tensor": name,
        "index": [int(i) for i in np.unravel_index(index, grad.shape)],
        "analytic": analytic,
        "numeric": numeric,
        "rel_error": relative_error(analytic, numeric, config.gradient_zero, _noise(loss, h)),
    }


def _signs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random +/-1 entries (the jitter off exact kinks)."""
    return (rng.random(shape, dtype=np.float32) < 0.5).astype(np.float64) * 2 - 1


def _direction(
    rng: np.random.Generator, shapes: dict[str, tuple[int, ...]], grads: dict[str, Any]
) -> dict[str, np.ndarray]:
    """A random normal direction over every tensor, each part scaled by 1/|grad| (the gain
    clipped to 1e-2..1e2 of the median) so that each tensor adds about as much to the directional
    derivative; normal, not +/-1, entries: a sign pattern can cancel exactly."""
    norms = {n: float(np.linalg.norm(g)) if g is not None else 0.0 for n, g in grads.items()}
    positive = [v for v in norms.values() if v > 0]
    typical = float(np.median(positive)) if positive else 1.0
    direction = {}
    for name, shape in shapes.items():
        part = rng.standard_normal(shape, dtype=np.float32).astype(np.float64)
        norm = norms.get(name, 0.0)
        gain = typical / norm if norm > 0 else 1.0
        direction[name] = part * min(max(gain, 1e-2), 1e2) / math.sqrt(max(part.size, 1))
    rms = math.sqrt(sum(float(np.vdot(d, d)) for d in direction.values()) / _size(direction))
    return {n: d / (rms or 1.0) for n, d in direction.items()}


def _size(direction: dict[str, np.ndarray]) -> int:
    return max(sum(d.size for d in direction.values()), 1)


def _analytic(grads: dict[str, Any], direction: dict[str, np.ndarray]) -> float:
    return float(sum(np.vdot(g, direction[n]) for n, g in grads.items() if g is not None))


def _noise_floor(f: Objective, direction: dict[str, np.ndarray], loss: float) -> float:
    """How much the loss jitters under a tiny move: float64 rounding for a float64 model;
    far more when the model rounds parts of its computation to float32."""
    delta = 1e-9
    up, down = f.value(direction, delta), f.value(direction, -delta)
    eps = float(np.finfo(np.float64).eps) * max(abs(loss), 1.0)
    return max(abs(up + down - 2 * loss) / 2, eps)


def _is_noisy(floor: float, loss: float) -> bool:
    """Whether the loss jitters far above float64 rounding (float32 parts inside)."""
    return floor > 1e3 * float(np.finfo(np.float64).eps) * max(abs(loss), 1.0)


def _steps(config: Config, floor: float, loss: float) -> tuple[float, ...]:
    """The configured steps when the loss is float64-clean; with a noise floor a wide
    ladder (1e-2 down to 1e-8, half a decade apart) from which the most precise estimate is
    taken: where rounding and truncation balance depends on the model."""
    if not _is_noisy(floor, loss):
        return tuple(sorted(config.gradient_steps, reverse=True))
    return tuple(10.0 ** (-k / 2) for k in range(4, 17))


def _screen(
    f: Objective,
    grads: dict[str, Any],
    direction: dict[str, np.ndarray],
    loss: float,
    floor: float,
    steps: tuple[float, ...],
    config: Config,
) -> _Finding:
    """The whole model along ``direction``: see :func:`_compare`."""
    return _compare(
        lambda h: (f.value(direction, h), f.value(direction, -h)),
        _analytic(grads, direction),
        loss,
        floor,
        steps,
        config,
    )


def _ladder(
    steps: tuple[float, ...],
    errors: list[tuple[float, float]],
    analytic: float,
    loss: float,
    floor: float,
    config: Config,
) -> Iterator[float]:
    """The given steps, then ever smaller ones while the error still shrinks with the step
    over the last two decades (kinks crossed: a deep ReLU net crosses many along one
    direction, and not monotonically: resnet18's 3e-2 at h = 1e-6 and 1e-7 falls to 4e-9 at
    1e-9) and rounding still leaves room below it; a wrong gradient's error stays flat, so
    it stops within two steps."""
    yield from steps
    h = min(steps)
    while len(errors) >= 2 and h > _SMALLEST_STEP:
        now = errors[-1][1]
        flat = len(errors) >= 3 and now > 0.8 * errors[-3][1]  # < 20% down over two decades
        if now <= config.gradient_warn or flat:
            return
        h /= 10
        if max(_noise(loss, h), 2 * floor / h) > now * max(abs(analytic), 1e-300) / 10:
            return
        yield h


def _tensor_status(error: float, config: Config) -> str:
    if error <= config.gradient_warn:
        return "pass"
    return "warn" if error <= config.gradient_fail else "fail"


def gradient_check(session: Session, config: Config) -> CheckResult:
    """Fail when analytic gradients disagree with centered differences (float64), also at a
    regularization strength > 0 when the subject has a knob."""
    first = session.rows(config.gradient_batch)
    rng = np.random.default_rng(config.seed)
    if session.has_regularization:
        session.set_regularization(0.0)
    with session.objective(first) as f:
        note = f" {f.note}" if f.note else ""
        # Move off exact kinks (zero biases behind dead units sit on ReLU's corner): a
        # +/-jitter of the tensor's rms, far larger than the steps, far smaller than it.
        jitter = {name: _signs(rng, f.shapes[name]) for name in f.names}
        f.move(
            {
                name: config.gradient_jitter
                * (float(np.sqrt(np.vdot(v, v) / max(v.size, 1))) or 1.0)
                * jitter[name]
                for name, v in f.values().items()
            }
        )
        result = _run(session, f, first, config, rng, note, strength=None)
        if result.status == "fail" or not session.has_regularization:
            return result
        strength = _comparable_strength(session, f)
        if strength is None:
            return result
        session.set_regularization(strength)
        regularized = _run(session, f, first, config, rng, note, strength=strength)
        if regularized.status == "fail":
            return CheckResult(
                CHECK,
                "fail",
                f"Gradients are right at regularization 0 but wrong at strength {strength:.3g}: "
                f"{regularized.message}",
                {**regularized.metrics, "failed_strength": strength},
                regularized.evidence,
                "Gradients wrong only when reg > 0: the penalty's gradient does not match its "
                "loss term (e.g. reg * W in the gradient against 0.5 * reg * sum(W**2) in the "
                "loss, a layer left out of either, or reg * sum(W) instead of its square).",
            )
        metrics = {**result.metrics, "checked_strength": strength}
        return CheckResult(
            CHECK,
            result.status if regularized.status == "pass" else regularized.status,
            f"{result.message} Checked again at regularization strength {strength:.3g} (the "
            f"penalty's gradient as large as the data term's): "
            f"{regularized.metrics.get('max_rel_error', 0.0):.2g}.",
            metrics,
            result.evidence,
            result.hint or regularized.hint,
        )


def _comparable_strength(session: Session, f: Objective) -> float | None:
    """A strength at which the penalty's gradient norm equals the data gradient's: the
    penalty is linear in the strength, so one more gradient at strength 1 measures it."""
    _, data = f.value_and_grad()
    session.set_regularization(1.0)
    _, total = f.value_and_grad()
    session.set_regularization(0.0)
    data_norm = math.sqrt(sum(float(np.vdot(g, g)) for g in data.values() if g is not None))
    penalty = math.sqrt(
        sum(
            float(np.vdot(total[n] - g, total[n] - g))
            for n, g in data.items()
            if g is not None and total.get(n) is not None
        )
    )
    if not (math.isfinite(penalty) and penalty > 0 and data_norm > 0):
        return None
    return data_norm / penalty


def _run(
    session: Session,
    f: Objective,
    first: Any,
    config: Config,
    rng: np.random.Generator,
    note: str,
    strength: float | None,
) -> CheckResult:
    loss, grads = f.value_and_grad()
    if not math.isfinite(loss):
        return CheckResult(
            CHECK,
            "fail",
            f"The float64 loss is {loss}: gradients cannot be checked.",
            {"loss": loss},
            {},
            "Fix the non-finite loss first (see initial_loss and numerics).",
        )
    broken = [n for n, g in grads.items() if g is not None and not np.isfinite(g).all()]
    if broken:
        return CheckResult(
            CHECK,
            "fail",
            f"The analytic gradient of {', '.join(broken[:4])} holds NaN/Inf while the loss "
            f"is finite ({loss:.4g}).{note}",
            {"loss": loss, "nonfinite_tensors": len(broken), "worst_tensor": broken[0]},
            {},
            f"The backward pass of {broken[0]} is wrong: check {session.words.custom_backward} "
            "(see numerics for the operation that makes it).",
        )
    direction = _direction(rng, dict(f.shapes), grads)
    floor = _noise_floor(f, direction, loss)
    steps = _steps(config, floor, loss)
    noisy = _is_noisy(floor, loss)
    # With a noise floor the judged error already discounts what the steps cannot resolve.
    tolerance = config.gradient_fail
    # Always a second, independent direction: one direction can be nearly blind to a
    # tensor (its share of the directional derivative happens to be small).
    directions = [direction, _direction(rng, dict(f.shapes), grads)]
    screens = [_screen(f, grads, d, loss, floor, steps, config) for d in directions]
    missing = [n for n in f.names if grads[n] is None]
    at = max(range(len(screens)), key=lambda i: screens[i].error)
    worst_screen, direction = screens[at], directions[at]  # localize where it failed
    suspicious = worst_screen.error > tolerance or bool(missing)
    tensors: list[dict[str, Any]] = []
    coordinates: list[dict[str, Any]] = []
    localized = suspicious
    if suspicious:
        tensors = _per_tensor(f, grads, direction, loss, config, rng, floor)
    else:
        tensors = [
            {"name": n, "shape": list(f.shapes[n]), "status": "pass", "no_grad": False}
            for n in f.names
        ]
    failed = [t for t in tensors if t["status"] == "fail"]
    if failed:
        checked = [t for t in failed if "_grad" in t]
        if checked:
            worst = max(checked, key=lambda t: t["judged_error"])
            coordinates.append(
                _localize(
                    f,
                    worst["name"],
                    worst["_grad"],
                    worst["_dir"],
                    loss,
                    config,
                    rng,
                    worst["step"],
                )
            )
    for t in tensors:
        t.pop("_grad", None)
        t.pop("_dir", None)
    metrics: dict[str, Any] = {
        "tensors": len(tensors),
        "failed": len(failed),
        "directions": len(screens),
        "max_rel_error": (max(t["judged_error"] for t in failed) if failed else worst_screen.error),
        "worst_tensor": max(failed, key=lambda t: t["judged_error"])["name"] if failed else None,
        "screen_errors": [s.error for s in screens],
        "raw_rel_error": worst_screen.raw,
        "steps": list(steps),
        "noise_floor": floor,
        "warn_above": config.gradient_warn,
        "fail_above": tolerance,
        "batch": len(first),
        "loss": loss,
        "localized": localized,
    }
    if strength is not None:
        metrics["strength"] = strength
    evidence = {
        "tensors": tensors,
        "coordinates": coordinates,
        "screens": [
            {"errors": s.errors, "kink": s.kink, "resolution": s.resolution} for s in screens
        ],
        "bands": BANDS,
        "warn": config.gradient_warn,
        "fail": tolerance,
    }
    lower = f.resolution > 1e-12  # some operation of the forward rounds to float32 or less
    metrics["internal_precision"] = f.resolution
    floor_note = (
        f" The loss has a noise floor of {floor:.2g} (parts of the model compute in "
        f"float32): steps h = {', '.join(f'{h:.2g}' for h in steps)}; the differences "
        f"resolve gradients to {max(s.resolution for s in screens):.2g} (relative), which "
        "the verdict discounts."
        if noisy
        else " Parts of the forward compute in float32 or less, yet the loss's noise floor "
        f"is {floor:.2g}: the float64 steps apply."
        if lower
        else ""
    )
    if failed:
        return _failure(session, tensors, failed, coordinates, metrics, evidence, config, note)
    unused = [t["name"] for t in tensors if t.get("no_grad") and t["status"] == "warn"]
    error = worst_screen.error
    if unused:
        return CheckResult(
            CHECK,
            "warn",
            f"{len(unused)} / {len(tensors)} tensors get no gradient and do not affect the "
            f"loss: {', '.join(unused[:5])}.{note}",
            metrics,
            evidence,
            f"{', '.join(unused[:4])} get no gradient and do not affect the loss: unused "
            "parameters.",
        )
    kink = any(s.kink for s in screens)
    raw = worst_screen.raw
    beyond = f", {error:.2g} beyond what the differences resolve" if raw > error else ""
    summary = (
        f"relative error {raw:.2g}{beyond} along {len(screens)} random whole-model "
        f"direction{'s' if len(screens) > 1 else ''} ({band(error)})"
    )
    if localized and error > tolerance and noisy:
        # Float32 noise inside the model: the groups' differences resolve less than the
        # screen's, so their agreement cannot clear it.
        return CheckResult(
            CHECK,
            "warn",
            f"The whole-model screens disagree with centered differences (relative error "
            f"{raw:.2g}{beyond}), but no group of the {len(tensors)} tensors confirms it "
            f"within what the differences resolve.{floor_note}{note}",
            metrics,
            evidence,
            "No tensor's gradient is confirmed wrong, but parts of the model compute in "
            "float32, which limits the check's resolution; a gradient error near 1% may "
            "hide in that noise.",
        )
    if localized and error > tolerance:
        # The screens disagreed, yet every group of tensors agrees when re-measured on its
        # own (in float64, without noise). A directional derivative is the sum of the
        # groups' parts, so a wrong gradient would show in a group: kinks crossed along
        # the whole-model direction explain the screen, and the gradients pass.
        metrics["kinks_explained"] = True
        return CheckResult(
            CHECK,
            "pass",
            f"Gradients of all {len(tensors)} parameter tensors match centered differences "
            "when re-measured group by group over the step ladder. The whole-model screen "
            f"disagreed (relative error {raw:.2g}{beyond}) from kinks (ReLU, max-pool) "
            "crossed along its direction: no group confirms it, and a wrong gradient "
            f"would show in the group of the tensor it feeds.{floor_note}{note}",
            metrics,
            evidence,
        )
    # The notes' bands: below 1e-4 is "usually okay for objectives with kinks", and the
    # ladder saw the error shrink with the step (kinks crossed), so such an error passes.
    kinks_ok = kink and error <= config.gradient_kinks_ok
    if error > config.gradient_warn and not kinks_ok:
        why = (
            "the error shrinks with the step: kinks (ReLU, max-pool) crossed by it"
            if kink
            else "between the warn and fail thresholds"
        )
        return CheckResult(
            CHECK,
            "warn",
            f"Gradients of all {len(tensors)} parameter tensors match only loosely: {summary}; "
            f"{why}.{floor_note}{note}",
            metrics,
            evidence,
            "Errors between 1e-6 and 1e-4 are fine for objectives with kinks (notes); if the "
            "model is smooth, look at its backward.",
        )
    kink_note = (
        f" The error shrank with the step (kinks crossed) and is below "
        f"{config.gradient_kinks_ok:g} (gradient_kinks_ok; the notes' band for objectives "
        "with kinks)."
        if kinks_ok and error > config.gradient_warn
        else " Kinks crossed by larger steps were resolved by smaller ones."
        if kink
        else ""
    )
    return CheckResult(
        CHECK,
        "pass",
        f"Gradients of all {len(tensors)} parameter tensors match centered differences: "
        f"{summary}.{kink_note}{floor_note}{note}",
        metrics,
        evidence,
    )


def _per_tensor(
    f: Objective,
    grads: dict[str, Any],
    direction: dict[str, np.ndarray],
    loss: float,
    config: Config,
    rng: np.random.Generator,
    floor: float,
) -> list[dict[str, Any]]:
    """Find the tensors behind a failed screen by bisection: a group of tensors is checked
    along its part of the direction, and only a group that disagrees is split, so k wrong
    tensors of T cost about k log T differences rather than T. A tensor fails only when an
    independent re-measurement (a fresh direction) fails too. Tensors without a gradient
    are checked one by one up to a budget, the rest named as a group."""
    rows = {n: _row(n, f.shapes[n]) for n in f.names}
    present = [n for n in f.names if grads[n] is not None]
    missing = [n for n in f.names if grads[n] is None]
    for name in missing[:_MISSING_CHECKED]:
        rows[name] = _single(f, name, grads, direction[name], loss, config, rng, floor)
    rest = missing[_MISSING_CHECKED:]
    if rest:
        group = _group(f, grads, direction, rest, loss, config, floor)
        cut = group.error > config.gradient_fail  # else none of them affects the loss: unused
        for name in rest:
            rows[name] |= {
                "status": "fail" if cut else "warn",
                "no_grad": True,
                "judged_error": group.error if cut else 0.0,
            }
    todo = [present] if present else []
    while todo:
        names = todo.pop()
        if len(names) == 1:
            rows[names[0]] = _single(
                f, names[0], grads, direction[names[0]], loss, config, rng, floor
            )
            continue
        found = _group(f, grads, direction, names, loss, config, floor)
        if found.error > config.gradient_fail:
            half = len(names) // 2
            todo += [names[:half], names[half:]]
    return list(rows.values())


# Tensors without a gradient checked one by one before the rest are named as a group.
_MISSING_CHECKED = 8


def _row(name: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """A tensor that a passing group cleared (no difference of its own)."""
    return {
        "name": name,
        "shape": list(shape),
        "status": "pass",
        "no_grad": False,
        "judged_error": 0.0,
    }


def _group(
    f: Objective,
    grads: dict[str, Any],
    direction: dict[str, np.ndarray],
    names: list[str],
    loss: float,
    config: Config,
    floor: float,
) -> _Finding:
    part = {n: direction[n] for n in names}
    analytic = _analytic({n: grads[n] for n in names}, part)
    steps = _steps(config, floor, loss)
    found = _compare(
        lambda h: (f.value(part, h), f.value(part, -h)), analytic, loss, floor, steps, config
    )
    return found


def _single(
    f: Objective,
    name: str,
    grads: dict[str, Any],
    part: np.ndarray,
    loss: float,
    config: Config,
    rng: np.random.Generator,
    floor: float,
) -> dict[str, Any]:
    grad = grads[name]
    missing = grad is None
    g = np.zeros(f.shapes[name]) if missing else grad
    found = _checked(f, name, g, part, loss, config, floor)
    if found.error > config.gradient_fail:
        fresh = rng.standard_normal(f.shapes[name]).astype(np.float64)
        again = _checked(f, name, g, fresh, loss, config, floor)
        if again.error <= config.gradient_fail:
            found = again
        else:
            part = fresh if again.error > found.error else part
    status = _tensor_status(found.error, config)
    if missing and found.error == 0.0:
        status = "warn"  # the loss does not depend on it: an unused parameter
    return {
        "name": name,
        "shape": list(f.shapes[name]),
        "rel_error": found.raw,
        "judged_error": found.error,
        "analytic": found.analytic,
        "numeric": found.numeric,
        "step": found.step,
        "kink": found.kink,
        "band": band(found.raw),
        "status": status,
        "tolerance": config.gradient_fail,
        "no_grad": missing,
        # An all-zero gradient where the loss does move: cut as surely as a missing one
        # (a .detach() in a loss that also adds a penalty of the same weights).
        "zero_grad": not missing and not np.any(g) and found.numeric != 0.0,
        "_grad": g,
        "_dir": part,
    }


def _failure(
    session: Session,
    tensors: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    coordinates: list[dict[str, Any]],
    metrics: dict[str, Any],
    evidence: dict[str, Any],
    config: Config,
    note: str,
) -> CheckResult:
    worst = max(failed, key=lambda t: t["judged_error"])
    where = ""
    if coordinates and coordinates[0]["tensor"] == worst["name"]:
        c = coordinates[0]
        where = (
            f"; worst coordinate {tuple(c['index'])}: analytic {c['analytic']:.4g}, "
            f"numeric {c['numeric']:.4g}"
        )
    names = ", ".join(f"{t['name']} ({t['judged_error']:.2g})" for t in failed[:5])
    steps = f"{worst['step']:.2g}" if "step" in worst else "the screens' steps"
    confirmed = (
        ", confirmed along an independent direction" if "analytic" in worst else " (as a group)"
    )
    message = (
        f"{len(failed)} / {len(tensors)} parameter tensors disagree with centered "
        f"differences: {names}. Greatest relative error {worst['judged_error']:.2g} in "
        f"{worst['name']} ({band(worst['judged_error'])}){where}; allowed "
        f"{metrics['fail_above']:.2g} after ruling out kinks (h = {steps}){confirmed}."
    )
    cut = [t["name"] for t in failed if t["no_grad"] or t.get("zero_grad")]
    if cut:
        hint = (
            f"No gradient reaches {', '.join(cut[:4])} although the loss depends on "
            f"it: {session.words.cut_graph} cuts the graph, or a hand-written "
            "backward leaves it out of grads."
        )
    else:
        hint = (
            f"The backward pass feeding {worst['name']} is wrong: check "
            f"{session.words.custom_backward} of that layer; the forward values are "
            "not at fault."
        )
    return CheckResult(CHECK, "fail", message + note, metrics, evidence, hint)
