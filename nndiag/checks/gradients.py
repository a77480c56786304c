"""``gradient_check``: analytic against numeric gradients, per parameter tensor, in float64.

Cost does not grow with the parameter count: each tensor is checked along one random
+/-1 direction (one centered difference: 2 forward passes), after a single backward pass.
A disagreement is confirmed at other step sizes before it counts: a ReLU kink crossed by
the step shrinks with h, a wrong gradient does not (docs/calibration.md: one-sided differences at a
kink agree for h <= 1e-6). A failing tensor is then bisected down to one coordinate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nndiag.config import Config
from nndiag.contract import Objective, Session
from nndiag.results import CheckResult

CHECK = "gradient_check"
BANDS = {"good": 1e-7, "kinks_ok": 1e-4, "wrong": 1e-2}  # CS231n notes


def relative_error(analytic: float, numeric: float, zero: float, noise: float = 0.0) -> float:
    """|a - n| / max(|a|, |n|), less ``noise`` (the float64 resolution of the numeric
    estimate) in the numerator; 0 when both are below ``zero``."""
    scale = max(abs(analytic), abs(numeric))
    if not math.isfinite(numeric):
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


def _checked(
    f: Objective, name: str, grad: np.ndarray, direction: np.ndarray, loss: float, config: Config
) -> _Finding:
    """Compare along ``direction`` over the configured steps, stopping once it passes.

    A step that crosses a kink (a ReLU unit changing sides) spoils the centered difference
    but not both one-sided ones: the side that stays on the point's own linear piece
    matches the analytic gradient. A wrong gradient matches neither side.
    """
    analytic = float(np.vdot(grad, direction))
    best: _Finding | None = None
    one_sided = math.inf
    for h in config.gradient_steps:
        up, down = _sides(f, name, direction, h)
        numeric = (up - down) / (2 * h)
        noise = _noise(loss, h)
        error = relative_error(analytic, numeric, config.gradient_zero, noise)
        if best is None or error < best.error:
            raw = relative_error(analytic, numeric, config.gradient_zero)
            best = _Finding(error, raw, analytic, numeric, h)
        if error <= config.gradient_warn:
            return best
        one_sided = min(
            one_sided,
            relative_error(analytic, (up - loss) / h, config.gradient_zero, noise),
            relative_error(analytic, (loss - down) / h, config.gradient_zero, noise),
        )
    assert best is not None
    if one_sided < best.error and one_sided <= config.gradient_fail:
        best.error, best.kink = one_sided, True
    return best


def _localize(
    f: Objective,
    name: str,
    grad: np.ndarray,
    direction: np.ndarray,
    loss: float,
    config: Config,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Bisect the direction's support towards the coordinate with the largest mismatch."""
    flat = np.flatnonzero(direction)
    rng.shuffle(flat)
    h = config.gradient_steps[0]
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


def _largest(f: Objective, name: str, grad: np.ndarray, config: Config) -> dict[str, Any]:
    """The coordinate with the largest analytic gradient, as evidence (one difference)."""
    index = int(np.argmax(np.abs(grad)))
    unit = np.zeros_like(grad)
    unit.flat[index] = 1.0
    numeric = _difference(f, name, unit, config.gradient_steps[0])
    analytic = float(grad.flat[index])
    return {
        "tensor": name,
        "index": [int(i) for i in np.unravel_index(index, grad.shape)],
        "analytic": analytic,
        "numeric": numeric,
        "rel_error": relative_error(analytic, numeric, config.gradient_zero),
    }


