"""``learning_rate``: a short range test around the configured learning rate.

Lecture 5, babysitting the learning process: with regularization small, find the learning
rate that makes the loss go down. A loss that barely changes means the rate is too low; a
loss that explodes (NaN/Inf, or above 3x its start: "stop") means it is too high; and after
a round of training, if 10-20% of the units have died, the rate was too high.

The configured rate (the subject's optimizer's, else nndiag's default Adam at
``overfit_lr``) is multiplied by each of ``lr_factors``; every rate trains ``lr_steps``
updates on the same ``overfit_samples`` rows from the same initial weights, regularization
off. A rate *works* when the loss falls by at least ``lr_flat_fall`` of its start without
diverging. The verdict is on the configured rate:

- ``diverged`` (fail): NaN/Inf, or above ``overfit_diverge_factor`` x its start after the
  short run, and again at the end of a longer re-measurement (``lr_confirm_steps``, on the
  next rows when the data holds them): a spike that recovers is not divergence;
- ``units_died`` (fail): at least ``lr_died_fail`` of the network's ReLU units fired before
  the short run and never after it (over the first ``max_samples`` rows), in the short run
  and again in the re-measurement (or the re-measurement diverges);
- ``too_low`` (warn): the loss barely moves while a larger rate of the range works;
- ``rising`` (warn): the loss rises, short of divergence, while a smaller rate works;
- ``flat_everywhere`` (warn): no rate of the range moves the loss (not a rate problem).

Every message says the range that works and the rate of the fastest fall: the curve the LR
finders of fastai and Lightning draw, with a verdict on the rate the subject uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nndiag.config import Config
from nndiag.contract import Batch, LayerRecord, Session, Trainer
from nndiag.results import CheckResult, Status

CHECK = "learning_rate"


@dataclass
class _Run:
    """One rate's short run: its losses (before each step) and what they did."""

    lr: float
    losses: list[float]
    outcome: str = ""  # falls, flat, rises, diverged
    optimizer: str = ""
    before: list[LayerRecord] = field(default_factory=list)
    after: list[LayerRecord] = field(default_factory=list)

    @property
    def start(self) -> float:
        return self.losses[0]

    @property
    def last(self) -> float:
        return self.losses[-1]

    @property
    def fall(self) -> float:
        """The loss's fall over the run as a share of its start (negative: it rose)."""
        if not (math.isfinite(self.start) and math.isfinite(self.last)):
            return math.nan
        return (self.start - self.last) / max(abs(self.start), 1e-12)


def _judge(run: _Run, config: Config) -> str:
    if not all(math.isfinite(x) for x in run.losses):
        return "diverged"
    if run.last > config.overfit_diverge_factor * abs(run.start):
        return "diverged"
    if run.fall >= config.lr_flat_fall:
        return "falls"
    return "rises" if run.fall <= -config.lr_flat_fall else "flat"


def _capture(trainer: Trainer, rows: Batch | None, config: Config) -> list[LayerRecord]:
    if rows is None:
        return []
    # Weights a high rate blew up give huge activations: their sums may overflow float32,
    # which costs those statistics and nothing the dead-unit count reads.
    with np.errstate(over="ignore", invalid="ignore"):
        return trainer.capture(rows, bins=config.histogram_bins)


def _train(
    session: Session,
    batch: Batch,
    lr: float | None,
    steps: int,
    config: Config,
    rows: Batch | None = None,
) -> tuple[_Run, float | None]:
    """``steps`` updates at ``lr`` (the configured rate when None) from the initial
    weights, with activation captures over ``rows`` before and after when given; the
    trainer's rate."""
    with session.trainer(batch, lr=lr, default_lr=config.overfit_lr, restore=True) as trainer:
        rate = trainer.lr
        before = _capture(trainer, rows, config)
        losses: list[float] = []
        for _ in range(steps + 1):  # the loss after `steps` updates is read by one more step
            losses.append(trainer.step().loss)
            if not math.isfinite(losses[-1]):
                break
        after = _capture(trainer, rows, config) if math.isfinite(losses[-1]) else []
        run = _Run(lr if lr is not None else (rate or math.nan), losses, "", trainer.optimizer)
        run.before, run.after = before, after
    run.outcome = _judge(run, config)
    return run, rate


def _died(
    before: list[LayerRecord], after: list[LayerRecord]
) -> tuple[list[dict[str, Any]], int, int]:
    """Per ReLU layer: units dead before and after the run and those that died in it
    (fired before, never after); the units that died and all ReLU units, over all layers
    (the lecture's share of the network's units: those dead at init count among the
    units, not among those that died)."""
    later = {x.name: x for x in after if x.kind == "relu" and x.fires is not None}
    layers: list[dict[str, Any]] = []
    died_total = units_total = 0
    for layer in before:
        if layer.kind != "relu" or layer.fires is None or not layer.units:
            continue
        match = later.get(layer.name)
        if match is None or match.units != layer.units:
            continue
        fired = np.asarray(layer.fires) > 0
        dead_after = np.asarray(match.fires) == 0
        died = int((fired & dead_after).sum())
        layers.append(
            {
                "name": layer.name,
                "depth": layer.depth,
                "units": layer.units,
                "dead_before": int((~fired).sum()),
                "dead_after": int(dead_after.sum()),
                "died": died,
                "dead_before_fraction": float((~fired).mean()),
                "dead_after_fraction": float(dead_after.mean()),
            }
        )
        died_total += died
        units_total += layer.units
    return layers, died_total, units_total


