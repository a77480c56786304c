"""``overfit_small``: a model that cannot overfit ~20 samples will not learn the data set.

Lecture 5: take a tiny subset, turn regularization off, and the model must reach ~100%
train accuracy and a loss near zero; when it does not, the shape of the loss curve says
why (diverged, flat, or stuck on a plateau).
"""

from __future__ import annotations

import math

from nndiag.config import Config
from nndiag.contract import Session
from nndiag.results import CheckResult

CHECK = "overfit_small"


def overfit_small(session: Session, config: Config) -> CheckResult:
    total = len(session.rows(config.overfit_samples))
    batch = session.rows(total)
    if session.has_regularization:
        session.set_regularization(0.0)
    classify = session.task.kind == "classification"
    losses: list[float] = []
    accuracies: list[float | None] = []
    outcome = "budget"
    with session.trainer(batch, default_lr=config.overfit_lr) as trainer:
        for _ in range(config.overfit_steps):
            step = trainer.step()
            loss, accuracy = step.loss, step.accuracy
            losses.append(loss)
            accuracies.append(accuracy)
            target = config.overfit_loss_ratio * abs(losses[0])
            if not math.isfinite(loss) or loss > config.overfit_diverge_factor * abs(losses[0]):
                outcome = "diverged"
                break
            if loss <= target and (not classify or accuracy == 1.0):
                outcome = "fitted"
                break
        unchanged = trainer.unchanged()
        optimizer = trainer.optimizer

    initial, final = losses[0], losses[-1]
    finite = [x for x in losses if math.isfinite(x)]
    best = min(finite) if finite else math.nan
    target = config.overfit_loss_ratio * abs(initial)
    accuracy = accuracies[-1]
    metrics = {
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
    }
    evidence = {"loss": losses, "accuracy": accuracies if classify else None, "target_loss": target}
    acc_text = f", accuracy {accuracy:.0%}" if accuracy is not None else ""
    frozen = ""
    if unchanged:
        shown = ", ".join(unchanged[:4]) + (" ..." if len(unchanged) > 4 else "")
        frozen = f" {len(unchanged)} trainable tensor(s) never changed: {shown}."

    if outcome == "fitted":
        message = (
            f"Fit {total} samples in {len(losses)} steps with {optimizer}: loss "
            f"{initial:.4g} -> {final:.3g}{acc_text}."
        )
        if unchanged:
            return CheckResult(
                CHECK,
                "warn",
                message + frozen,
                metrics,
                evidence,
                f"Those tensors get no gradient or no update: a cut graph "
                f"({session.words.cut_graph}), unused layers, or parameters missing from "
                "the optimizer.",
            )
        return CheckResult(CHECK, "pass", message, metrics, evidence)

    metrics["outcome"] = outcome
    head = f"Could not overfit {total} samples in {len(losses)} steps with {optimizer}"
    if outcome == "diverged":
        why = (
            "NaN/Inf"
            if not math.isfinite(final)
            else f"{final:.4g}, over {config.overfit_diverge_factor:g}x the start"
        )
        return CheckResult(
            CHECK,
            "fail",
            f"{head}: the loss diverged at step {len(losses)} ({initial:.4g} -> {why}).",
            metrics | {"cause": "lr_too_high"},
            evidence,
            "The learning rate is too high: divide it by 10.",
        )
    if best > config.overfit_flat_ratio * abs(initial):
        return CheckResult(
            CHECK,
            "fail",
            f"{head}: the loss barely moved ({initial:.4g} -> best {best:.4g})." + frozen,
            metrics | {"cause": "flat"},
            evidence,
            "Raise the learning rate (x10), and check that gradients reach the parameters: "
            f"no {session.words.cut_graph} in forward, all parameters trainable and given "
            "to the optimizer.",
        )
    # A plateau has stopped falling; a slow run still sheds a good fraction of its loss
    # over the last quarter of the budget.
    late = finite[3 * len(finite) // 4] if finite else math.nan
    still_falling = len(finite) >= 20 and final <= 0.85 * late
    if still_falling:
        return CheckResult(
            CHECK,
            "fail",
            f"{head}: the loss is still falling slowly "
            f"({initial:.4g} -> {final:.4g}{acc_text})." + frozen,
            metrics | {"cause": "slow"},
            evidence,
            "The learning rate is too low for this budget: raise it (x10) or "
            "give overfit_steps more steps.",
        )
    if classify and accuracy == 1.0:
        return CheckResult(
            CHECK,
            "fail",
            f"{head}: accuracy reached 100% but the loss is stuck at "
            f"{final:.4g} (target {target:.3g}).",
            metrics | {"cause": "plateau"},
            evidence,
            "The loss cannot reach 0 even on fitted data: it probably receives "
            "probabilities instead of logits (softmax applied twice), or it is the wrong loss "
            "for these targets.",
        )
    return CheckResult(
        CHECK,
        "fail",
        f"{head}: the loss is stuck at a plateau ({initial:.4g} -> "
        f"{final:.4g}{acc_text})." + frozen,
        metrics | {"cause": "plateau"},
        evidence,
        "A plateau: units initialized identically (constant init keeps them symmetric), too "
        "little capacity, saturated activations, or a loss that does not fit the targets.",
    )
