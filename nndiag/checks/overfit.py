"""``overfit_small``: a model that cannot overfit ~20 samples will not learn the data set.

Lecture 5: take a tiny subset, turn regularization off, and the model must reach ~100%
train accuracy and a loss near zero; when it does not, the evidence says why, and the cause
named must be the one the evidence shows:

- ``nonfinite_at_init``: NaN/Inf before any step (the init or the loss, not the LR);
- ``unbounded``: a classifier's loss below 0, which cross-entropy never reaches (a sign bug
  or the wrong loss);
- ``precision``: NaN/Inf while training float16/bfloat16 parameters (Adam's eps underflows);
- ``lr_too_high``: NaN/Inf, or a loss above ``overfit_diverge_factor`` x its start for
  ``overfit_diverge_steps`` steps in a row or at the end of the budget (a spike that
  recovers is not divergence: training goes on through it);
- ``dead_units``: the run did not fit and a ReLU layer is at least ``dead_fail`` dead;
- ``flat`` / ``slow`` / ``plateau``: the shape of the loss curve.

The budget is ``overfit_steps`` steps, a count: the same verdict on a fast machine and a
slow one, serially and under xdist (a wall-clock budget once turned a fail into a warn on a
loaded machine).

Identical inputs with different targets cap the accuracy the model can reach (and put a
floor under a cross-entropy): both are computed from the batch and used in the verdict.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from nndiag.checks import baselines
from nndiag.checks.activations import gate_branch
from nndiag.config import Config
from nndiag.contract import IGNORED_TARGET, Batch, LayerRecord, Session, Trainer
from nndiag.results import CheckResult, Status

CHECK = "overfit_small"

# Steps trained after the loss first goes negative, to show where it runs.
_NEGATIVE_STEPS = 20
# The lecture's "~100%": within a point of the ceiling (a token or two of a sequence batch;
# below one sample of 20, so a sample-level miss still counts).
_NEAR = 0.01
# Label positions examined for the accuracy ceiling (beyond that it is not computed).
_MAX_POSITIONS = 200_000
_HALF = ("float16", "bfloat16")


def _percent(value: float) -> str:
    """A fraction as a percentage with enough digits that it never rounds to 0% or 100%
    unless it is exactly that."""
    if value in (0.0, 1.0):
        return f"{value:.0%}"
    for digits in range(0, 6):
        text = f"{100 * value:.{digits}f}"
        if float(text) not in (0.0, 100.0):
            return f"{text}%"
    return f"{100 * value:.6g}%"


def _continuous_floor(session: Session, batch: Batch) -> tuple[float, str]:
    """The lowest loss any outputs reach on continuous or soft targets, and how it was
    found (BCE on soft targets cannot go below their entropy); (0, "") by default."""
    value, how = baselines.floor(session, batch)
    if not how or value <= 0:
        return 0.0, ""
    return value, f"an estimate: the loss of {how}"


def _ceiling(session: Session, batch: Batch) -> tuple[float, float, str, float]:
    """(best accuracy, smallest mean cross-entropy, how the context was read, slack) that
    any model reaches on ``batch`` when identical inputs carry different targets; (1, 0,
    "", 0) when the inputs are neither one array nor a dict of token ids, or every input is
    distinct. ``slack`` is one
    label per ambiguous context: there the best predictor's top classes are (near-)tied, so
    a fitted model's argmax may land on a runner-up."""
    X, y = session.arrays(batch)
    if X is None:
        X = session.sequence(batch)  # a dict's token ids
    if X is None:
        return 1.0, 0.0, "", 0.0
    X, labels = np.asarray(X), np.asarray(y)
    if labels.size == 0 or labels.size > _MAX_POSITIONS or len(X) != len(labels):
        return 1.0, 0.0, "", 0.0
    groups: dict[bytes, Counter[int]] = {}
    how = "identical inputs"
    rows = [np.ascontiguousarray(x).tobytes() for x in X]
    if labels.ndim == 1:
        for key, label in zip(rows, labels.tolist()):
            groups.setdefault(key, Counter())[int(label)] += 1
    elif labels.ndim == 2 and X.ndim == 2 and X.shape == labels.shape and X.dtype.kind in "iu":
        # Token sequences with a target per position: a causal model sees the prefix.
        how = "identical prefixes, as a causal model reads them,"
        for i in range(len(X)):
            for t in range(X.shape[1]):
                key = X[i, : t + 1].tobytes()
                groups.setdefault(key, Counter())[int(labels[i, t])] += 1
    else:
        flat = labels.reshape(len(labels), -1)
        for key, row in zip(rows, flat):
            for t, label in enumerate(row.tolist()):
                groups.setdefault(key + t.to_bytes(8, "little"), Counter())[int(label)] += 1
    for counts in groups.values():
        counts.pop(IGNORED_TARGET, None)
    groups = {k: c for k, c in groups.items() if c}
    total = sum(sum(c.values()) for c in groups.values())  # -100 positions do not count
    if total == 0:
        return 1.0, 0.0, "", 0.0
    best = sum(max(c.values()) for c in groups.values()) / total
    entropy = 0.0
    for counts in groups.values():
        n = sum(counts.values())
        entropy -= sum(c * math.log(c / n) for c in counts.values())
    ambiguous = sum(1 for c in groups.values() if len(c) > 1)
    return best, entropy / total, how, ambiguous / total


