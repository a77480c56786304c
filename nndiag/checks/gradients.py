"""``gradient_check``: analytic against numeric gradients, in float64, on a smooth segment.

Few rows: the check differentiates ``gradient_batch`` rows (4 by default) of the first
batch, whatever the subject's batch size or loader: "loss functions that contain kinks will
have fewer kinks with fewer datapoints" (CS231n notes), and the verdict and cost then do
not depend on how the data is fed.

Kinks are recorded, not guessed: every centered difference runs the forward at x+h and
x-h with the winners of its non-smooth operations recorded (a ReLU's side, a max-pool's
argmax, a clamp's piece, a comparison's outcome; ``Objective.sides``). A difference is
evidence only where no winner changed; where some did, the step shrinks until none does.
A disagreement on a smooth segment is then confirmed at a step ten times smaller (a real
error stays, truncation falls a hundredfold), never excused.

Per-tensor sensitivity at flat cost: after one backward pass, the whole model is screened
along two random directions whose part in each tensor holds that tensor's own gradient
direction and a random part orthogonal to it, scaled so that every tensor adds the same
amount to the directional derivative: a 1% error in any one tensor moves the screen by 1%
of one tensor's share, far above float64's resolution. Only a screen that disagrees is
localized, by bisecting the tensors in groups along the same direction (the parts add up),
and a tensor fails only when an independent re-measurement (a fresh direction) fails too.

A torch forward's casts to float32 run in float64 during the check; a model that still
computes parts below float64 gives the loss a noise floor: it is measured, and steps and
tolerance follow from it (and the result says so). With a regularization knob, the check
runs again at a strength whose penalty is as large as the data loss.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nndiag.checks.differences import (
    BANDS,
    Finding,
    Probe,
    analytic_derivative,
    band,
    direction,
    fresh_part,
    noise_floor,
    relative_error,
)
from nndiag.config import Config
from nndiag.contract import Objective, Session
from nndiag.results import CheckResult

CHECK = "gradient_check"
# Tensors without a gradient checked one by one before the rest are named as a group.
_MISSING_CHECKED = 8
# Tensors checked one by one when a screen disagrees: a model wrong everywhere (a broken
# shared backward) would otherwise cost two measurements per tensor; past this the groups
# that still disagree are named as such. A count of work, the same on every machine.
_SINGLES_CHECKED = 12


def gradient_check(session: Session, config: Config) -> CheckResult:
    """Fail when analytic gradients disagree with centered differences (float64) on a
    smooth segment, also at a regularization strength > 0 when the subject has a knob."""
    first = session.rows(config.gradient_batch)
    rng = np.random.default_rng(config.seed)
    if session.has_regularization:
        session.set_regularization(0.0)
    with session.objective(first) as f:
        note = f" {f.note}" if f.note else ""
        # Move off exact kinks (zero biases behind dead units sit on ReLU's corner): a
        # +/-jitter of the tensor's rms, far larger than the steps, far smaller than it.
        f.move(
            {
                name: config.gradient_jitter
                * (float(np.sqrt(np.vdot(v, v) / max(v.size, 1))) or 1.0)
                * _signs(rng, f.shapes[name])
                for name, v in f.values().items()
            }
        )
        result = _run(session, f, first, config, rng, note)
        if result.status == "fail" or not session.has_regularization:
            return result
        penalty = _penalty(session, f)
        if penalty is None:
            return result
        strength, moved = penalty
        session.set_regularization(strength)
        regularized = _run(session, f, first, config, rng, note)
        return _with_penalty(result, regularized, strength, moved)


def _signs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random +/-1 entries (the jitter off exact kinks)."""
    return (rng.random(shape, dtype=np.float32) < 0.5).astype(np.float64) * 2 - 1


def _penalty(session: Session, f: Objective) -> tuple[float, bool] | None:
    """A strength whose penalty is as large as the data loss, sized from the *loss*
    (a penalty is linear in its strength: one more loss at strength 1 measures it), and
    whether the analytic gradient moves with the strength at all. None where the loss
    does not rise with it (regularization_loss judges that)."""
    loss, data = f.value_and_grad()
    session.set_regularization(1.0)
    raised, total = f.value_and_grad()
    session.set_regularization(0.0)
    rise = raised - loss
    if not (math.isfinite(rise) and rise > 0):
        return None
    moved = any(
        total.get(n) is not None and bool(np.any(total[n] != g))
        for n, g in data.items()
        if g is not None
    )
    return max(abs(loss), 1e-3) / rise, moved


