"""The monitor's rules: each reads the findings measured so far and says whether it fires
now. Pure functions of (:class:`History`, :class:`MonitorSettings`), so the same table runs
on findings from any backend and any door.

A rule that fires gives a :class:`Verdict` in the lecture's words; the engine keeps the
first step each rule fired at (a ``fail`` replaces an earlier ``warn``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nndiag.monitoring.findings import History, Sample
from nndiag.monitoring.settings import MonitorSettings

__all__ = ["RULES", "Rule", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    status: str  # warn or fail
    message: str
    hint: str
    metrics: dict[str, Any] = field(default_factory=dict)


Judge = Callable[[History, MonitorSettings], "Verdict | None"]


@dataclass(frozen=True)
class Rule:
    """One rule: its id (the result's ``check``), whether firing stops training, what it
    reads, and its judgement."""

    id: str
    fatal: bool
    reads: str  # "loss", "sample" or "validation": what must exist before it can judge
    judge: Judge
    watches: str  # what a pass means, completed by the engine: "... over N steps"


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _mean(values: list[float]) -> float | None:
    found = _finite(values)
    return sum(found) / len(found) if found else None


def _names(names: tuple[str, ...] | list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def nonfinite(h: History, s: MonitorSettings) -> Verdict | None:
    loss = h.losses[-1]
    sample = h.sample_now()
    hint = (
        f"Training diverged or hit log(0) or 0/0. Lower {h.lr_note()}, or clip the "
        "gradients; run nndiag.diagnose(subject, checks=['numerics']) on this batch to "
        "name the operation that produced it."
    )
    if not math.isfinite(loss):
        finite = [(i, v) for i, v in enumerate(h.losses) if math.isfinite(v)]
        last = f" (last finite: {finite[-1][1]:.4g} at step {finite[-1][0]})" if finite else ""
        return Verdict("fail", f"The loss is {loss} at step {h.step}{last}.", hint)
    if sample is not None and sample.nonfinite_grads:
        names = _names(sample.nonfinite_grads)
        return Verdict("fail", f"The gradient of {names} holds NaN or Inf at step {h.step}.", hint)
    return None


def loss_spike(h: History, s: MonitorSettings) -> Verdict | None:
    t, c, w = h.step, s.spike_confirm, s.spike_window
    first = t - c + 1  # the first step of the jump
    if first < 1:
        return None
    # Early on, the window is what there is: a loss that explodes on the first steps
    # jumps past 3x its start, as the lecture says.
    recent, window = h.losses[first:], h.losses[max(0, first - w) : first]
    base, start = _mean(window), h.start(first)
    if base is None or start is None or len(_finite(recent)) < c:
        return None  # a non-finite loss is nonfinite's
    if base <= 0 or start <= 0:
        return None  # ratios of a loss that can be negative (an ELBO) say nothing
    low = min(recent)
    if low < s.spike_factor * base or low < s.spike_floor * start:
        return None
    return Verdict(
        "fail",
        f"The loss jumped to {max(recent):.4g} at step {first}, {low / base:.1f}x or more "
        f"its mean over the {len(window)} steps before ({base:.4g}), for {c} steps in a row "
        f"(start: {start:.4g}).",
        f"The step is too large at this point of training, with {h.lr_note()}: the "
        "lecture says a loss past 3x its start means stop. Lower the rate, add warm-up or clip the "
        "gradients; if a scheduler raised it, check its schedule.",
        {"base": base, "peak": max(recent), "factor": low / base},
    )


def loss_flat(h: History, s: MonitorSettings) -> Verdict | None:
    win, patience = s.flat_window, s.flat_patience
    count = (h.step + 1) // win
    if (h.step + 1) % win or count < patience + 1:
        return None
    means = [_mean(h.losses[j * win : (j + 1) * win]) for j in range(count)]
    if any(m is None for m in means):
        return None
    found: list[float] = [m for m in means if m is not None]
    best, recent, start = min(found[:-patience]), found[-patience:], h.start()
    if start is None or start <= 0 or best <= 0:
        return None  # a relative fall of a loss that can be negative says nothing
    if min(recent) <= (1 - s.flat_min_fall) * best:
        return None
    if best < s.flat_floor * start:
        return None  # it learned, then settled: a converged loss (label noise) is flat too
    span = [lr for lr in h.lrs[-patience * win :] if lr is not None]
    if span and span[-1] > span[0]:
        return None  # a rate still warming up: the loss waits for it
    lrs = [lr for lr in h.lrs if lr is not None]
    if lrs and lrs[-1] <= max(lrs) * 1e-3:
        cause = f"A schedule has decayed {h.lr_note()} to nothing: fix the schedule"
    elif lrs and lrs[-1] > lrs[0]:
        cause = f"The model stopped learning once {h.lr_note()} was raised"
    else:
        cause = f"{h.lr_note().capitalize()} is too low, or the model has stopped learning"
    return Verdict(
        "warn",
        f"The loss has not fallen in {patience * win} steps: its {win}-step means are "
        f"{', '.join(f'{m:.4g}' for m in recent)} against {best:.4g} before "
        f"(start {start:.4g}).",
        f"{cause} (the lecture: a loss that barely changes means a rate too low). See "
        "update_ratio and dying_units for a layer that stopped learning.",
        {"best": best, "latest": recent[-1], "start": start},
    )


def update_ratio(h: History, s: MonitorSettings) -> Verdict | None:
    sample = h.sample_now()
    if sample is None:
        return None
    if sample.unheld:
        return Verdict(
            "fail",
            f"{_names(sample.unheld)} get gradients but did not change at step {h.step}: "
            "no parameter group of the optimizer holds them.",
            "Build the optimizer from model.parameters() once the model is complete (a "
            "layer added later, or a list of sub-modules, leaves tensors out).",
            {"unheld": len(sample.unheld)},
        )
    recent = h.samples[-s.ratio_confirm :]
    medians = [x.median_ratio for x in recent]
    if len(recent) < s.ratio_confirm or any(m is None or m <= s.ratio_high for m in medians):
        return None
    return _ratio_high(h, sample, s)


def _ratio_high(h: History, sample: Sample, s: MonitorSettings) -> Verdict:
    top = max(sample.ratios, key=lambda k: sample.ratios[k])
    median = sample.median_ratio or 0.0
    return Verdict(
        "warn",
        f"Updates change the weights by {median:.3g} of their norm per step (median over "
        f"{len(sample.ratios)} weight tensors; {top}: {sample.ratios[top]:.3g}) at step "
        f"{h.step}, above {s.ratio_high:g} for {s.ratio_confirm} samples in a row; the "
        "lecture's healthy ratio is about 1e-3.",
        f"{h.lr_note().capitalize()} is too high: lowering it about "
        f"{max(median / 1e-3, 10):.0f}x brings the ratio to the lecture's 1e-3.",
        {"median": median, "highest": sample.ratios[top]},
    )


def dying_units(h: History, s: MonitorSettings) -> Verdict | None:
    sample = h.sample_now()
    if sample is None or len(h.samples) < 3:
        return None
    first = {layer.name: layer.dead for layer in h.samples[0].layers}
    # Dead on two samples in a row: one small batch (an epoch's last) is no evidence.
    previous = {layer.name: layer.dead for layer in h.samples[-2].layers}
    for layer in sample.layers:
        before, last = first.get(layer.name), previous.get(layer.name)
        if layer.dead is None or before is None or last is None or layer.gate:
            continue
        if min(layer.dead, last) >= s.dead_warn and min(layer.dead, last) - before >= s.dead_rise:
            return Verdict(
                "warn",
                f"{layer.dead:.0%} of {layer.name}'s ReLU units fired for no sample of step "
                f"{h.step}'s batch, against {before:.0%} at step {h.samples[0].step}: units "
                "are dying.",
                f"{h.lr_note().capitalize()} is too high: large updates push ReLU units "
                "where they never fire again (the lecture). Lower it, or use Leaky ReLU.",
                {"dead": layer.dead, "dead_first": before},
            )
    return None


def gradient_norm(h: History, s: MonitorSettings) -> Verdict | None:
    sample = h.sample_now()
    if sample is None or sample.grad_norm is None or not math.isfinite(sample.grad_norm):
        return None
    earlier = _finite([x.grad_norm for x in h.samples[:-1] if x.grad_norm is not None])
    if len(earlier) < 2:
        return None
    typical = statistics.median(earlier)
    if typical <= 0 or sample.grad_norm <= s.grad_explode * typical:
        return None
    return Verdict(
        "warn",
        f"The gradient norm is {sample.grad_norm:.3g} at step {h.step}, "
        f"{sample.grad_norm / typical:.0f}x its median over the earlier samples "
        f"({typical:.3g}): gradients are exploding.",
        f"Clip the gradients (torch.nn.utils.clip_grad_norm_) or lower {h.lr_note()}; in a "
        "recurrent model, shorten the unrolled sequence.",
        {"norm": sample.grad_norm, "typical": typical},
    )


def generalization_gap(h: History, s: MonitorSettings) -> Verdict | None:
    values, what = h.validations, "Validation"
    if len(values) < s.gap_patience + 1 or values[-1][0] != h.step:
        return None
    margin = 0.0
    if h.higher_is_better:  # judged as an error rate: 1 - an accuracy (or a percentage)
        top = 1.0 if all(0.0 <= v <= 1.0 for _, v in values) else 100.0
        if all(0.0 <= v <= top for _, v in values):
            values = [(step, (top - v) / top) for step, v in values]
            what, margin = "The validation error (1 - the accuracy)", 0.02  # two points
        else:
            values, what = [(step, -v) for step, v in values], "The validation metric"
    best_at = min(range(len(values)), key=lambda i: values[i][1])
    best_step, best = values[best_at]
    recent = values[best_at + 1 :][-s.gap_patience :]
    if len(recent) < s.gap_patience:
        return None
    if any(v - best <= max(s.gap_rise * abs(best), margin) for _, v in recent):
        return None
    then = _train_loss(h, best_step, s.gap_window)
    now = [_train_loss(h, step, s.gap_window) for step, _ in recent]
    if then is None or any(x is None or x >= then for x in now):
        return None  # training is not improving either: not a gap
    if not h.higher_is_better and any(
        (v - x) - (best - then) <= s.gap_rise * abs(best)
        for (_, v), x in zip(recent, now)
        if x is not None
    ):
        return None  # a validation loss that worsens no more than training's: no new gap
    return Verdict(
        "warn",
        f"{what} has been worse than its best (step {best_step}, {best:.4g}) by more "
        f"than {s.gap_rise:.0%} for {len(recent)} validations ({values[-1][1]:.4g} at step "
        f"{h.step}) while the training loss kept falling ({then:.4g} -> {now[-1]:.4g}): the "
        "model is overfitting.",
        "The lecture's remedy for a growing gap: raise the regularization strength (weight "
        f"decay, dropout, augmentation), get more data, or stop at step {best_step}.",
        {"best_step": best_step, "best": best, "latest": values[-1][1]},
    )


def _train_loss(h: History, step: int, window: int) -> float | None:
    """The training loss's mean over the ``window`` steps up to ``step``."""
    return _mean(h.losses[max(0, step - window + 1) : step + 1])


RULES: tuple[Rule, ...] = (
    Rule("nonfinite", True, "loss", nonfinite, "the loss and sampled gradients stayed finite"),
    Rule("loss_spike", True, "loss", loss_spike, "the loss never jumped past 3x its mean"),
    Rule("loss_flat", False, "loss", loss_flat, "the loss kept falling (or had fallen)"),
    Rule("update_ratio", False, "sample", update_ratio, "updates stayed near the weights' scale"),
    Rule("dying_units", False, "sample", dying_units, "no ReLU layer's units died"),
    Rule("gradient_norm", False, "sample", gradient_norm, "the gradient norm did not explode"),
    Rule(
        "generalization_gap",
        False,
        "validation",
        generalization_gap,
        "validation kept pace with training",
    ),
)
