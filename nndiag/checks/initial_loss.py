"""``initial_loss``: at init the loss should be what an uninformative model scores.

Lecture 5: a softmax classifier starts near ln C; more exactly near the entropy of the
label prior when its last bias is set to the log prior (both are accepted); a model that
ends in log_softmax (for nll_loss) is scored with uniform log-probabilities, -ln C. For
continuous or soft targets the references are constant outputs: zero, the targets' mean
and, for targets in [0, 1], 0.5; one where the loss sits on a clamp (BCE of an output of
exactly 0) is left out, and the message says so.

The reference values go through the subject's own loss, so a classifier's loss is also
checked for cross-entropy's properties before it is compared with them: it is never
negative, it falls when the true class's score rises, and the label prior (the best
constant predictor) scores no worse than uniform scores. A classifier whose labels use
implausibly few of its output classes is reported with the probability of that under a
uniform labelling.

The tolerance is relative to the band of reference values (``initial_loss_warn`` and
``initial_loss_fail``) plus the sampling error of a model *at* the expected loss: for a
classifier the standard error of ``-log p_prior(y)`` over the batch's labels, for a
regression that of the per-row loss of the best constant output. The spread of the measured
model's own per-sample losses never widens it (a more broken model spreads more), and no
band reaches below the loss's minimum (0 for cross-entropy and squared error).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nndiag.checks import leaks
from nndiag.checks.baselines import Baselines
from nndiag.checks.baselines import baselines as uninformative_losses
from nndiag.config import Config
from nndiag.contract import Batch, Session
from nndiag.errors import InvalidSubject, ModelError
from nndiag.results import CheckResult, Status

CHECK = "initial_loss"

# Verdicts reached on something other than the loss's place in the bands.
_NOT_THE_BAND = {
    "negated": "the loss is negated or reversed",
    "leak": "the targets leak into the inputs",
    "output_width": "the labels use few of the output classes",
    "summed": "the loss sums over the batch",
}
# Rows whose loss of the reference outputs is taken one by one for a regression's allowance.
_ROWS_FOR_SPREAD = 64
# The true class's score is raised by this much for the direction test (logit units).
_BUMP = 1.0


def _label_spread(session: Session, batch: Batch) -> tuple[float, float]:
    """(entropy of the stored label prior, standard error of ``-log p_prior(y)`` over the
    batch's labels) for a classifier."""
    counts = np.asarray(session.task.label_counts, dtype=np.float64)
    prior = counts / counts.sum()
    entropy = float(-(prior[prior > 0] * np.log(prior[prior > 0])).sum())
    _, y = session.arrays(batch)
    labels = np.asarray(y).reshape(-1).astype(np.int64)
    labels = labels[(labels >= 0) & (labels < len(prior))]  # -100: ignored positions
    if labels.size < 2:
        return entropy, 0.0
    surprise = -np.log(np.maximum(prior[labels], 1e-300))
    return entropy, float(np.std(surprise) / math.sqrt(labels.size))


def _reference_spread(session: Session, batch: Batch, reference: Any) -> float:
    """Standard error of the per-row loss of the reference outputs (0 when the loss cannot
    take single rows)."""
    n = min(len(batch), _ROWS_FOR_SPREAD)
    if n < 2:
        return 0.0
    try:
        values = [session.loss_of(session.take(batch, [i]), reference[i : i + 1]) for i in range(n)]
    except (ModelError, InvalidSubject, ValueError, TypeError, RuntimeError):
        return 0.0
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return 0.0
    return float(np.std(finite) / math.sqrt(len(finite)))


def _bumped_loss(
    session: Session, batch: Batch, outputs: Any, shift: int = 0
) -> tuple[float, float] | None:
    """(loss of the model's outputs, loss with the true class's score raised by _BUMP), both
    through ``loss_of``; None when the labels cannot index the outputs' class axis.

    ``shift`` aligns the output at position t with the label at t + shift (a loss that
    scores next-token logits against ``y[:, 1:]`` itself has shift 1)."""
    _, y = session.arrays(batch)
    labels = np.asarray(y).astype(np.int64)
    scores = np.asarray(outputs, dtype=np.float64)
    if scores.ndim < 2 or labels.shape != (scores.shape[0], *scores.shape[2:]):
        return None
    if shift and (labels.ndim < 2 or labels.shape[1] <= abs(shift)):
        return None
    valid = (labels >= 0) & (labels < scores.shape[1])  # -100: ignored positions
    if shift:
        labels, valid = np.roll(labels, -shift, axis=1), np.roll(valid, -shift, axis=1)
        if shift > 0:  # positions whose label t + shift lies past the end
            valid[:, -shift:] = False
        else:
            valid[:, :-shift] = False
    index = np.expand_dims(np.where(valid, labels, 0), 1)
    raised = np.take_along_axis(scores, index, 1) + _BUMP * np.expand_dims(valid, 1)
    bumped = scores.copy()
    np.put_along_axis(bumped, index, raised, axis=1)
    return session.loss_of(batch, scores), session.loss_of(batch, bumped)


def _output_width(session: Session) -> dict[str, Any] | None:
    """Labels that use only ``0 .. k-1`` of ``C`` output classes: the chance of that under a
    uniform labelling of ``n`` labels is ``(k/C)^n``. None when every class is in use."""
    counts = session.task.label_counts
    classes = session.task.num_classes
    used = [i for i, c in enumerate(counts) if c]
    n = int(sum(counts))
    if not used or n < 1:
        return None
    k = used[-1] + 1
    if k >= classes:
        return None
    log10_p = n * math.log10(k / classes)
    return {"labels": n, "classes_used": k, "outputs": classes, "log10_probability": log10_p}


def _continuous_reference(found: Baselines) -> str:
    """``expected 0.05577 to 0.3041 (the loss of uninformative outputs: ...)``."""
    values = found.values
    low, high = min(values.values()), max(values.values())
    span = f"{low:.4g}" if high <= low * (1 + 1e-4) else f"{low:.4g} to {high:.4g}"
    kept = ", ".join(f"{found.words(n)} {v:.4g}" for n, v in values.items())
    text = f"expected {span} (the loss of uninformative outputs: {kept}"
    for name, reason in found.left_out.items():
        text += f"; {found.words(name)} left out: {reason}"
    return text + ")"


def _percent(value: float) -> str:
    return f"{value:.0%}" if abs(value) >= 0.01 else f"{value:.2%}"


def initial_loss(session: Session, config: Config) -> CheckResult:
    """Fail when the loss at init is far from what uninformative scores give (ln C / the
    label prior's entropy), when the loss is negated or reversed, or when the labels use
    implausibly few of the output classes."""
    batch = session.rows(config.max_samples)
    if session.has_regularization:
        session.set_regularization(0.0)  # notes: check the data loss alone first
    evaluation = session.evaluate(batch, outputs=True)
    measured = evaluation.loss
    outputs = np.asarray(evaluation.outputs, dtype=np.float64)
    uninformative = uninformative_losses(session, batch)
    baselines = uninformative.values
    classify = session.task.kind == "classification"
    expected = baselines[uninformative.expected]
    low, high = min(baselines.values()), max(baselines.values())
    ln_c = math.log(session.task.num_classes) if classify else math.nan

    # Sampling error of a model at the expected loss (never the measured model's spread).
    if classify:
        entropy, spread = _label_spread(session, batch)
    else:
        constant = uninformative.outputs[uninformative.expected]
        entropy, spread = math.nan, _reference_spread(session, batch, constant)
    noise = config.initial_loss_sigmas * spread
    # Losses with a minimum of 0 (cross-entropy, squared error): no band below it.
    floor = 0.0 if classify or low >= 0 else -math.inf
    # Relative to the band's top (the loss of uniform scores, ln C for cross-entropy) above
    # it, to its bottom below it; a label entropy near 0 (one class, one sample) is floored
    # at a tenth of the top so that the ratio stays meaningful.
    top = max(abs(high), 1e-12)
    bottom = max(abs(low), 0.1 * top)
    if not math.isfinite(measured):
        distance, scale = math.inf, top
    elif measured > high + noise:
        distance, scale = measured - high - noise, top
    elif measured < low - noise:
        distance, scale = low - noise - measured, bottom
    else:
        distance, scale = 0.0, top
    deviation = distance / scale

    def band(tolerance: float) -> list[float]:
        return [
            max(low - tolerance * bottom - noise, floor),
            high + tolerance * top + noise,
        ]

    metrics: dict[str, Any] = {
        "measured": measured,
        "expected": expected,
        **{f"{name}_output_loss": value for name, value in baselines.items()},
        "band_low": low,
        "band_high": high,
        "noise_allowance": noise,
        "deviation": deviation,
        "warn_above": config.initial_loss_warn,
        "fail_above": config.initial_loss_fail,
        "samples": len(batch),
        "regularization_off": session.has_regularization,
    }
    if classify:
        metrics["num_classes"] = session.task.num_classes
        metrics["ln_num_classes"] = ln_c
        metrics["label_entropy"] = entropy
    evidence = {
        "measured": measured,
        "expected": expected,
        "band": [low, high],
        "warn_band": band(config.initial_loss_warn),
        "fail_band": band(config.initial_loss_fail),
    }
    reg_note = (
        ""
        if session.has_regularization
        else " Regularization could not be turned off (no knob given), so it is included."
    )

    def result(status: Status, message: str, hint: str | None, cause: str | None) -> CheckResult:
        if cause is not None:
            metrics["cause"] = cause
        if cause in _NOT_THE_BAND and status != "pass":
            # The plot then says why a point inside the pass region still failed.
            evidence["judged_on"] = {"status": status, "cause": _NOT_THE_BAND[cause]}
        return CheckResult(CHECK, status, message + reg_note, metrics, evidence, hint)

    if classify:
        reference = (
            f"expected {expected:.4g} (entropy of the labels; ln {session.task.num_classes} "
            f"= {ln_c:.4g} for uniform scores)"
        )
    else:
        reference = _continuous_reference(uninformative)
    if not math.isfinite(measured):
        return result(
            "fail",
            f"Loss at init is {measured} on {len(batch)} samples, {reference}.",
            "Find the first non-finite value: outputs overflow, log of 0, or division by 0.",
            "nonfinite",
        )
    head = f"Loss at init {measured:.4g} on {len(batch)} samples, {reference}"

    if session.task.reading:
        head += f" ({session.task.reading})"
    if classify:
        found = _semantics(session, batch, outputs, measured, baselines, ln_c, metrics)
        if found is not None:
            text, hint = found
            return result("fail", f"{head}; {text}", hint, "negated")
        shift = int(metrics.get("label_shift", 0))
        leak = None
        if config.initial_loss_leak > 0:  # 0: a deliberate copy or echo task
            leak = leaks.copied_targets(session, batch, shift) or leaks.shuffled_gap(
                session, batch, outputs, measured, config
            )
        if leak is not None:
            metrics.update(leak.metrics)
            return result("fail", f"{head}; {leak.text}.", leak.hint, "leak")
        width = _output_width(session)
        if width is not None:
            metrics.update({f"width_{k}": v for k, v in width.items()})
            log10_p = width["log10_probability"]
            level: Status | None = None
            if log10_p < math.log10(config.initial_loss_width_fail):
                level = "fail"
            elif log10_p < math.log10(config.initial_loss_width_warn):
                level = "warn"
            if level is not None:
                k, classes, n = width["classes_used"], width["outputs"], width["labels"]
                text = (
                    f"; the model outputs {classes} class scores but all {n} labels lie in "
                    f"0..{k - 1}: under a uniform labelling over {classes} classes that has "
                    f"probability ({k}/{classes})^{n} = 10^{log10_p:.1f} (fail below "
                    f"{config.initial_loss_width_fail:g}, warn below "
                    f"{config.initial_loss_width_warn:g})."
                )
                hint = (
                    f"The last layer has {classes} outputs but the labels use only "
                    f"0..{k - 1}: set the output width to the number of classes."
                )
                if k == 1:
                    hint = (
                        f"Every label is 0 out of {classes} classes: the batches hold one "
                        "class (data sorted by class? shuffle it), or the output width is "
                        "wrong."
                    )
                else:
                    hint += (
                        " If the data really has that many classes, the batches are sorted "
                        "by label (shuffle them) or the label ids are sorted by frequency."
                    )
                return result(level, head + text, hint, "output_width")

    status: Status = "pass"
    if deviation > config.initial_loss_fail:
        status = "fail"
    elif deviation > config.initial_loss_warn:
        status = "warn"
    # The baselines go through the user's loss, so a loss summed over the batch looks
    # consistent with itself; the lecture's ln C for uniform scores tells it apart.
    summed = (
        classify
        and len(batch) > 4
        and abs(baselines["uniform"] / ln_c - len(batch)) < 0.25 * len(batch)
    )
    if summed:
        return result(
            "warn" if status == "pass" else status,
            f"{head}; the loss of uniform scores is {baselines['uniform']:.4g}, "
            f"{len(batch)} (the batch size) times ln C.",
            f"The loss sums over the batch ({session.words.summed_loss}): its scale "
            "and the learning rate then depend on the batch size; average it instead.",
            "summed",
        )
    if status == "pass":
        return result("pass", head + "; within tolerance.", None, None)
    amount = _percent(deviation) if scale > 1e-8 else f"{distance:.3g}"
    if measured > high:
        text = f"; {amount} too high (above the band's top {high:.4g})."
        if abs(measured / max(abs(expected), 1e-12) - len(batch)) < 0.25 * len(batch):
            hint = (
                "The loss is about batch-size times too large: it sums over the batch "
                f"({session.words.summed_loss}); average it instead."
            )
        elif classify:
            spread = float(np.std(outputs, axis=1).mean()) if outputs.ndim > 1 else math.nan
            metrics["logit_std"] = spread
            hint = (
                f"The scores at init are too confident (logit std {spread:.3g} across "
                f"classes; near 0 is uninformative){_output_layer_scale(session, metrics)}: "
                "scale the last layer's weights down (e.g. std 1e-2 or x0.01) and set its "
                "bias to 0 or to the log prior of the labels."
            )
        else:
            hint = (
                "Outputs at init are far from the targets' scale: shrink the last "
                "layer's weights and set its bias to the targets' mean; standardize "
                "the targets."
            )
        return result(status, head + text, hint, "too_high")
    return result(
        status,
        f"{head}; {amount} too low (below the band's bottom {low:.4g}).",
        "An untrained model already scores better than chance: the inputs leak "
        "the labels, the weights are not freshly initialized, or the loss is "
        "scaled down (divided twice by the batch size?).",
        "too_low",
    )


def _semantics(
    session: Session,
    batch: Batch,
    outputs: Any,
    measured: float,
    baselines: dict[str, float],
    ln_c: float,
    metrics: dict[str, Any],
) -> tuple[str, str] | None:
    """A classifier's loss against cross-entropy's properties: (finding, hint) or None."""
    hint = (
        "The loss is negated or reversed (e.g. -cross_entropy, or arguments swapped): "
        "minimizing it pushes the true class's score down. Use the cross-entropy of "
        "(scores, labels) as it is."
    )
    bumped = _bumped_loss(session, batch, outputs)
    if bumped is not None:
        base, raised = bumped
        metrics["loss_of_outputs"] = base
        metrics["loss_true_class_raised"] = raised
        if raised > base + 1e-9 * max(abs(base), 1.0) and not _aligned_elsewhere(
            session, batch, outputs, metrics
        ):
            return (
                f"the loss rises when the true class's score rises ({base:.4g} -> "
                f"{raised:.4g} with +{_BUMP:g} on it), at the label's own position and "
                "one position either side: it is negated or reversed.",
                hint,
            )
    negative = {k: v for k, v in (("measured", measured), *baselines.items()) if v < 0}
    if negative:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in negative.items())
        return (
            f"the loss is negative ({shown}), and cross-entropy never is: it is negated, "
            "or not a cross-entropy of the scores (log-softmax missing?).",
            hint,
        )
    # The prior is the best constant predictor under cross-entropy: for a loss that scores
    # uniform outputs like cross-entropy (ln C, or N ln C summed), it may not lose to them.
    uniform, prior = baselines["uniform"], baselines["prior"]
    ratio = abs(uniform) / ln_c if ln_c > 0 else math.nan
    crossentropy_like = abs(ratio - 1) < 0.05 or abs(ratio - len(batch)) < 0.05 * len(batch)
    if crossentropy_like and prior > uniform + 1e-6 * abs(uniform):
        return (
            f"the loss of the label prior's scores ({prior:.4g}) exceeds that of uniform "
            f"scores ({uniform:.4g}), though the prior is the best constant predictor "
            "under cross-entropy: the loss is reversed.",
            hint,
        )
    return None


