"""``batchnorm``: batch-statistics layers behave as training and evaluation need.

A batch-normalization layer normalizes with the statistics of the batch in train mode and
blends them into running statistics, which it uses in evaluation mode. Four measurements,
on nndiag's private copies:

* movement: one train-mode forward must change every layer's running statistics (a
  momentum of 0 leaves them stale: evaluation then normalizes with the statistics they
  started from), and an eval-mode forward must leave them as they are;
* evaluation: two eval-mode forwards of one batch agree, and an output row does not move
  when the other rows of its batch change (no batch statistics in evaluation mode);
* gap: with the running statistics warmed on the stored batches (each weighing the same),
  the mean train-mode and eval-mode losses of those batches agree; far apart (a warning),
  the batches' statistics are not representative of the data (batches of one class, tiny
  batches). With one stored batch the gap is measured but not judged: the statistics are
  that batch's own;
* batches of one sample: in train mode each sample is normalized by its own statistics.

A finding that fails is measured a second time, on another batch or batch composition,
before it is reported.

Cost: forward passes without gradients only: 4, plus 3 per stored batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nndiag.config import Config
from nndiag.contract import Batch, Mode, NormLayer, Session
from nndiag.results import CheckResult, Status

CHECK = "batchnorm"

_ORDER = {"pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class Finding:
    status: Status  # warn or fail
    cause: str
    sentence: str
    hint: str


def _named(names: Sequence[str], total: int) -> str:
    shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    return f"{len(names)} of {total} layers ({shown})"


def change(before: tuple[Any, Any], after: tuple[Any, Any]) -> float:
    """Largest change of a running mean or variance, relative to its size; exactly 0 when
    both are unchanged. A statistic made by the forward counts from the zeros it starts
    at (CS231n)."""
    worst = 0.0
    for b, a in zip(before, after):
        if a is None and b is None:
            continue
        a = np.zeros_like(b) if a is None else np.asarray(a, dtype=np.float64)
        b = np.zeros_like(a) if b is None else np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            return float("inf")
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        if diff:
            size = max(float(np.abs(b).max()), float(np.abs(a).max()))
            worst = max(worst, diff / size)
    return worst


def _moves(session: Session, batch: Batch, mode: Mode) -> tuple[dict[str, float], Any]:
    """Per tracking layer, how much one forward in ``mode`` changed its running statistics,
    and the outputs of that forward (eval mode only)."""
    before = session.running_statistics() or {}
    evaluation = session.evaluate(batch, mode=mode, outputs=mode == "eval")
    after = session.running_statistics() or {}
    return {name: change(before[name], after[name]) for name in after if name in before}, (
        evaluation.outputs
    )


def _relative(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    size = max(float(np.abs(b).max()) if b.size else 0.0, 1e-12)
    return float(np.abs(a - b).max()) / size if a.size else 0.0


def _dependence(session: Session, batch: Batch, base: Any, rows: list[int]) -> float:
    """How far eval-mode output rows ``rows`` move when the rest of the batch is replaced
    by copies of them (the batch's statistics change; a row's own input does not)."""
    changed = session.take(batch, rows * 2)
    out = np.asarray(session.evaluate(changed, mode="eval", outputs=True).outputs)
    return _relative(out[: len(rows)], np.asarray(base)[rows])


def _gap(
    session: Session, warm: Sequence[Batch], judged: Sequence[Batch]
) -> tuple[float, float, float]:
    """Train-vs-eval gap of the mean loss over ``judged`` with running statistics warmed
    on ``warm``, relative to the larger loss: (gap, train loss, eval loss). Evaluation
    first: a train-mode forward moves the statistics (train mode does not read them)."""
    session.warm(warm)
    evaluated = float(np.mean([session.evaluate(b, mode="eval").loss for b in judged]))
    trained = float(np.mean([session.evaluate(b, mode="train").loss for b in judged]))
    gap = abs(evaluated - trained) / max(abs(trained), abs(evaluated), 1e-12)
    return float(gap), trained, evaluated


def batchnorm(session: Session, config: Config) -> CheckResult:
    """Fail on stale running statistics or batch statistics in evaluation mode; warn on a
    large train-vs-eval gap, batches of one sample, layers without running statistics and
    layers the forward never runs."""
    stats = session.running_statistics()
    if stats is None:
        return CheckResult(
            CHECK,
            "skip",
            f"The {session.words.framework} backend runs the model as a pure function, with "
            "no train/eval mode and no running statistics to update: nothing to check.",
        )
    layers = session.norm_layers()
    if not layers:
        return CheckResult(
            CHECK, "skip", "No batch-statistics (batch normalization) layers: nothing to check."
        )
    if session.has_regularization:
        session.set_regularization(0.0)  # the gap compares data losses
    batches = session.stored_batches()
    sizes = [len(b) for b in batches]
    usable = [b for b in batches if len(b) > 1] or batches
    batch = usable[0]
    n = len(batch)
    total = len(layers)
    by_name = {layer.name: layer for layer in layers}
    tracked = [layer.name for layer in layers if layer.tracks]
    untracked = [layer.name for layer in layers if not layer.tracks]
    frozen = [layer.name for layer in layers if layer.frozen]
    rtol = config.batchnorm_eval_rtol
    eval_mode = session.words.eval_mode
    findings: list[Finding] = []

    # 1. Running statistics move in train mode and not in eval mode.
    train_moves, _ = _moves(session, batch, "train")
    eval_moves, first = _moves(session, batch, "eval")

    # 2. Evaluation mode is deterministic and independent of the batch's other rows
    # (measured before any other train-mode forward moves the statistics again).
    second = session.evaluate(batch, mode="eval", outputs=True).outputs
    nondeterminism = _relative(second, first)
    if nondeterminism > rtol:
        third = session.evaluate(batch, mode="eval", outputs=True).outputs
        nondeterminism = min(nondeterminism, _relative(third, first))
    dependence = 0.0
    if n > 1:
        half = list(range(max(1, n // 2)))
        dependence = _dependence(session, batch, first, half)
        if dependence > rtol:  # the other half of the rows, in a composition of their own
            rest = list(range(len(half), n))
            dependence = min(dependence, _dependence(session, batch, first, rest))

    # Findings of 1, measured again on another batch.
    still = [name for name in tracked if train_moves.get(name, 0.0) == 0.0]
    reversed_batch = session.take(batch, list(range(n))[::-1])
    if still:  # a layer the forward skipped once stays still
        other = usable[1] if len(usable) > 1 else reversed_batch
        again, _ = _moves(session, other, "train")
        still = [name for name in still if again.get(name, 0.0) == 0.0]
    in_eval = [name for name in tracked if eval_moves.get(name, 0.0) > 0.0]
    if in_eval:
        again, _ = _moves(session, reversed_batch, "eval")
        in_eval = [name for name in in_eval if again.get(name, 0.0) > 0.0]

    # 3. Train-vs-eval gap with warmed running statistics.
    # With one stored batch the running statistics are that batch's own, and the gap only
    # shows the running variance's n/(n-1) correction: measured, not judged.
    gap = trained = evaluated = None
    judged = len(usable) > 1
    if tracked:
        gap, trained, evaluated = _gap(session, usable, usable)

    # Verdicts, with the cause the evidence shows.
    stale = [name for name in still if by_name[name].momentum == 0]
    skipped = [name for name in still if by_name[name].momentum != 0]
    if stale:
        findings.append(
            Finding(
                "fail",
                "stale",
                f"Running statistics of {_named(stale, total)} never moved in train mode: "
                f"their momentum ({by_name[stale[0]].setting or 'momentum 0'}) blends none of "
                "a batch's statistics in, so evaluation normalizes with the statistics they "
                "started from.",
                "Set a momentum that lets batches in (0.1 of each batch is the usual "
                "default; a cumulative average works too), or training never updates these "
                "layers' running statistics.",
            )
        )
    eval_dependent = dependence > rtol or nondeterminism > rtol
    how = (
        f"an output row moved by {dependence:.3g} of its size when the other rows of its "
        f"batch changed"
        if dependence > rtol
        else f"two passes of the same batch differ by {nondeterminism:.3g} of the outputs' size"
    )
    if in_eval:
        findings.append(
            Finding(
                "fail",
                "updated_in_eval",
                f"Running statistics of {_named(in_eval, total)} moved in {eval_mode}: the "
                f"forward normalizes with batch statistics there ({how})."
                if eval_dependent
                else f"Running statistics of {_named(in_eval, total)} moved in {eval_mode}.",
                "Evaluation must use the running statistics: look for a normalization "
                "called with training=True whatever the mode, or a layer switched back to "
                "training inside forward.",
            )
        )
    elif skipped and eval_dependent:
        findings.append(
            Finding(
                "fail",
                "bypassed",
                f"Running statistics of {_named(skipped, total)} never moved in train mode "
                f"although they blend batches in ({by_name[skipped[0]].setting}), and in "
                f"{eval_mode} {how}: the forward "
                "normalizes with batch statistics of its own instead of the layers' running "
                "ones.",
                "Call the layers themselves in forward (or pass their running statistics "
                "and the mode to the functional normalization).",
            )
        )
    elif skipped:
        findings.append(
            Finding(
                "warn",
                "never_updated",
                f"Running statistics of {_named(skipped, total)} never moved in train mode "
                f"although they blend batches in ({by_name[skipped[0]].setting}): the forward "
                "does not run these layers.",
                "Remove layers forward does not use, or call them where they belong.",
            )
        )
    if eval_dependent and not in_eval and not skipped:
        if untracked:
            findings.append(
                Finding(
                    "warn",
                    "no_running_statistics",
                    f"{_named(untracked, total).capitalize()} keep no running statistics, so "
                    f"in {eval_mode} they normalize with the batch's: {how}.",
                    "Predictions of a sample then depend on its batch mates (and a batch of "
                    "one normalizes to zero): keep running statistics unless this is "
                    "intended.",
                )
            )
        else:
            findings.append(
                Finding(
                    "fail",
                    "batch_dependent",
                    f"In {eval_mode} {how}, with every batch-statistics layer on its running "
                    "statistics.",
                    "Something else mixes the rows or draws randomness in evaluation: see "
                    "the batch_independence and numerics checks.",
                )
            )
    if judged and gap is not None and gap > config.batchnorm_gap_warn:
        findings.append(
            Finding(
                "warn",
                "train_eval_gap",
                f"With running statistics averaged over {len(usable)} batches, the mean "
                f"train-mode and eval-mode losses of those batches differ by {gap:.1%} "
                f"({trained:.4g} against {evaluated:.4g}; "
                f"warn above {config.batchnorm_gap_warn:.0%}).",
                "The batches' statistics are far from the data's: shuffle the data (a "
                "batch of one class or one source normalizes differently) and use larger "
                "batches.",
            )
        )
    ones = [i for i, size in enumerate(sizes) if size == 1]
    if ones:
        findings.append(
            Finding(
                "warn",
                "batch_of_one",
                f"{len(ones)} of {len(sizes)} stored batches hold 1 sample: in train mode a "
                "batch-statistics layer then normalizes each sample by its own statistics "
                "(a layer without spatial positions refuses it).",
                "Train with batches of several samples (drop_last=True drops a final batch "
                "of one), or use a normalization over features (layer or group "
                "normalization).",
            )
        )

    status: Status = max((f.status for f in findings), key=_ORDER.__getitem__, default="pass")
    momenta = sorted({_momentum(layer) for layer in layers if layer.tracks})
    metrics: dict[str, Any] = {
        "layers": total,
        "tracking": len(tracked),
        "momentum": ", ".join(momenta),
        "stale_layers": stale,
        "never_updated_layers": skipped,
        "updated_in_eval_layers": in_eval,
        "untracked_layers": untracked,
        "frozen_layers": frozen,
        "min_train_change": min(
            (train_moves[x] for x in tracked if x in train_moves), default=None
        ),
        "max_eval_change": max(eval_moves.values(), default=None),
        "eval_batch_dependence": dependence,
        "eval_nondeterminism": nondeterminism,
        "train_eval_gap": gap,
        "train_loss": trained,
        "eval_loss": evaluated,
        "warm_batches": len(usable),
        "gap_judged": judged,
        "batch_sizes": sizes,
        "eval_rtol": rtol,
        "gap_warn": config.batchnorm_gap_warn,
    }
    worst = [f for f in findings if f.status == status]
    if worst:
        metrics["cause"] = worst[0].cause
    metrics["causes"] = [f.cause for f in findings]
    evidence: dict[str, Any] = {
        "layers": [
            {
                "name": layer.name,
                "momentum": _momentum(layer),
                "train_change": train_moves.get(layer.name),
                "eval_change": eval_moves.get(layer.name),
                "tracks": layer.tracks,
            }
            for layer in layers
        ],
        "gap": gap,
        "gap_warn": config.batchnorm_gap_warn,
    }
    note = ""
    if frozen:
        note = (
            f" {_named(frozen, total).capitalize()} were in {eval_mode} while the model "
            "trains (frozen statistics, the user's choice): checked as training layers."
        )
    if not findings:
        settings = ", ".join(sorted({layer.setting for layer in layers if layer.tracks}))
        gap_text = ""
        if gap is not None and judged:
            gap_text = (
                f"; with running statistics averaged over {len(usable)} batches, the mean "
                f"train and eval losses of those batches differ by {gap:.2%} (warn above "
                f"{config.batchnorm_gap_warn:.0%})"
            )
        elif gap is not None:
            gap_text = (
                f"; train and eval losses differ by {gap:.2%} with the statistics of the "
                "one stored batch (not judged: pass several batches to compare them)"
            )
        message = (
            f"Running statistics of all {len(tracked)} tracking layers moved in train mode "
            f"({settings}) and none in {eval_mode}; eval outputs repeat (within "
            f"{nondeterminism:.2g}) and no row moved (at most {dependence:.2g} of its size, "
            f"allowed {rtol:g}) when the other rows of a batch of {n} changed{gap_text}.{note}"
        )
        return CheckResult(CHECK, "pass", message, metrics, evidence)
    shown = sorted(findings, key=lambda f: -_ORDER[f.status])
    message = " ".join(f.sentence for f in shown) + note
    return CheckResult(CHECK, status, message, metrics, evidence, shown[0].hint)


def _momentum(layer: NormLayer) -> str:
    return "cumulative" if layer.momentum is None else f"{layer.momentum:g}"
