"""training (opt-in): a short real training run of the subject, judged by the training
monitor's rules (docs/monitor.md).

The subject's own optimizer steps nndiag's private copies through the subject's batches
for ``training_steps`` steps; every ``training_every`` steps the update and weight norms
are measured and the activations captured. The findings feed the same rule table
:func:`nndiag.monitor` runs live, so a team can gate CI on "200 steps of real training stay
healthy". Without an optimizer of the subject's the check skips: a failure of nndiag's
default would be no finding about the user's code. The run sees the batches nndiag holds
(at most 8), which a healthy model may well memorise in 200 steps: the train/validation
gap is left to the monitor on the user's own run.
"""

from __future__ import annotations

import math
from typing import Any

from nndiag.config import Config
from nndiag.contract import Batch, LayerRecord, Session, Step, Trainer
from nndiag.monitoring.findings import Sample, layer_sample
from nndiag.monitoring.watch import Watch
from nndiag.results import CheckResult, Status

__all__ = ["training"]

_NO_VALIDATION = (
    " (the check trains on the batches nndiag holds, at most 8, which a healthy model may "
    "memorise: watch the gap on your own run with nndiag.monitor and mon.validate)"
)
_BINS = 8


def training(session: Session, config: Config) -> CheckResult:
    batches = session.stored_batches()
    matrices = {f"{layer}.weight" for layer in session.weights()} | set(session.weights())
    watch = Watch(hint_validation=_NO_VALIDATION)
    with session.trainer(batches[0]) as trainer:
        if "nndiag's default" in trainer.optimizer:
            return CheckResult(
                "training",
                "skip",
                "The subject has no optimizer: a run with nndiag's default "
                f"({trainer.optimizer}) would judge nndiag's choice, not yours.",
                {"steps": 0},
                hint="Give Subject(optimizer=...) the optimizer your training uses.",
            )
        steps = _run(trainer, batches, matrices, watch, config)
    return _result(watch, steps, trainer.optimizer, config)


def _run(
    trainer: Trainer, train: list[Batch], matrices: set[str], watch: Watch, config: Config
) -> int:
    """Train until the step budget or a fatal rule; the steps taken."""
    h = watch.history
    for step in range(config.training_steps):
        batch = train[step % len(train)]
        sampled = step % config.training_every == 0
        layers = trainer.capture(batch, bins=_BINS) if sampled else []
        taken = trainer.step(measure=sampled, batch=batch)
        h.losses.append(float(taken.loss))
        h.lrs.append(trainer.lr)
        if sampled:
            h.samples.append(_sample(step, taken, layers, matrices, trainer.lr))
        if watch.judge(("loss", "sample")):
            return step + 1  # a fatal rule: the rest would read its consequences
    return config.training_steps


def _sample(
    step: int, taken: Step, layers: list[LayerRecord], matrices: set[str], lr: float | None
) -> Sample:
    grads = {n: g for n, g in taken.grads.items() if g is not None}
    ratios = {
        name: update / taken.weights[name]
        for name, update in taken.updates.items()
        if name in matrices and taken.weights.get(name)
    }
    if not ratios:  # names the backend does not share with its layers: every tensor
        ratios = {n: u / w for n, u in taken.updates.items() if (w := taken.weights.get(n))}
    finite = [g for g in grads.values() if math.isfinite(g)]
    return Sample(
        step=step,
        ratios=ratios,
        still=tuple(n for n, g in grads.items() if g > 0 and taken.updates.get(n) == 0),
        grad_norm=math.sqrt(sum(g * g for g in finite)) if grads else None,
        nonfinite_grads=tuple(n for n, g in grads.items() if not math.isfinite(g)),
        layers=tuple(layer_sample(r) for r in layers),
        lr=lr,
    )


def _result(watch: Watch, steps: int, optimizer: str, config: Config) -> CheckResult:
    results = watch.results("", config.training_every)
    worst: Status = "pass"
    for found in results:
        if found.status == "fail" or (found.status == "warn" and worst == "pass"):
            worst = found.status
    fired = [r for r in results if r.status in ("warn", "fail")]
    h = watch.history
    metrics: dict[str, Any] = {
        "steps": steps,
        "loss_first": h.losses[0] if h.losses else None,
        "loss_last": h.losses[-1] if h.losses else None,
    }
    metrics.update({f"{r.check}_step": r.metrics["step"] for r in fired})
    rows = [
        {"rule": r.check, "status": r.status, "step": r.metrics.get("step"), "message": r.message}
        for r in results
    ]
    evidence = {"rules": rows, "losses": list(h.losses), "optimizer": optimizer}
    if not fired:
        message = (
            f"{steps} steps of training with {optimizer} stayed healthy: the loss went from "
            f"{h.losses[0]:.4g} to {h.losses[-1]:.4g}, and no rule of the training monitor fired."
        )
        return CheckResult("training", "pass", message, metrics, evidence)
    first = min(fired, key=lambda r: (r.status != "fail", r.metrics["step"]))
    named = ", ".join(f"{r.check} (step {r.metrics['step']})" for r in fired)
    message = (
        f"{len(fired)} rule(s) of the training monitor fired in {steps} steps of training with "
        f"{optimizer}: {named}. {first.message}"
    )
    return CheckResult("training", worst, message, metrics, evidence, first.hint)
