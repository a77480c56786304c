"""``numerics``: no NaN/Inf in forward, loss or backward, and a deterministic eval mode.

A NaN is only useful if you know where it was made: the check names the first operation
that turned finite values into NaN/Inf (the producer, not the layers that passed it on —
a ``log(softmax(x))`` that underflows is named at the log), in training mode on the data
and in evaluation mode. Then the same batch goes through evaluation mode twice with
different random seeds: outputs that differ mean randomness left on at test time (a
dropout called with ``training=True``, noise added in forward).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nndiag.config import Config
from nndiag.contract import NonFinite, Session
from nndiag.results import CheckResult

CHECK = "numerics"

_ADVICE = {
    "forward": "Guard the operation: add an epsilon to log, sqrt and divisions, clamp what "
    "goes into exp, and use log_softmax / logsumexp rather than exp followed by log.",
    "loss": "The loss is not finite on finite outputs: compute it from logits with a "
    "numerically stable form (log_softmax, logsumexp), not from probabilities.",
    "backward": "The gradient of that operation is not finite where its value is (sqrt or "
    "norm at 0, pow with a fractional exponent at 0, a division by something near 0): "
    "add an epsilon inside it.",
}


def _where(found: NonFinite) -> str:
    share = f" ({found.count} of {found.total} values)" if found.total else ""
    stage = {"forward": "forward pass", "loss": "loss", "backward": "backward pass"}
    return f"{found.op} in {found.where}{share}, in the {stage[found.stage]}"


def numerics(session: Session, config: Config) -> CheckResult:
    """Fail at the first NaN/Inf producer, or on evaluation outputs that are random."""
    batch = session.rows(config.numerics_rows)
    metrics: dict[str, Any] = {
        "rows": len(batch),
        "eval_rtol": config.numerics_eval_rtol,
        "seed": config.seed,
    }
    for mode in ("train", "eval"):
        found = session.find_nonfinite(batch, mode=mode)
        if found is not None:
            metrics.update(
                stage=found.stage,
                producer=found.where,
                op=found.op,
                mode=mode,
                nonfinite=found.count,
                values=found.total,
            )
            return CheckResult(
                CHECK,
                "fail",
                f"NaN/Inf first produced by {_where(found)} ({mode} mode, batch of {len(batch)}).",
                metrics,
                {"producer": {"stage": found.stage, "where": found.where, "op": found.op}},
                _ADVICE[found.stage],
            )
    first = np.asarray(session.evaluate(batch, mode="eval", outputs=True).outputs)
    again = np.asarray(
        session.evaluate(batch, mode="eval", outputs=True, seed=config.seed + 1).outputs
    )
    diff = float(np.abs(first.astype(np.float64) - again).max()) if first.size else 0.0
    scale = float(np.abs(first).max()) if first.size else 0.0
    metrics.update(eval_max_difference=diff, output_scale=scale)
    random = diff > config.numerics_eval_rtol * max(scale, 1e-12)
    if random and session.stochastic_eval:
        metrics["stochastic_eval"] = True
        return CheckResult(
            CHECK,
            "pass",
            f"Forward, loss and backward stay finite on a batch of {len(batch)} in train and "
            f"eval mode; two {session.words.eval_mode} passes differ by up to {diff:.3g} "
            f"(outputs reach {scale:.3g}), as the subject declares (stochastic_eval=True): "
            "reported, not judged.",
            metrics,
        )
    if random:
        return CheckResult(
            CHECK,
            "fail",
            f"Two forward passes of the same batch in {session.words.eval_mode} differ by up "
            f"to {diff:.3g} (outputs reach {scale:.3g}): randomness is left on at test time.",
            metrics,
            hint="Make random layers follow the model's mode: dropout or noise applied "
            "unconditionally (e.g. a dropout called with training=True) keeps drawing in "
            "evaluation. A model that samples in evaluation by design (a VAE's "
            "reparameterization) says so with Subject(..., stochastic_eval=True).",
        )
    return CheckResult(
        CHECK,
        "pass",
        f"Forward, loss and backward stay finite on a batch of {len(batch)} in train and "
        f"eval mode, and two {session.words.eval_mode} passes agree (max difference "
        f"{diff:.3g}).",
        metrics,
    )