def _half_precision(session: Session, batch: Batch, optimizer: str) -> str | None:
    """``float16``/``bfloat16`` when the parameters (or the inputs) are half precision."""
    text = optimizer
    try:
        with session.objective(batch) as objective:
            text += " " + objective.note  # names the promoted parameter dtypes
    except Exception:  # the dtype is only an extra clue; without it nothing is lost
        pass
    X, _ = session.arrays(batch)
    if X is not None:
        text += " " + str(getattr(X, "dtype", ""))
    for name in ("bfloat16", "float16"):
        if name in text:
            return name
    return None


def _dead_layers(layers: list[LayerRecord], limit: float) -> list[tuple[LayerRecord, float]]:
    """ReLU layers at least ``limit`` dead, less squeeze-excitation branches (a pooled
    vector per sample: their few units are on or off for all samples by design)."""
    found = []
    branch = gate_branch(layers)
    for layer in layers:
        if layer.kind != "relu" or layer.fires is None or not layer.units or layer.name in branch:
            continue
        fraction = float((np.asarray(layer.fires) == 0).sum()) / layer.units
        if fraction >= limit:
            found.append((layer, fraction))
    return found


def _dead_output(layers: list[LayerRecord], session: Session) -> list[tuple[LayerRecord, float]]:
    """A ReLU on the class scores (SqueezeNet's last conv): one dead unit there is a class
    the model can never score, so any dead unit counts, not the layer's dead_fail share."""
    relus = [x for x in layers if x.kind == "relu" and x.fires is not None and x.units]
    if session.task.kind != "classification" or not relus:
        return []
    last = relus[-1]
    if last.units != session.task.num_classes:
        return []
    fraction = float((np.asarray(last.fires) == 0).sum()) / last.units
    return [(last, fraction)] if fraction > 0 else []


def _layers_after(trainer: Trainer, batch: Batch, config: Config) -> list[LayerRecord]:
    """Activation statistics over the trained rows, read only when a run did not fit."""
    try:
        return trainer.capture(batch, bins=config.histogram_bins)
    except Exception:  # no activation evidence: the verdict then rests on the loss alone
        return []


# A failure under nndiag's own optimizer whose cause a rate can explain: the rates tried
# (multiples of overfit_lr) before the model is blamed, in the direction the cause points.
_RETRIES = {
    "flat": (10.0, 100.0),
    "slow": (10.0, 100.0),
    "plateau": (10.0, 0.1),
    "lr_too_high": (0.1, 0.01),
    "dead_units": (0.1, 0.01),
}


