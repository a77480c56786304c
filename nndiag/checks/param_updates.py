"""``param_updates``: a few optimizer steps must change every trainable tensor, by a sane
amount, and nothing else.

CS231n notes (babysitting the learning process): track "the ratio of the update magnitudes
to the value magnitudes ... somewhere around 1e-3. If it is lower than this then the
learning rate might be too low. If it is higher then the learning rate is likely too high."
Before any ratio, the plainer failures the same few steps show, each a ``fail`` with its
cause (the first that applies to a tensor):

- ``not_owned``: a trainable tensor the subject's optimizer does not hold (a layer replaced
  after the optimizer was built, an optimizer built over part of the model);
- ``no_gradient``: no gradient reaches it (a cut graph, a branch the forward never uses);
- ``zero_gradient``: its gradient is exactly zero at every step (a dead path);
- ``not_updated``: it gets a gradient, yet the optimizer never changes it (a learning rate
  of 0, a masked update); not for a gradient below ``param_update_negligible`` of the
  median tensor's, which rounding leaves of one that cancels (a bias that reaches a batch
  normalization through linear layers only, an attention key bias under the softmax):
  such a tensor does nothing, and the pass message says so;
- ``frozen_changed``: a tensor that takes no gradient (a frozen parameter, a buffer that is
  not a batch statistic) changed during the steps: something writes into it outside the
  optimizer.

A gradient finding is confirmed on an independent step (another batch when the data has
one) before it fails; one the second step does not repeat is a warn. ``not_owned`` and
``frozen_changed`` are read off the optimizer and the tensors' bits, not estimated: they
are not re-measured.

The ratio: per tensor the mean over steps of ``||update|| / ||weights before the step||``;
tensors that start at zero (zero-init biases, zero-init residual gains) have no ratio and
are left out, and the verdict reads the median over the other tensors, which is where a
learning rate shared by the whole model shows: outside ``[param_update_ratio_low,
param_update_ratio_high]`` it warns (the learning rate too low / too high). Single tensors
far from the median (a LayerNorm gain at 1, a token initialized at 1e-6) are evidence in
the table and the plot, not a verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from nndiag.config import Config
from nndiag.contract import Batch, Ownership, Session, Step
from nndiag.results import CheckResult

CHECK = "param_updates"

# Causes in the order a tensor is assigned one (the first that applies).
CAUSES = ("not_owned", "no_gradient", "zero_gradient", "not_updated", "frozen_changed")
_SHOWN = 4  # tensor names quoted per cause in a message


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _batches(session: Session, rows: int) -> tuple[Batch, Batch]:
    """The steps' batch and an independent one for the re-measurement (the same rows when
    the data holds no more)."""
    both = session.rows(2 * rows)
    n = min(rows, len(both))
    if len(both) > n:
        return session.take(both, range(n)), session.take(both, range(n, len(both)))
    return both, both


def _gradient_causes(names: Sequence[str], steps: Sequence[Step]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in names:
        norms = [s.grads.get(name) for s in steps]
        if all(g is None for g in norms):
            found[name] = "no_gradient"
        elif all(g is None or g == 0 for g in norms):
            found[name] = "zero_gradient"
    return found


def _negligible(names: Sequence[str], steps: Sequence[Step], fraction: float) -> list[str]:
    """Tensors whose largest gradient norm is non-zero but below ``fraction`` of the median
    tensor's: a gradient that cancels in the forward pass up to rounding (a bias right
    before a batch normalization, which subtracts it), too small to move float weights."""
    largest = {
        n: max((g for s in steps if (g := s.grads.get(n)) is not None), default=0.0) for n in names
    }
    reached = [g for g in largest.values() if g > 0]
    if not reached:
        return []
    typical = statistics.median(reached)
    return [n for n, g in largest.items() if 0 < g < fraction * typical]


def _causes(
    names: Sequence[str],
    steps: Sequence[Step],
    unchanged: Sequence[str],
    frozen: Sequence[str],
    ownership: Ownership | None,
    negligible: Sequence[str],
) -> dict[str, str]:
    """Each failing tensor's cause (see the module docstring)."""
    unowned = set(ownership.unowned) if ownership is not None else set()
    gradient = _gradient_causes(names, steps)
    found: dict[str, str] = {}
    for name in names:
        if name in unowned:
            found[name] = "not_owned"
        elif name in gradient:
            found[name] = gradient[name]
        elif name in unchanged and name not in negligible:
            found[name] = "not_updated"
    for name in frozen:
        found[name] = "frozen_changed"
    return found