def _signs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random +/-1 entries: as good as normals for a direction, and 5x cheaper to draw."""
    return (rng.random(shape, dtype=np.float32) < 0.5).astype(np.float64) * 2 - 1


def gradient_check(session: Session, config: Config) -> CheckResult:
    first = session.rows(config.gradient_batch)
    rng = np.random.default_rng(config.seed)
    tensors: list[dict[str, Any]] = []
    coordinates: list[dict[str, Any]] = []
    with session.objective(first) as f:
        note = f" {f.note}" if f.note else ""
        # Move off exact kinks (zero biases behind dead units sit on ReLU's corner): a
        # +/-jitter of the tensor's rms, far larger than the steps, far smaller than it.
        directions = {name: _signs(rng, f.shapes[name]) for name in f.names}
        f.move(
            {
                name: config.gradient_jitter
                * (float(np.sqrt(np.vdot(v, v) / v.size)) or 1.0)
                * directions[name]
                for name, v in f.values().items()
            }
        )
        loss, grads = f.value_and_grad()
        if not math.isfinite(loss):
            return CheckResult(
                CHECK,
                "fail",
                f"The float64 loss is {loss}: gradients cannot be checked.",
                {"loss": loss},
                {},
                "Fix the non-finite loss first (see initial_loss).",
            )
        for name in f.names:
            grad = grads[name]
            missing = grad is None
            g = np.zeros(f.shapes[name]) if missing else grad
            found = _checked(f, name, g, directions[name], loss, config)
            status = (
                "pass"
                if found.error <= config.gradient_warn
                else "warn"
                if found.error <= config.gradient_fail
                else "fail"
            )
            if missing and found.error == 0.0:
                status = "warn"  # the loss does not depend on it: an unused parameter
            tensors.append(
                {
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
                    "no_grad": missing,
                    "_grad": g,
                }
            )
        ranked = sorted(tensors, key=lambda t: -t["judged_error"])
        worst = ranked[0]
        if worst["status"] == "fail":
            coordinates.append(
                _localize(
                    f, worst["name"], worst["_grad"], directions[worst["name"]], loss, config, rng
                )
            )
        for t in ranked[len(coordinates) : config.gradient_coordinates]:
            if not t["no_grad"]:
                coordinates.append(_largest(f, t["name"], t["_grad"], config))
    for t in tensors:
        del t["_grad"]

    failed = [t for t in tensors if t["status"] == "fail"]
    warned = [t for t in tensors if t["status"] == "warn"]
    cut = [t["name"] for t in failed if t["no_grad"]]
    unused = [t["name"] for t in warned if t["no_grad"]]
    kinks = [t["name"] for t in tensors if t["kink"]]
    metrics = {
        "tensors": len(tensors),
        "failed": len(failed),
        "warned": len(warned),
        "max_rel_error": worst["judged_error"],
        "worst_tensor": worst["name"],
        "warn_above": config.gradient_warn,
        "fail_above": config.gradient_fail,
        "batch": len(first),
        "loss": loss,
    }
    evidence = {
        "tensors": tensors,
        "coordinates": coordinates,
        "bands": BANDS,
        "warn": config.gradient_warn,
        "fail": config.gradient_fail,
    }
    steps = ", ".join(f"{h:g}" for h in config.gradient_steps)
    if failed:
        where = ""
        if coordinates and coordinates[0]["tensor"] == worst["name"]:
            c = coordinates[0]
            where = (
                f"; worst coordinate {tuple(c['index'])}: analytic {c['analytic']:.4g}, "
                f"numeric {c['numeric']:.4g}"
            )
        names = ", ".join(f"{t['name']} ({t['judged_error']:.2g})" for t in failed[:5])
        message = (
            f"{len(failed)} / {len(tensors)} parameter tensors disagree with centered "
            f"differences: {names}. Greatest relative error {worst['judged_error']:.2g} in "
            f"{worst['name']} ({worst['band']}){where}; allowed {config.gradient_fail:g} "
            f"after ruling out kinks (h = {steps})."
        )
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
    if warned:
        names = ", ".join(f"{t['name']} ({t['judged_error']:.2g})" for t in warned[:5])
        hint = (
            "Errors between 1e-6 and 1e-4 are fine for objectives with kinks (notes); "
            "if the model is smooth, look at these tensors' backward."
        )
        if unused:
            hint = (
                f"{', '.join(unused[:4])} get no gradient and do not affect the loss: "
                "unused parameters."
            )
        elif kinks:
            hint = (
                f"The steps along {', '.join(kinks[:4])} cross a kink; judged by the "
                "one-sided difference that stays on the point's side of it."
            )
        return CheckResult(
            CHECK,
            "warn",
            f"{len(warned)} / {len(tensors)} tensors match only loosely: {names}.{note}",
            metrics,
            evidence,
            hint,
        )
    kink_note = (
        f" Steps along {', '.join(kinks[:3])} crossed a ReLU kink; judged by the "
        "one-sided difference on the point's side."
        if kinks
        else ""
    )
    # Quote the notes' relative error where the derivative stands well above rounding; a
    # tiny derivative's relative error is rounding, and its verdict discounts that.
    clear = [
        t
        for t in tensors
        if not t["kink"]
        and not t["no_grad"]
        and max(abs(t["analytic"]), abs(t["numeric"])) > 1e3 * _noise(loss, t["step"])
    ]
    quoted = max(clear, key=lambda t: t["rel_error"], default=None)
    agreement = (
        f"greatest relative error {quoted['rel_error']:.2g} in {quoted['name']} "
        f"({band(quoted['rel_error'])})"
        if quoted is not None
        else "every difference is within float64 rounding"
    )
    return CheckResult(
        CHECK,
        "pass",
        f"All {len(tensors)} parameter tensors match centered "
        f"differences: {agreement}.{kink_note}{note}",
        metrics,
        evidence,
    )