def _unaligned(accuracy: float | None, ceiling: float, per_position: bool) -> bool:
    """Per-position labels, a loss near its floor and the accuracy below half its ceiling:
    the subject's loss does not score the outputs against the labels at their own
    positions (cross-entropy that low means the true class wins almost everywhere). One
    label per sample has no other position to be scored at: there it stays a failure."""
    return per_position and accuracy is not None and accuracy < 0.5 * ceiling


def overfit_small(session: Session, config: Config) -> CheckResult:
    """Fail when ~20 samples, regularization off, cannot be fitted within the step budget,
    naming the cause the loss curve shows. Where the optimizer was nndiag's choice (the
    subject gave none) and the cause is one a rate explains, the lecture's remedy is tried
    first: other rates, from the same weights; the model fails only when none fits."""
    first = _overfit(session, config, None)
    cause = first.metrics.get("cause")
    own = "nndiag's default" in str(first.metrics.get("optimizer"))
    if first.status != "fail" or cause not in _RETRIES or not own:
        return _term_left_on(session, first)
    tried = []
    for factor in _RETRIES[str(cause)]:
        lr = config.overfit_lr * factor
        retry = _overfit(session, config, lr)
        tried.append(f"{lr:g} ({retry.metrics.get('cause') or retry.status})")
        if retry.status == "pass":
            return CheckResult(
                CHECK,
                "pass",
                f"{retry.message} nndiag's default {first.metrics['optimizer'].split(' ')[0]} "
                f"did not fit ({cause}); at lr {lr:g} it does: the rate was nndiag's choice, "
                "not the model's fault.",
                {**retry.metrics, "default_cause": cause, "fitting_lr": lr},
                retry.evidence,
            )
    failed = CheckResult(
        CHECK,
        "fail",
        f"{first.message} The optimizer was nndiag's default; other rates did not fit "
        f"either: {', '.join(tried)}.",
        {**first.metrics, "rates_tried": [config.overfit_lr * f for f in _RETRIES[str(cause)]]},
        first.evidence,
        first.hint,
    )
    return _term_left_on(session, failed)


def _term_left_on(session: Session, result: CheckResult) -> CheckResult:
    """A plateau above the targets' floor, when the loss also reads the model's other
    outputs (a VAE's KL term on mu and logvar) and no knob turns that term off, as the
    lecture turns regularization off before this test: a warning naming the knob."""
    if (
        result.status != "fail"
        or result.metrics.get("cause") not in ("plateau", "slow")
        or session.task.kind == "classification"
        or not session.task.auxiliary
        or session.has_regularization
    ):
        return result
    return CheckResult(
        CHECK,
        "warn",
        f"{result.message} The loss also reads the model's other outputs, a term nndiag "
        "could not turn off: not judged as a failure to fit.",
        {**result.metrics, "cause": "regularization_on"},
        result.evidence,
        "If that term works against fitting (a VAE's KL divergence), pass its weight as "
        "Subject(regularization=...) so that this check turns it off; otherwise: too little "
        "capacity, saturated outputs, or a loss that does not fit the targets.",
    )


