"""``gradient_check``: analytic against numeric gradients, per parameter tensor, in float64.

Cost does not grow with the parameter count: each tensor is checked along one random
+/-1 direction (one centered difference: 2 forward passes), after a single backward pass.
A disagreement is confirmed at other step sizes before it counts: a ReLU kink crossed by
the step shrinks with h, a wrong gradient does not (REFERENCE: one-sided differences at a
kink agree for h <= 1e-6). A failing tensor is then bisected down to one coordinate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from nndiag.backends import Objective, Session
from nndiag.config import Config
from nndiag.results import CheckResult

CHECK = "gradient_check"
BANDS = {"good": 1e-7, "kinks_ok": 1e-4, "wrong": 1e-2}  # CS231n notes


def relative_error(analytic: float, numeric: float, zero: float) -> float:
    """|a - n| / max(|a|, |n|); 0 when both are below ``zero``."""
    scale = max(abs(analytic), abs(numeric))
    return 0.0 if scale < zero else abs(analytic - numeric) / scale


def band(error: float) -> str:
    """The CS231n notes' name for a relative error."""
    if error < BANDS["good"]:
        return "good"
    if error < BANDS["kinks_ok"]:
        return "fine with kinks"
    if error < BANDS["wrong"]:
        return "uncomfortable"
    return "wrong"


def _difference(f: Objective, name: str, direction: np.ndarray, h: float) -> float:
    return (f.value({name: h * direction}) - f.value({name: -h * direction})) / (2 * h)


def _checked(f: Objective, name: str, grad: np.ndarray, direction: np.ndarray,
             config: Config) -> tuple[float, float, float, float]:
    """(relative error, analytic, numeric, step) along ``direction``: the smallest error
    over the configured steps, stopping early once it passes."""
    analytic = float(np.vdot(grad, direction))
    best = (math.inf, analytic, math.nan, math.nan)
    for h in config.gradient_steps:
        numeric = _difference(f, name, direction, h)
        error = relative_error(analytic, numeric, config.gradient_zero)
        if not math.isfinite(numeric):
            error = math.inf
        if error < best[0]:
            best = (error, analytic, numeric, h)
        if error <= config.gradient_warn:
            break
    return best


def _localize(f: Objective, name: str, grad: np.ndarray, direction: np.ndarray,
              config: Config, rng: np.random.Generator) -> dict[str, Any]:
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
    return {"tensor": name, "index": list(np.unravel_index(index, grad.shape)),
            "analytic": analytic, "numeric": numeric,
            "rel_error": relative_error(analytic, numeric, config.gradient_zero)}


def _largest(f: Objective, name: str, grad: np.ndarray, config: Config) -> dict[str, Any]:
    """The coordinate with the largest analytic gradient, checked on its own."""
    index = int(np.argmax(np.abs(grad)))
    unit = np.zeros_like(grad)
    unit.flat[index] = 1.0
    error, analytic, numeric, _ = _checked(f, name, grad, unit, config)
    return {"tensor": name, "index": list(np.unravel_index(index, grad.shape)),
            "analytic": analytic, "numeric": numeric, "rel_error": error}