def _confirm_batch(session: Session, n: int) -> tuple[Batch, str]:
    """The next ``n`` rows when the data holds them (an independent measurement), else
    the same rows."""
    rows = session.rows(2 * n)
    if len(rows) >= 2 * n:
        return session.take(rows, range(n, 2 * n)), f"the next {n} rows"
    return session.rows(n), f"the same {n} rows"


def _range_text(works: list[_Run]) -> str:
    if not works:
        return "no rate of the range makes the loss fall without diverging"
    low, high = works[0].lr, works[-1].lr
    best = min(works, key=lambda r: r.last)
    span = f"at {low:.3g}" if low == high else f"from {low:.3g} to {high:.3g}"
    return f"the loss falls without diverging {span} (fastest at {best.lr:.3g})"


def _fmt_fall(run: _Run) -> str:
    if not math.isfinite(run.last):
        return f"{run.start:.4g} -> {run.last}"
    if run.fall < -1.0:  # more than doubled: a factor reads better than a percentage
        return f"{run.start:.4g} -> {run.last:.4g} ({1 - run.fall:.3g}x its start)"
    return f"{run.start:.4g} -> {run.last:.4g} ({-run.fall:+.1%})"


def learning_rate(session: Session, config: Config) -> CheckResult:
    """Fail when the configured learning rate diverges or kills ReLU units in a short
    run; warn when it barely moves the loss while larger rates work."""
    n = len(session.rows(config.overfit_samples))
    batch = session.rows(n)
    rows = session.rows(config.max_samples)
    if session.has_regularization:
        session.set_regularization(0.0)
    steps = config.lr_steps
    configured, rate = _train(session, batch, None, steps, config, rows)
    optimizer = configured.optimizer
    if rate is None or not math.isfinite(rate) or rate <= 0:
        return CheckResult(
            CHECK,
            "skip",
            f"The learning rate of {optimizer} cannot be read or set, so there is no range "
            "to test around it.",
            {"optimizer": optimizer},
            hint="Build the optimizer with optax.inject_hyperparams (JAX) so that its rate "
            "can be read and replaced.",
        )
    if not math.isfinite(configured.start):
        return CheckResult(
            CHECK,
            "skip",
            f"The loss is {configured.start} before any step: no learning rate can be judged.",
            {"optimizer": optimizer, "configured_lr": rate},
            hint="NaN/Inf at init comes from the init or the loss; the numerics check names "
            "the first operation that produces it.",
        )
    configured.lr = rate
    runs = [configured]
    for factor in sorted(set(config.lr_factors) - {1.0}):
        runs.append(_train(session, batch, rate * factor, steps, config)[0])
    runs.sort(key=lambda r: r.lr)
    # Too low for the whole range above it (SGD at 1e-7 moves nothing up to 1e-4): the
    # search goes on a decade at a time, as far as lr_extra_decades, until a rate works.
    top = runs[-1].lr
    for _ in range(config.lr_extra_decades if configured.outcome == "flat" else 0):
        if any(r.outcome in ("falls", "diverged", "rises") for r in runs if r.lr > rate):
            break
        top *= 10.0
        runs.append(_train(session, batch, top, steps, config)[0])
    works = [r for r in runs if r.outcome == "falls"]
    layers, died, units = _died(configured.before, configured.after)
    died_fraction = died / units if units else 0.0

    metrics: dict[str, Any] = {
        "configured_lr": rate,
        "optimizer": optimizer,
        "samples": n,
        "steps": steps,
        "configured_outcome": configured.outcome,
        "configured_start": configured.start,
        "configured_final": configured.last,
        "configured_fall": configured.fall,
        "works_low": works[0].lr if works else None,
        "works_high": works[-1].lr if works else None,
        "best_lr": min(works, key=lambda r: r.last).lr if works else None,
        "died_units": died,
        "relu_units": units,
        "died_fraction": died_fraction,
    }
    evidence: dict[str, Any] = {
        "lrs": [r.lr for r in runs],
        "start": [r.start for r in runs],
        "final": [r.last for r in runs],
        "outcomes": [r.outcome for r in runs],
        "curves": [r.losses for r in runs],
        "configured": rate,
        "works": [works[0].lr, works[-1].lr] if works else None,
        "diverge_factor": config.overfit_diverge_factor,
        "layers": layers,
        "died_fail": config.lr_died_fail,
    }
    where = _range_text(works)
    head = (
        f"At the configured rate {rate:.3g} ({optimizer}) the loss goes "
        f"{_fmt_fall(configured)} in {steps} updates on {n} samples"
    )
    died_text = (
        f"; {died} of the {units} ReLU units ({died_fraction:.1%}) fired before it and "
        "never after it"
        if units
        else ""
    )
    lower = [r for r in works if r.lr < rate]
    higher = [r for r in works if r.lr > rate]

    def result(status: Status, message: str, hint: str | None, cause: str | None) -> CheckResult:
        found = metrics | ({"cause": cause} if cause else {})
        return CheckResult(CHECK, status, message, found, evidence, hint)

    suspect = configured.outcome == "diverged" or (units and died_fraction >= config.lr_died_fail)
    if suspect:
        # Re-measured before it is reported: a longer run at the same rate, on other rows.
        again_batch, again_rows = _confirm_batch(session, n)
        again, _ = _train(session, again_batch, None, config.lr_confirm_steps, config, rows)
        _, again_died, again_units = _died(again.before, again.after)
        again_fraction = again_died / again_units if again_units else 0.0
        finite = all(math.isfinite(x) for x in again.losses)
        diverged_again = not finite or again.last > config.overfit_diverge_factor * abs(again.start)
        metrics["remeasured_on"] = again_rows
        metrics["remeasured_steps"] = config.lr_confirm_steps
        metrics["remeasured_final"] = again.last
        metrics["remeasured_died_fraction"] = again_fraction
        evidence["remeasured"] = again.losses
        lower_hint = (
            f"Divide it by 10 or more: {where}."
            if lower
            else f"Divide it by 10 or more ({where} in the range tried)."
        )
        if configured.outcome == "diverged" and diverged_again:
            shown = "NaN/Inf" if not finite else f"{again.last:.4g}"
            return result(
                "fail",
                f"{head}: it diverges (above {config.overfit_diverge_factor:g}x its start "
                f"or NaN/Inf), and again in {config.lr_confirm_steps} updates on "
                f"{again_rows} (ending at {shown}). {where.capitalize()}.",
                f"The learning rate {rate:.3g} is too high. {lower_hint}",
                "diverged",
            )
        died_again = again_units > 0 and again_fraction >= config.lr_died_fail
        if units and died_fraction >= config.lr_died_fail and (died_again or diverged_again):
            worst = max(layers, key=lambda x: x["died"])
            again_text = (
                f"{again_fraction:.1%} died in {config.lr_confirm_steps} updates on {again_rows}"
                if died_again
                else f"the loss diverges in {config.lr_confirm_steps} updates on {again_rows}"
            )
            return result(
                "fail",
                f"{head}{died_text}, most in {worst['name']} ({worst['died']} of "
                f"{worst['units']}); re-measured, {again_text}. {where.capitalize()}.",
                f"The learning rate {rate:.3g} is too high: a large step pushes a ReLU "
                "unit below zero for every sample, and a unit that never fires gets no "
                "gradient to come back (lecture: 10-20% of the units dead after training "
                f"means too high). {lower_hint}",
                "units_died",
            )
        note = (
            f" It spiked in the short run but not in {config.lr_confirm_steps} updates on "
            f"{again_rows}: a transient, not divergence."
            if configured.outcome == "diverged"
            else f" Units died in the short run but not in the re-measurement on {again_rows}."
        )
        return result("pass", f"{head}{died_text}. {where.capitalize()}.{note}", None, None)

    if configured.outcome == "flat" and higher:
        best = min(higher, key=lambda r: r.last)
        return result(
            "warn",
            f"{head}: it barely moves (less than {100 * config.lr_flat_fall:g}% of its start), "
            f"while {where}{died_text}.",
            f"The learning rate {rate:.3g} is too low: raise it towards {best.lr:.3g}, where "
            "the loss falls fastest in the range.",
            "too_low",
        )
    if configured.outcome == "rises" and lower:
        return result(
            "warn",
            f"{head}: it rises, short of divergence, while {where}{died_text}.",
            f"The learning rate {rate:.3g} is probably too high: lower it into the range "
            f"where the loss falls ({lower[0].lr:.3g} to {lower[-1].lr:.3g}).",
            "rising",
        )
    if not works:
        words = session.words
        return result(
            "warn",
            f"{head}: no rate from {runs[0].lr:.3g} to {runs[-1].lr:.3g} makes the loss fall "
            f"by {100 * config.lr_flat_fall:g}% without diverging{died_text}.",
            "Not a learning-rate problem: gradients do not reach the parameters "
            f"({words.cut_graph}), parameters are missing from the optimizer, or the loss "
            "does not depend on them (see gradient_check and overfit_small).",
            "flat_everywhere",
        )
    return result("pass", f"{head}{died_text}. {where.capitalize()}.", None, None)