def _confirmed(
    session: Session, batch: Batch, config: Config, causes: Mapping[str, str]
) -> dict[str, str]:
    """The causes an independent step repeats (ownership and changed frozen tensors are
    facts read off the optimizer and the bits, kept as they are)."""
    if all(c in ("not_owned", "frozen_changed") for c in causes.values()):
        return dict(causes)
    with session.trainer(batch, default_lr=config.overfit_lr) as trainer:
        step = trainer.step(measure=True)
        unchanged = set(trainer.unchanged())
    gradient = _gradient_causes(list(step.updates), [step])
    kept: dict[str, str] = {}
    for name, cause in causes.items():
        again = (
            cause in ("not_owned", "frozen_changed")  # facts, not estimates
            or (cause in ("no_gradient", "zero_gradient") and name in gradient)
            or (cause == "not_updated" and name in unchanged and name not in gradient)
        )
        if again:
            kept[name] = cause
    return kept


def _ratios(names: Sequence[str], steps: Sequence[Step]) -> dict[str, float | None]:
    """Mean over steps of ||update|| / ||weights||; None for a tensor that starts at zero
    (its first update is the whole tensor: no ratio means anything)."""
    found: dict[str, float | None] = {}
    for name in names:
        if not steps[0].weights.get(name):
            found[name] = None
            continue
        values = [
            s.updates[name] / s.weights[name]
            for s in steps
            if s.weights.get(name) and math.isfinite(s.updates.get(name, math.nan))
        ]
        values = [v for v in values if math.isfinite(v)]
        found[name] = sum(values) / len(values) if values else None
    return found


def _hint(session: Session, cause: str, ownership: Ownership | None) -> str:
    words = session.words
    if cause == "not_owned":
        stale = ownership.stale if ownership is not None else ()
        old = (
            f" It holds {len(stale)} tensor(s) that are not the model's "
            f"({', '.join(str(s) for s in stale[:_SHOWN])}): a layer was replaced after the "
            "optimizer was built."
            if stale
            else ""
        )
        return (
            "The optimizer does not hold these tensors, so no step updates them." + old + " Build "
            "the optimizer after the last change to the model, over all of its trainable "
            "tensors (a factory: over the parameters it is given), or add the missing ones "
            "to a parameter group; freeze them if they are meant to stay fixed."
        )
    if cause == "no_gradient":
        return (
            f"No gradient reaches these tensors: look for {words.cut_graph} between them and "
            "the loss, or a branch the forward pass computes but never uses; freeze them if "
            "they are unused on purpose."
        )
    if cause == "zero_gradient":
        return (
            "Their gradient is exactly zero at every step: a dead path (ReLUs that never "
            f"fire, a multiplication by zero, a gate stuck at 0) or {words.cut_graph}."
        )
    if cause == "not_updated":
        return (
            "They get a gradient but the optimizer never changes them: a learning rate of 0 "
            "in their parameter group, or an update rule that masks them."
        )
    return (
        "Tensors that take no gradient changed during training steps: something writes "
        "into them outside the optimizer, e.g. an in-place write in the forward pass (an "
        "embedding that renormalizes its rows to a maximum norm, an update of a frozen "
        "weight's values); batch statistics are not counted."
    )