def _aligned_elsewhere(
    session: Session, batch: Batch, outputs: Any, metrics: dict[str, Any]
) -> bool:
    """Whether the loss falls when the true class's score rises one position earlier or
    later: a correct cross-entropy of shifted positions (``out[:, :-1]`` against
    ``y[:, 1:]``), not a negated one."""
    for shift in (1, -1):
        bumped = _bumped_loss(session, batch, outputs, shift)
        if bumped is not None and bumped[1] < bumped[0]:
            metrics["label_shift"] = shift
            return True
    return False


def _output_layer_scale(session: Session, metrics: dict[str, Any]) -> str:
    """What the output layer's weights show, when their std is well above 1/sqrt(fan_in):
    its std against that, and whether it was sized by the number of classes instead
    (torchvision's EfficientNet draws U(+-1/sqrt(classes)): sized for 1000 classes, large
    for 10)."""
    try:
        matrices = session.weights()
    except Exception:  # the layer's numbers only sharpen the hint
        return ""
    if not matrices:
        return ""
    name, matrix = list(matrices.items())[-1]
    fan_in, units = int(matrix.shape[1]), int(matrix.shape[0])
    std = float(np.asarray(matrix, dtype=np.float64).std())
    xavier = 1 / math.sqrt(fan_in)
    if std < 2 * xavier:
        return ""
    metrics.update(output_layer=name, output_weight_std=std, output_fan_in=fan_in)
    text = (
        f"; the output layer {name} has weight std {std:.3g}, {std / xavier:.2g}x "
        f"1/sqrt(fan_in {fan_in}) = {xavier:.3g}"
    )
    sized = "an init sized by the number of classes, not by fan_in"
    bound = 1 / math.sqrt(units)
    if abs(std * math.sqrt(3) / bound - 1) < 0.15:
        text += f" (uniform within +-1/sqrt({units}) = +-{bound:.3g}: {sized})"
    elif abs(std / bound - 1) < 0.15:
        text += f" (std 1/sqrt({units}): {sized})"
    return text