def gradient_check(session: Session, config: Config) -> CheckResult:
    first = session.rows(config.gradient_batch)
    rng = np.random.default_rng(config.seed)
    tensors: list[dict[str, Any]] = []
    coordinates: list[dict[str, Any]] = []
    with session.objective(first) as f:
        loss, grads = f.value_and_grad()
        if not math.isfinite(loss):
            return CheckResult(CHECK, "fail", f"The float64 loss is {loss}: gradients cannot "
                               "be checked.", {"loss": loss}, {},
                               "Fix the non-finite loss first (see initial_loss).")
        directions: Mapping[str, np.ndarray] = {
            name: rng.integers(0, 2, size=f.shapes[name]).astype(np.float64) * 2 - 1
            for name in f.names}
        for name in f.names:
            grad = grads[name]
            missing = grad is None
            g = np.zeros(f.shapes[name]) if missing else grad
            error, analytic, numeric, h = _checked(f, name, g, directions[name], config)
            status = ("pass" if error <= config.gradient_warn
                      else "warn" if error <= config.gradient_fail else "fail")
            unused = missing and error == 0.0
            tensors.append({"name": name, "shape": list(f.shapes[name]), "rel_error": error,
                            "analytic": analytic, "numeric": numeric, "step": h,
                            "band": band(error), "status": "warn" if unused else status,
                            "no_grad": missing, "_grad": g})
        ranked = sorted(tensors, key=lambda t: -t["rel_error"])
        worst = ranked[0]
        if worst["status"] == "fail":
            coordinates.append(_localize(f, worst["name"], worst["_grad"],
                                         directions[worst["name"]], config, rng))
        for t in ranked[len(coordinates):config.gradient_coordinates]:
            if not t["no_grad"]:
                coordinates.append(_largest(f, t["name"], t["_grad"], config))
    for t in tensors:
        del t["_grad"]

    failed = [t for t in tensors if t["status"] == "fail"]
    warned = [t for t in tensors if t["status"] == "warn"]
    cut = [t["name"] for t in failed if t["no_grad"]]
    unused = [t["name"] for t in warned if t["no_grad"]]
    metrics = {"tensors": len(tensors), "failed": len(failed), "warned": len(warned),
               "max_rel_error": worst["rel_error"], "worst_tensor": worst["name"],
               "warn_above": config.gradient_warn, "fail_above": config.gradient_fail,
               "batch": len(first), "loss": loss}
    evidence = {"tensors": tensors, "coordinates": coordinates, "bands": BANDS,
                "warn": config.gradient_warn, "fail": config.gradient_fail}
    steps = ", ".join(f"{h:g}" for h in config.gradient_steps)
    if failed:
        where = ""
        if coordinates and coordinates[0]["tensor"] == worst["name"]:
            c = coordinates[0]
            where = (f"; worst coordinate {tuple(c['index'])}: analytic {c['analytic']:.4g}, "
                     f"numeric {c['numeric']:.4g}")
        names = ", ".join(f"{t['name']} ({t['rel_error']:.2g})" for t in failed[:5])
        message = (f"{len(failed)} / {len(tensors)} parameter tensors disagree with centered "
                   f"differences: {names}. Greatest relative error {worst['rel_error']:.2g} in "
                   f"{worst['name']} ({worst['band']}){where}; allowed {config.gradient_fail:g} "
                   f"after ruling out kinks (h = {steps}).")
        if cut:
            hint = (f"No gradient reaches {', '.join(cut[:4])} although the loss depends on "
                    "it: a .detach(), .data, .item() or numpy round trip cuts the graph.")
        else:
            hint = (f"The backward pass feeding {worst['name']} is wrong: check custom "
                    "autograd Functions and hand-written backward code of that layer; "
                    "the forward values are not at fault.")
        return CheckResult(CHECK, "fail", message, metrics, evidence, hint)
    if warned:
        names = ", ".join(f"{t['name']} ({t['rel_error']:.2g})" for t in warned[:5])
        hint = ("Errors between 1e-6 and 1e-4 are fine for objectives with kinks (notes); "
                "if the model is smooth, look at these tensors' backward.")
        if unused:
            hint = (f"{', '.join(unused[:4])} get no gradient and do not affect the loss: "
                    "unused parameters.")
        return CheckResult(CHECK, "warn", f"{len(warned)} / {len(tensors)} tensors match only "
                           f"loosely: {names}.", metrics, evidence, hint)
    return CheckResult(CHECK, "pass", f"All {len(tensors)} parameter tensors match centered "
                       f"differences: greatest relative error {worst['rel_error']:.2g} in "
                       f"{worst['name']} ({worst['band']}).", metrics, evidence)