def _with_penalty(
    result: CheckResult, regularized: CheckResult, strength: float, moved: bool
) -> CheckResult:
    if regularized.status == "fail":
        cause = (
            "the analytic gradient does not change with the strength while the loss rises: "
            "the gradient ignores the penalty term. "
            if not moved
            else ""
        )
        return CheckResult(
            CHECK,
            "fail",
            f"Gradients are right at regularization 0 but wrong at strength {strength:.3g} "
            f"(the penalty as large as the data loss): {cause}{regularized.message}",
            {**regularized.metrics, "failed_strength": strength, "penalty_ignored": not moved},
            regularized.evidence,
            "Add the penalty's gradient to the gradients (reg * W for 0.5 * reg * sum(W**2) "
            "in the loss)."
            if not moved
            else "Gradients wrong only when reg > 0: the penalty's gradient does not match "
            "its loss term (e.g. reg * W in the gradient against 0.5 * reg * sum(W**2) in "
            "the loss, a layer left out of either, or reg * sum(W) instead of its square).",
        )
    return CheckResult(
        CHECK,
        result.status if regularized.status == "pass" else regularized.status,
        f"{result.message} Checked again at regularization strength {strength:.3g} (the "
        f"penalty as large as the data loss): {regularized.metrics.get('max_rel_error', 0.0):.2g}.",
        {**result.metrics, "checked_strength": strength},
        result.evidence,
        result.hint or regularized.hint,
    )


def _run(
    session: Session,
    f: Objective,
    first: Any,
    config: Config,
    rng: np.random.Generator,
    note: str,
) -> CheckResult:
    loss, grads = f.value_and_grad()
    broken = _nonfinite(session, loss, grads, note)
    if broken is not None:
        return broken
    shapes = dict(f.shapes)
    directions = [direction(rng, shapes, grads) for _ in range(2)]
    probe = Probe(f, loss, noise_floor(f, directions[0][0], loss), config, len(first))
    # Two independent directions: the random parts of one can be nearly blind to an
    # error that is not a rescaled gradient.
    screens = [
        probe.measure(d, analytic_derivative(grads, d), against=share) for d, share in directions
    ]
    missing = [n for n in f.names if grads[n] is None]
    at = max(range(len(screens)), key=lambda i: (screens[i].smooth is False, screens[i].error))
    worst = screens[at]
    suspicious = worst.error > config.gradient_fail or worst.smooth is False or bool(missing)
    if suspicious:
        tensors = _per_tensor(probe, grads, *directions[at], rng)
    else:
        tensors = [_row(n, f.shapes[n]) for n in f.names]
    metrics, evidence = _evidence(probe, screens, tensors, first, suspicious)
    coordinates: list[dict[str, Any]] = evidence["coordinates"]
    failed = [t for t in tensors if t["status"] == "fail"]
    checked = [t for t in failed if "_grad" in t]
    if checked:
        t = max(checked, key=lambda t: t["judged_error"])
        coordinates.append(_localize(probe, t["name"], t["_grad"], t["_dir"], rng, t["step"]))
    for t in tensors:
        t.pop("_grad", None)
        t.pop("_dir", None)
    if failed:
        return _failure(session, tensors, failed, coordinates, metrics, evidence, note)
    return _verdict(probe, screens, tensors, metrics, evidence, note)


def _nonfinite(
    session: Session, loss: float, grads: dict[str, Any], note: str
) -> CheckResult | None:
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
    if not broken:
        return None
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