def _overfit(session: Session, config: Config, lr: float | None) -> CheckResult:
    """One run from the check's starting weights (restored after it), at ``lr`` or the
    optimizer's own rate."""
    total = len(session.rows(config.overfit_samples))
    batch = session.rows(total)
    if session.has_regularization:
        session.set_regularization(0.0)
    classify = session.task.kind == "classification"
    if classify:
        ceiling, floor, context, slack = _ceiling(session, batch)
    else:
        ceiling, slack = 1.0, 0.0
        floor, context = _continuous_floor(session, batch)
    per_position = np.ndim(session.arrays(batch)[1]) >= 2
    losses: list[float] = []
    accuracies: list[float | None] = []
    outcome = "budget"
    above = 0  # consecutive steps above overfit_diverge_factor x the start
    negative_at: int | None = None
    with session.trainer(batch, lr=lr, default_lr=config.overfit_lr, restore=True) as trainer:
        for index in range(config.overfit_steps):
            step = trainer.step()
            loss, accuracy = step.loss, step.accuracy
            losses.append(loss)
            accuracies.append(accuracy)
            if not math.isfinite(loss):
                outcome = "nonfinite"
                break
            start = losses[0]
            if classify and loss < 0:
                negative_at = index if negative_at is None else negative_at
                if index - negative_at >= _NEGATIVE_STEPS:
                    break
                continue
            above = above + 1 if loss > config.overfit_diverge_factor * abs(start) else 0
            if above >= config.overfit_diverge_steps:
                outcome = "diverged"
                break
            target = floor + config.overfit_loss_ratio * (abs(start) - floor)
            reached = not classify or (
                accuracy is not None and accuracy >= ceiling - max(slack, _NEAR) - 1e-9
            )
            if loss <= target and (reached or _unaligned(accuracy, ceiling, per_position)):
                outcome = "fitted"
                break
        unchanged = trainer.unchanged()
        optimizer = trainer.optimizer
        # The trained weights are restored when the block ends: read the dead-unit
        # evidence now (one forward; a fitted run needs none).
        captured = _layers_after(trainer, batch, config) if outcome != "fitted" else []
    if negative_at is not None:
        outcome = "unbounded"

    initial, final = losses[0], losses[-1]
    finite = [x for x in losses if math.isfinite(x)]
    best = min(finite) if finite else math.nan
    target = floor + config.overfit_loss_ratio * (abs(initial) - floor)
    accuracy = accuracies[-1]
    # The loss's share of the way from its start to its floor that is left.
    span = abs(initial) - floor
    left = (final - floor) / span if span > 0 and math.isfinite(final) else math.nan
    if outcome == "budget" and math.isfinite(final):
        if final > config.overfit_diverge_factor * abs(initial):
            outcome = "diverged"
    metrics: dict[str, Any] = {
        "samples": total,
        "steps": len(losses),
        "step_budget": config.overfit_steps,
        "initial_loss": initial,
        "final_loss": final,
        "best_loss": best,
        "target_loss": target,
        "final_accuracy": accuracy,
        "optimizer": optimizer,
        "never_updated": len(unchanged),
        "outcome": outcome,
    }
    if classify:
        metrics["accuracy_ceiling"] = ceiling
    if classify or floor:
        metrics["loss_floor"] = floor
    evidence = {"loss": losses, "accuracy": accuracies if classify else None, "target_loss": target}
    acc_text = f", accuracy {_percent(accuracy)}" if accuracy is not None else ""
    ceiling_text = ""
    if classify and ceiling < 1.0:
        ceiling_text = (
            f" The batch caps accuracy at {_percent(ceiling)} ({context} with different "
            f"targets) and puts the cross-entropy's floor at {floor:.4g}."
        )
    elif not classify and floor:
        ceiling_text = f" The targets put the loss's floor near {floor:.4g} ({context})."
    frozen = ""
    if unchanged:
        shown = ", ".join(unchanged[:4]) + (" ..." if len(unchanged) > 4 else "")
        frozen = f" {len(unchanged)} trainable tensor(s) never changed: {shown}."
    words = session.words
    frozen_hint = (
        f"Those tensors get no gradient or no update: a cut graph ({words.cut_graph}), "
        "unused layers, or parameters missing from the optimizer."
    )

    def result(status: Status, message: str, hint: str | None, cause: str | None) -> CheckResult:
        found = metrics | ({"cause": cause} if cause else {})
        return CheckResult(CHECK, status, message + ceiling_text, found, evidence, hint)

    reached = not classify or (
        accuracy is not None and accuracy >= ceiling - max(slack, _NEAR) - 1e-9
    )
    if outcome == "fitted" and classify and _unaligned(accuracy, ceiling, per_position):
        metrics["judged_by"] = "loss"
        acc_text = (
            f"; judged by the loss alone: nndiag's accuracy (the argmax of each output "
            f"against the label at its position) is {_percent(accuracy or 0.0)}, so the "
            "loss scores other positions than the labels' own (a loss that shifts them)"
        )
    if outcome == "fitted" or (
        outcome == "budget"
        and reached
        and math.isfinite(left)
        and left <= config.overfit_loss_ratio
    ):
        message = (
            f"Fit {total} samples in {len(losses)} steps with {optimizer}: loss "
            f"{initial:.4g} -> {final:.4g}{acc_text}."
        )
        if unchanged:
            return result("warn", message + frozen, frozen_hint, "frozen")
        return result("pass", message, None, None)

    head = f"Could not overfit {total} samples in {len(losses)} steps with {optimizer}"
    if outcome == "nonfinite" and len(losses) == 1:
        return result(
            "fail",
            f"{head}: the loss is {initial} before any step, so training never started.",
            "NaN/Inf at init comes from the init or the loss, not the learning rate: "
            "outputs that overflow, log of 0, or division by 0 (the numerics check names "
            "the first operation that produces it).",
            "nonfinite_at_init",
        )
    if outcome == "unbounded":
        return result(
            "fail",
            f"{head}: the loss falls below any plausible value ({initial:.4g} -> "
            f"{best:.4g}{acc_text}); cross-entropy is never negative.",
            "The loss falls below any plausible value (cross-entropy >= 0): a sign bug or "
            "the wrong loss (e.g. -cross_entropy, or NLL on scores without log-softmax).",
            "unbounded",
        )
    if outcome == "nonfinite":
        last = finite[-1] if finite else math.nan
        half = _half_precision(session, batch, optimizer)
        if half is not None:
            return result(
                "fail",
                f"{head}: the loss turned {final} at step {len(losses)} ({initial:.4g} -> "
                f"{last:.4g} -> {final}) with {half} parameters.",
                f"In {half}, Adam's default eps 1e-8 underflows"
                + (" to 0 (the smallest float16 is 6e-8)" if half == "float16" else "")
                + ", so a zero second moment divides by 0: raise eps (e.g. 1e-4), or "
                "train in float32 and cast (mixed precision with a loss scaler) rather "
                "than lowering the learning rate.",
                "precision",
            )
        return result(
            "fail",
            f"{head}: the loss diverged to {final} at step {len(losses)} ({initial:.4g} -> "
            f"{last:.4g} -> {final}).",
            "The learning rate is too high: divide it by 10.",
            "lr_too_high",
        )
    if outcome == "diverged":
        factor = config.overfit_diverge_factor
        where = (
            f"for {config.overfit_diverge_steps} steps in a row"
            if len(losses) < config.overfit_steps or final <= factor * abs(initial)
            else "at the end of the budget"
        )
        return result(
            "fail",
            f"{head}: the loss diverged, above {factor:g}x its start {where} "
            f"({initial:.4g} -> {final:.4g}).",
            "The learning rate is too high: divide it by 10.",
            "lr_too_high",
        )

    # Fitted the labels, and the loss fell by a large factor, short of the strict target.
    if reached and math.isfinite(left) and left <= config.overfit_partial_ratio:
        fell = f"{initial:.4g} -> {final:.4g}, {abs(initial) / max(final, 1e-300):.3g}x lower"
        fitted = f" to accuracy {_percent(accuracy)}" if accuracy is not None else ""
        aim = f"target {target:.3g}" + (f", floor {floor:.4g}" if floor else ", near zero")
        message = (
            f"Fit {total} samples{fitted} in {len(losses)} steps with {optimizer}: loss "
            f"{fell} ({aim})."
        )
        if left <= config.overfit_fitted_ratio and not unchanged:
            return result("pass", message, None, None)
        if unchanged:
            return result("warn", message + frozen, frozen_hint, "frozen")
        return result(
            "warn",
            message
            + (
                " The labels are fitted but the loss is still well above zero."
                if classify
                else f" The loss fell but is still well above {'its floor' if floor else 'zero'}."
            ),
            "Give overfit_steps more steps if the loss is still falling; a loss with a "
            "floor above 0 (label smoothing, a penalty left on) stops short of the target.",
            "loss_floor",
        )

    dead = _dead_layers(captured, config.dead_fail) or _dead_output(captured, session)
    if dead:
        # The first dead layer is where the signal stops; every layer past it gets nothing.
        layer, fraction = dead[0]
        feed = f" (fed by {layer.weight_layer})" if layer.weight_layer else ""
        later = ""
        if len(dead) > 1:
            later = f"; {len(dead) - 1} later ReLU layer(s) too, down to {dead[-1][0].name}"
        where = (
            f"{_percent(fraction)} of the ReLU units of {layer.name}{feed} never fire on the "
            f"{total} samples after training{later}"
        )
        peak = max(finite) if finite else math.nan
        if peak > config.overfit_diverge_factor * abs(initial):
            # Lecture: many dead units after training mean the learning rate was too high.
            at = finite.index(peak) + 1
            return result(
                "fail",
                f"{head} ({initial:.4g} -> {final:.4g}{acc_text}): the loss spiked to "
                f"{peak:.4g} at step {at} and {where}: the large steps killed them." + frozen,
                "The learning rate is too high: divide it by 10 (dead ReLUs after a spike "
                "are units pushed below zero for every sample by one large step).",
                "lr_too_high",
            )
        return result(
            "fail",
            f"{head} ({initial:.4g} -> {final:.4g}{acc_text}): {where}, so no gradient "
            "flows through them." + frozen,
            f"Dead units, not the learning rate: see dead_neurons for {layer.name}; look at "
            "the bias and weights feeding it (a large negative bias kills every unit).",
            "dead_units",
        )
    if best - floor > config.overfit_flat_ratio * (abs(initial) - floor):
        return result(
            "fail",
            f"{head}: the loss barely moved ({initial:.4g} -> best {best:.4g})." + frozen,
            "Raise the learning rate (x10), and check that gradients reach the parameters: "
            f"no {words.cut_graph} in forward, all parameters trainable and given "
            "to the optimizer.",
            "flat",
        )
    if classify and reached:
        return result(
            "fail",
            f"{head}: accuracy reached {_percent(accuracy or 1.0)} but the loss is stuck at "
            f"{final:.4g} (target {target:.3g}).",
            "The loss cannot reach 0 even on fitted data: it probably receives "
            "probabilities instead of logits (softmax applied twice), or it is the wrong "
            "loss for these targets.",
            "plateau",
        )
    # A plateau has stopped falling; a slow run still sheds a good fraction of its loss
    # over the last quarter of the budget.
    late = finite[3 * len(finite) // 4] if finite else math.nan
    if len(finite) >= 20 and final - floor <= 0.85 * (late - floor):
        return result(
            "fail",
            f"{head}: the loss is still falling slowly "
            f"({initial:.4g} -> {final:.4g}{acc_text})." + frozen,
            "The learning rate is too low for this budget: raise it (x10) or "
            "give overfit_steps more steps.",
            "slow",
        )
    return result(
        "fail",
        f"{head}: the loss is stuck at a plateau ({initial:.4g} -> "
        f"{final:.4g}{acc_text})." + frozen,
        "A plateau: units initialized identically (constant init keeps them symmetric), too "
        "little capacity, saturated activations, or a loss that does not fit the targets.",
        "plateau",
    )
