"""``initial_loss``: at init the loss should be what an uninformative model scores.

Lecture 5: a softmax classifier starts near ln C; more exactly near the entropy of the
label prior when its last bias is set to the log prior (both are accepted). For any other
loss, the reference is the loss of all-zero outputs and of the best constant output.
"""

from __future__ import annotations

import math

import numpy as np

from nndiag.backends.base import baselines as uninformative_losses
from nndiag.config import Config
from nndiag.contract import Session
from nndiag.results import CheckResult, Status

CHECK = "initial_loss"


def initial_loss(session: Session, config: Config) -> CheckResult:
    batch = session.rows(config.max_samples)
    if session.has_regularization:
        session.set_regularization(0.0)  # notes: check the data loss alone first
    evaluation = session.evaluate(batch, per_sample=True)
    measured, per_sample = evaluation.loss, evaluation.per_sample
    baselines = uninformative_losses(session, batch)
    classify = session.task.kind == "classification"
    expected = baselines["prior"] if classify else baselines["uniform"]
    low, high = min(baselines.values()), max(baselines.values())
    scale = max(abs(expected), 1e-12)
    noise = 0.0
    if per_sample is not None and len(per_sample) > 1:
        noise = config.initial_loss_sigmas * float(np.std(per_sample)) / math.sqrt(len(per_sample))
    if measured > high:
        distance = measured - high
    elif measured < low:
        distance = low - measured
    else:
        distance = 0.0
    deviation = max(distance - noise, 0.0) / scale if math.isfinite(measured) else math.inf

    def band(tolerance: float) -> list[float]:
        return [low - tolerance * scale - noise, high + tolerance * scale + noise]

    metrics = {
        "measured": measured,
        "expected": expected,
        "uniform_output_loss": baselines["uniform"],
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
        metrics["ln_num_classes"] = math.log(session.task.num_classes)
    evidence = {
        "measured": measured,
        "expected": expected,
        "band": [low, high],
        "warn_band": band(config.initial_loss_warn),
        "fail_band": band(config.initial_loss_fail),
    }

    if classify:
        classes = session.task.num_classes
        reference = (
            f"expected {expected:.4g} (entropy of the labels; ln {classes} = "
            f"{math.log(classes):.4g} for uniform scores)"
        )
    else:
        reference = f"expected {expected:.4g} (the loss of all-zero outputs)"
    reg_note = (
        ""
        if session.has_regularization
        else " Regularization could not be turned off (no knob given), so it is included."
    )
    status: Status = "pass"
    hint = None
    # The baselines go through the user's loss, so a loss summed over the batch looks
    # consistent with itself; the lecture's ln C for uniform scores tells it apart.
    summed = (
        classify
        and len(batch) > 4
        and abs(baselines["uniform"] / math.log(session.task.num_classes) - len(batch))
        < 0.25 * len(batch)
    )
    if not math.isfinite(measured):
        status = "fail"
        head = f"Loss at init is {measured} on {len(batch)} samples, {reference}."
        hint = "Find the first non-finite value: outputs overflow, log of 0, or division by 0."
    else:
        head = f"Loss at init {measured:.4g} on {len(batch)} samples, {reference}"
        if deviation > config.initial_loss_fail:
            status = "fail"
        elif deviation > config.initial_loss_warn:
            status = "warn"
        if summed:
            status = "warn" if status == "pass" else status
            head += (
                f"; the loss of uniform scores is {baselines['uniform']:.4g}, "
                f"{len(batch)} (the batch size) times ln C."
            )
            hint = (
                f"The loss sums over the batch ({session.words.summed_loss}): its scale "
                "and the learning rate then depend on the batch size; average it instead."
            )
        elif status == "pass":
            head += "; within tolerance."
        elif measured > high:
            head += f"; {deviation:.0%} too high."
            if abs(measured / scale - len(batch)) < 0.25 * len(batch):
                hint = (
                    "The loss is about batch-size times too large: it sums over the batch "
                    f"({session.words.summed_loss}); average it instead."
                )
            elif classify:
                hint = (
                    "The scores at init are too confident: scale the last layer's weights "
                    "down (e.g. std 1e-2 or x0.01) and set its bias to 0 or to the log "
                    "prior of the labels."
                )
            else:
                hint = (
                    "Outputs at init are far from the targets' scale: shrink the last "
                    "layer's weights and set its bias to the targets' mean; standardize "
                    "the targets."
                )
        else:
            head += f"; {deviation:.0%} too low."
            hint = (
                "An untrained model already scores better than chance: the inputs leak "
                "the labels, the weights are not freshly initialized, or the loss is "
                "scaled down (divided twice by the batch size?)."
            )
    return CheckResult(CHECK, status, head + reg_note, metrics, evidence, hint)