def _evidence(
    probe: Probe,
    screens: list[Finding],
    tensors: list[dict[str, Any]],
    first: Any,
    localized: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    config = probe.config
    failed = [t for t in tensors if t["status"] == "fail"]
    worst = max(screens, key=lambda s: s.error)
    metrics: dict[str, Any] = {
        "tensors": len(tensors),
        "failed": len(failed),
        "directions": len(screens),
        "max_rel_error": max(t["judged_error"] for t in failed) if failed else worst.error,
        "worst_tensor": max(failed, key=lambda t: t["judged_error"])["name"] if failed else None,
        "screen_errors": [s.error for s in screens],
        "raw_rel_error": worst.raw,
        "steps": sorted({h for s in screens for h, _ in s.errors}, reverse=True),
        "crossings": [[c for _, c in s.crossings] for s in screens],
        "noise_floor": probe.floor,
        "warn_above": config.gradient_warn,
        "fail_above": config.gradient_fail,
        "batch": len(first),
        "rows": len(first),
        "loss": probe.loss,
        "localized": localized,
        "internal_precision": probe.f.resolution,
    }
    evidence = {
        "tensors": tensors,
        "coordinates": [],
        "screens": [
            {
                "errors": s.errors,
                "error": s.error,
                "crossings": s.crossings,
                "smooth": s.smooth,
                "resolution": s.resolution,
            }
            for s in screens
        ],
        "bands": BANDS,
        "warn": config.gradient_warn,
        "fail": config.gradient_fail,
    }
    return metrics, evidence


def _verdict(
    probe: Probe,
    screens: list[Finding],
    tensors: list[dict[str, Any]],
    metrics: dict[str, Any],
    evidence: dict[str, Any],
    note: str,
) -> CheckResult:
    """The result of a run in which no tensor failed."""
    config = probe.config
    count = len(tensors)
    unused = [t["name"] for t in tensors if t.get("no_grad") and t["status"] == "warn"]
    if unused:
        return CheckResult(
            CHECK,
            "warn",
            f"{len(unused)} / {count} tensors get no gradient and do not affect the "
            f"loss: {', '.join(unused[:5])}.{note}",
            metrics,
            evidence,
            f"{', '.join(unused[:4])} get no gradient and do not affect the loss: unused "
            "parameters.",
        )
    where = _segment_note(probe, screens)
    unlocalized = [t["name"] for t in tensors if t.get("unlocalized")]
    if unlocalized:
        return CheckResult(
            CHECK,
            "warn",
            f"Groups of {len(unlocalized)} / {count} parameter tensors disagree with "
            f"centered differences ({', '.join(unlocalized[:4])}, ...), but none of the "
            f"{_SINGLES_CHECKED} checked one by one is confirmed wrong.{where}{note}",
            metrics,
            evidence,
            "Rerun with another seed; if it stays, check the backward passes of the "
            "model's custom operations.",
        )
    unresolved = [t for t in tensors if t.get("unresolved")]
    if unresolved:
        names = ", ".join(t["name"] for t in unresolved[:4])
        return CheckResult(
            CHECK,
            "warn",
            f"{len(unresolved)} / {count} parameter tensors could not be checked: winners "
            f"of non-smooth operations changed at every step down to the rounding limit "
            f"({names}); the others match centered differences.{where}{note}",
            metrics,
            evidence,
            "Their gradients are neither confirmed nor refuted: check them with fewer rows "
            "(gradient_batch) or another seed.",
        )
    worst = max(screens, key=lambda s: s.error)
    raw, error = worst.raw, worst.error
    summary = (
        f"relative error {raw:.2g} along {len(screens)} random whole-model directions "
        f"({band(raw)}), {error:.2g} of one tensor's share"
    )
    cleared = f"every group of the {count} tensors re-measured on its own agrees"
    if probe.noisy and metrics["localized"] and error > config.gradient_fail:
        return CheckResult(
            CHECK,
            "warn",
            f"The whole-model screens disagree with centered differences ({summary}), "
            f"but no group of the {count} tensors confirms it within what the differences "
            f"resolve.{where}{note}",
            metrics,
            evidence,
            "No tensor's gradient is confirmed wrong, but parts of the model compute in "
            "float32, which limits the check's resolution; a gradient error near 1% may "
            "hide in that noise.",
        )
    if worst.smooth is False and metrics["localized"]:
        return CheckResult(
            CHECK,
            "pass",
            f"Gradients of all {count} parameter tensors match centered differences: the "
            f"whole-model direction crossed kinks at every step, and {cleared} on a smooth "
            f"segment.{where}{note}",
            metrics,
            evidence,
        )
    if error > config.gradient_fail:
        return CheckResult(
            CHECK,
            "warn",
            f"The whole-model screen disagrees with centered differences ({summary}) where "
            f"no winner changed, yet {cleared}: the disagreement is unexplained.{where}{note}",
            metrics,
            evidence,
            "Rerun with another seed; if it stays, check the backward passes of the "
            "model's custom operations.",
        )
    # Below a 1e-4 share no tensor is suspect; the notes' band on the whole directional
    # derivative says how close it is (a deep float64 net's rounding reaches 1e-6 of a
    # share, 1e-8 of the whole).
    if (error if probe.noisy else raw) > config.gradient_warn:
        return CheckResult(
            CHECK,
            "warn",
            f"Gradients of all {count} parameter tensors match only loosely: {summary}, "
            f"between the warn and fail thresholds.{where}{note}",
            metrics,
            evidence,
            "A smooth segment's error above 1e-6 is unusual in float64: look at the "
            "model's custom backward passes.",
        )
    return CheckResult(
        CHECK,
        "pass",
        f"Gradients of all {count} parameter tensors match centered differences: "
        f"{summary}.{where}{note}",
        metrics,
        evidence,
    )


def _segment_note(probe: Probe, screens: list[Finding]) -> str:
    """What the differences stand on: rows, smooth segment or noise floor."""
    rows = probe.rows
    if probe.noisy:
        resolution = max(s.resolution for s in screens)
        return (
            f" On {rows} rows; the loss has a noise floor of {probe.floor:.2g} (parts of "
            f"the model compute in float32): the differences resolve gradients to "
            f"{resolution:.2g} (relative), which the verdict discounts."
        )
    if any(s.smooth is None for s in screens):
        return (
            f" On {rows} rows; this model exposes no winners of its non-smooth operations, "
            "so a disagreement counts only where a ten times smaller step shows it again."
        )
    crossed = sum(c or 0 for s in screens for _, c in s.crossings)
    steps = ", ".join(f"{s.step:.0e}" for s in screens if s.smooth)
    sided = any(s.one_sided for s in screens)
    if not steps:
        return f" On {rows} rows; {crossed} winners changed along the whole-model directions."
    return (
        f" On {rows} rows, where no winner of a non-smooth operation changed (h = {steps}"
        + (f"; {crossed} changed at larger steps, which were not used" if crossed else "")
        + ("; a unit sitting on its kink measured from the side it stays on" if sided else "")
        + ")."
    )


def _per_tensor(
    probe: Probe,
    grads: dict[str, Any],
    direction: dict[str, np.ndarray],
    share: float,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Find the tensors behind a disagreeing screen by bisection: a group of tensors is
    checked along its part of the direction (the parts' derivatives add up to the
    screen's), and only a group that disagrees, or crossed kinks at every step, is split:
    k wrong tensors of T cost about k log T differences rather than T. Tensors without a
    gradient are checked one by one up to a budget, the rest named as a group."""
    f, config = probe.f, probe.config
    rows = {n: _row(n, f.shapes[n]) for n in f.names}
    present = [n for n in f.names if grads[n] is not None]
    missing = [n for n in f.names if grads[n] is None]
    for name in missing[:_MISSING_CHECKED]:
        rows[name] = _single(probe, name, grads, direction[name], rng)
    rest = missing[_MISSING_CHECKED:]
    if rest:
        group = _group(probe, grads, direction, rest, share)
        cut = group.error > config.gradient_fail  # else none of them affects the loss: unused
        for name in rest:
            rows[name] |= {
                "status": "fail" if cut else "warn",
                "no_grad": True,
                "judged_error": group.error if cut else 0.0,
            }
    todo = [present] if present else []
    singles = 0
    while todo:
        names = todo.pop()
        if len(names) == 1 and singles < _SINGLES_CHECKED:
            rows[names[0]] = _single(probe, names[0], grads, direction[names[0]], rng)
            singles += 1
            continue
        found = _group(probe, grads, direction, names, share)
        if not (found.error > config.gradient_fail or found.smooth is False):
            continue
        if singles >= _SINGLES_CHECKED:  # the work budget: named as a group, not split
            for name in names:
                rows[name] |= {"status": "warn", "unlocalized": True}
            continue
        half = len(names) // 2
        todo += [names[:half], names[half:]]
    return list(rows.values())


def _row(name: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """A tensor that a passing screen or group cleared (no difference of its own)."""
    return {
        "name": name,
        "shape": list(shape),
        "status": "pass",
        "no_grad": False,
        "judged_error": 0.0,
    }


def _group(
    probe: Probe,
    grads: dict[str, Any],
    direction: dict[str, np.ndarray],
    names: list[str],
    share: float,
) -> Finding:
    part = {n: direction[n] for n in names}
    analytic = analytic_derivative({n: grads[n] for n in names}, part)
    return probe.measure(part, analytic, against=share)


def _single(
    probe: Probe,
    name: str,
    grads: dict[str, Any],
    part: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """One tensor along its own part: it fails only when an independent re-measurement
    (a fresh direction) disagrees too; a disagreement seen once warns."""
    config, shape = probe.config, probe.f.shapes[name]
    grad = grads[name]
    missing = grad is None
    g = np.zeros(shape) if missing else grad
    found = probe.measure({name: part}, float(np.vdot(g, part)), against=None)
    seen = found.error > config.gradient_fail and found.smooth is not False
    confirmed = False
    if seen:
        fresh = fresh_part(rng, grad, shape)
        again = probe.measure({name: fresh}, float(np.vdot(g, fresh)), against=None)
        confirmed = again.error > config.gradient_fail and again.smooth is not False
        if confirmed and again.error > found.error:
            found, part = again, fresh
    status = _tensor_status(found.error, config)
    if seen and not confirmed:
        status = "warn"
    if found.smooth is False:
        status = "warn"
    if missing and found.error == 0.0:
        status = "warn"  # the loss does not depend on it: an unused parameter
    return {
        "name": name,
        "shape": list(shape),
        "rel_error": found.raw,
        "judged_error": found.error,
        "analytic": found.analytic,
        "numeric": found.numeric,
        "step": found.step,
        "smooth": found.smooth,
        "unresolved": found.smooth is False,
        "confirmed": confirmed,
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


def _tensor_status(error: float, config: Config) -> str:
    if error <= config.gradient_warn:
        return "pass"
    return "warn" if error <= config.gradient_fail else "fail"


def _localize(
    probe: Probe,
    name: str,
    grad: np.ndarray,
    direction: np.ndarray,
    rng: np.random.Generator,
    h: float,
) -> dict[str, Any]:
    """Bisect the direction's support towards the coordinate with the largest mismatch,
    at the step ``h`` the tensor's own check settled on."""
    f = probe.f

    def difference(part: np.ndarray) -> float:
        return (f.value({name: part}, h) - f.value({name: part}, -h)) / (2 * h)

    flat = np.flatnonzero(direction)
    rng.shuffle(flat)
    while len(flat) > 1:
        halves = np.array_split(flat, 2)
        gaps = []
        for half in halves:
            part = np.zeros_like(direction)
            part.flat[half] = direction.flat[half]
            gaps.append(abs(float(np.vdot(grad, part)) - difference(part)))
        flat = halves[int(np.argmax(gaps))]
    index = int(flat[0])
    unit = np.zeros_like(direction)
    unit.flat[index] = 1.0
    numeric = difference(unit)
    analytic = float(grad.flat[index])
    return {
        "tensor": name,
        "index": [int(i) for i in np.unravel_index(index, grad.shape)],
        "analytic": analytic,
        "numeric": numeric,
        "rel_error": relative_error(
            analytic, numeric, probe.config.gradient_zero, probe.rounding(h)
        ),
    }


def _failure(
    session: Session,
    tensors: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    coordinates: list[dict[str, Any]],
    metrics: dict[str, Any],
    evidence: dict[str, Any],
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
    if "step" in worst:
        smooth = (
            "where no winner of a non-smooth operation changed"
            if worst.get("smooth")
            else "at two steps a decade apart"
        )
        how = f"{smooth} (h = {worst['step']:.2g}), confirmed along an independent direction"
    else:
        how = "as a group"
    unlocalized = sum(1 for t in tensors if t.get("unlocalized"))
    rest = (
        f" {unlocalized} more tensors sit in groups that disagree too, not localized "
        f"after {_SINGLES_CHECKED} tensors checked one by one."
        if unlocalized
        else ""
    )
    message = (
        f"{len(failed)} / {len(tensors)} parameter tensors disagree with centered "
        f"differences on {metrics['rows']} rows: {names}. Greatest relative error "
        f"{worst['judged_error']:.2g} in {worst['name']} ({band(worst['judged_error'])})"
        f"{where}; allowed {metrics['fail_above']:.2g}, measured {how}.{rest}"
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