def param_updates(session: Session, config: Config) -> CheckResult:
    """Fail on trainable tensors a few optimizer steps never change (naming why) and on
    frozen ones that change; warn when the median update/weight ratio is outside the band."""
    batch, other = _batches(session, config.param_update_rows)
    ownership = session.ownership()
    with session.trainer(batch, default_lr=config.overfit_lr) as trainer:
        steps = [trainer.step(measure=True) for _ in range(config.param_update_steps)]
        unchanged = trainer.unchanged()
        frozen = trainer.frozen_changed()
        optimizer = trainer.optimizer
    low, high = config.param_update_ratio_low, config.param_update_ratio_high
    losses = [s.loss for s in steps]
    metrics: dict[str, Any] = {
        "optimizer": optimizer,
        "steps": len(steps),
        "rows": len(batch),
        "ratio_low": low,
        "ratio_high": high,
    }
    if not math.isfinite(losses[0]):
        return CheckResult(
            CHECK,
            "skip",
            f"The loss is {losses[0]} before any step: no update to measure (the numerics "
            "check names where it comes from).",
            metrics,
        )
    finite = [s for s in steps if math.isfinite(s.loss)]
    names = list(steps[0].updates)
    negligible = _negligible(names, finite, config.param_update_negligible)
    causes = _causes(names, finite, unchanged, frozen, ownership, negligible)
    confirmed = _confirmed(session, other, config, causes) if causes else {}
    ratios = _ratios(names, finite)
    # A tensor with a finding moves by nothing (or by what no optimizer should apply): it
    # says nothing about the learning rate.
    judged = [
        r for n, r in ratios.items() if r is not None and n not in causes and n not in negligible
    ]
    median = statistics.median(judged) if judged else None

    records = []
    for index, name in enumerate(names):
        grads = [s.grads.get(name) for s in finite]
        seen = [g for g in grads if g is not None]
        records.append(
            {
                "name": name,
                "order": index,
                "weight_norm": finite[0].weights.get(name),
                "update_norm": sum(s.updates.get(name, 0.0) for s in finite) / len(finite),
                "grad_norm": max(seen) if seen else None,
                "ratio": ratios[name],
                "cause": confirmed.get(name)
                or (f"{causes[name]} (not confirmed)" if name in causes else ""),
                "note": "negligible gradient" if name in negligible else "",
            }
        )
    for name in frozen:
        records.append(
            {
                "name": name,
                "order": len(records),
                "weight_norm": None,
                "update_norm": None,
                "grad_norm": None,
                "ratio": None,
                "cause": "frozen_changed",
                "note": "",
            }
        )
    records.sort(key=lambda r: (not r["cause"], r["order"]))  # findings first in the table
    counts = {cause: sum(1 for c in confirmed.values() if c == cause) for cause in CAUSES}
    metrics.update(
        {
            "tensors": len(names),
            "median_ratio": median,
            "min_ratio": min(judged) if judged else None,
            "max_ratio": max(judged) if judged else None,
            "from_zero": sum(1 for r in ratios.values() if r is None),
            "negligible_gradient": len(negligible),
            **counts,
            "stale": len(ownership.stale) if ownership is not None else 0,
            "unconfirmed": len(causes) - len(confirmed),
        }
    )
    evidence = {
        "tensors": records,
        "band": [low, high],
        "median": median,
        "reference": 1e-3,
        "optimizer": optimizer,
    }
    ratio_text = (
        f"median update/weight ratio {median:.2g} per step over {len(judged)} tensors "
        f"(notes: ~1e-3; band {low:g}-{high:g})"
        if median is not None
        else "no update/weight ratio (every tensor has a finding or starts at zero)"
    )

    if confirmed:
        by_cause = {c: [n for n, k in confirmed.items() if k == c] for c in CAUSES}
        parts = []
        for cause, found in by_cause.items():
            if not found:
                continue
            what = {
                "not_owned": "not held by the optimizer",
                "no_gradient": "no gradient",
                "zero_gradient": "an all-zero gradient",
                "not_updated": "a gradient but no change",
                "frozen_changed": "frozen, yet changed",
            }[cause]
            parts.append(f"{what} ({len(found)}): {_names(found)}")
        first = next(c for c in CAUSES if by_cause[c])
        metrics["cause"] = first
        trainable = [n for n in confirmed if confirmed[n] != "frozen_changed"]
        head = (
            f"{len(trainable)} of {len(names)} trainable tensors never update under {optimizer}"
            if trainable
            else f"Frozen tensors change under {optimizer}"
        )
        hints = [_hint(session, c, ownership) for c in CAUSES if by_cause[c]]
        again = any(c not in ("not_owned", "frozen_changed") for c in confirmed.values())
        return CheckResult(
            CHECK,
            "fail",
            f"{head} in {len(finite)} steps"
            + (" (confirmed on another step): " if again else ": ")
            + "; ".join(parts)
            + f". {ratio_text[0].upper()}{ratio_text[1:]}.",
            metrics,
            evidence,
            " ".join(hints),
        )
    if len(finite) < len(steps):
        at = next(i for i, s in enumerate(steps) if not math.isfinite(s.loss))
        metrics["cause"] = "diverged"
        return CheckResult(
            CHECK,
            "warn",
            f"The loss becomes {steps[at].loss} at step {at + 1} of {len(steps)} under "
            f"{optimizer}; before it, {ratio_text}.",
            metrics,
            evidence,
            "The steps blow up: the learning rate is likely too high; lower it (the "
            "numerics check names where the NaN/Inf first appears).",
        )
    off_band = median is not None and not low <= median <= high
    if off_band and "nndiag's default" in optimizer:
        # nndiag chose the rate: its update ratio says nothing about the user's rate.
        ratio_text += (
            f", outside {low:g}-{high:g} at nndiag's default rate, which is no finding about "
            "yours (give the subject its optimizer to judge it)"
        )
        metrics["default_rate_off_band"] = True
    elif off_band and median is not None:
        too_high = median > high
        metrics["cause"] = "lr_too_high" if too_high else "lr_too_low"
        return CheckResult(
            CHECK,
            "warn",
            f"The updates are {'large' if too_high else 'small'} for the weights under "
            f"{optimizer}: {ratio_text}.",
            metrics,
            evidence,
            (
                "Each step moves the weights by a large share of their size: the learning "
                "rate is likely too high; lower it until the median ratio is below "
                f"{high:g}."
                if too_high
                else "The steps barely move the weights: the learning rate is likely too "
                f"low; raise it until the median ratio is above {low:g}."
            ),
        )
    if causes:  # seen on one batch, gone on the next: said, not failed
        metrics["cause"] = "unconfirmed"
        return CheckResult(
            CHECK,
            "warn",
            f"{len(causes)} tensor(s) looked stuck on the first batch but not on the "
            f"re-measurement ({_names(list(causes))}); {ratio_text}.",
            metrics,
            evidence,
            "A gradient that vanishes on some batches only: look for a branch that depends "
            "on the data (a mask, a gate, classes absent from a batch).",
        )
    zero = metrics["from_zero"]
    started = f"; {zero} tensor(s) start at zero (no ratio)" if zero else ""
    idle = [n for n in negligible if n in unchanged]
    moved = f"{len(names) - len(idle)} of {len(names)}" if idle else f"All {len(names)}"
    if negligible:  # true, and harmless: such a tensor does nothing
        started += (
            f"; {len(negligible)} tensor(s) get a gradient below "
            f"{config.param_update_negligible:g} of the median tensor's "
            f"({_names(negligible)}): it cancels in the forward pass (a bias that reaches a "
            "batch normalization through linear layers only, an attention key bias under "
            "the softmax), so the tensor has no effect"
        )
    return CheckResult(
        CHECK,
        "pass",
        f"{moved} trainable tensors change in {len(finite)} steps of {optimizer}, and "
        f"nothing frozen does; {ratio_text}{started}.",
        metrics,
        evidence,
    )
