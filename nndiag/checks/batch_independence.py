"""``batch_independence``: the output of sample i never depends on input j != i.

A model that mixes the rows of a batch (a reduction or softmax over dim 0, a reshape or
``view`` across the batch dimension, a sequence model fed batch-first data it reads
time-first) trains on a signal it will not have at test time. Two kinds of evidence, both
in evaluation mode (where batch-statistics layers use their running statistics, so they
never raise a false alarm):

* gradient: a fixed random projection of output row i is back-propagated to the inputs;
  any gradient on another row is a dependence (exact zeros are expected);
* perturbation (inputs that cannot be differentiated, such as token ids, and to confirm a
  gradient finding): every other row is replaced by a copy of row i; output row i must not
  change.

A failure is shrunk with Hypothesis over subsets of the probed rows to a minimal batch that
still leaks, shown verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nndiag.config import Config
from nndiag.contract import Batch, Session
from nndiag.results import CheckResult

CHECK = "batch_independence"

_ADVICE = (
    "A model must treat each sample on its own: look for a reduction or normalization over "
    "the batch axis (a mean, std, softmax or sum over axis 0), a reshape/view/transpose that "
    "moves data across the batch axis, or a sequence layer reading batch-first inputs as "
    "time-first."
)


@dataclass(frozen=True)
class Leak:
    """Output ``row`` depends on input ``source``: ``leak`` against the row's own ``own``."""

    row: int
    source: int | None  # the input row; None when perturbation changed all others at once
    leak: float
    own: float
    method: str  # gradient or perturbation

    def sentence(self) -> str:
        if self.method == "gradient":
            own = f"{self.own:.3g}" if self.own else "0"
            return (
                f"Output row {self.row} depends on input row {self.source}: the gradient of "
                f"output row {self.row} (a random projection) reaches {self.leak:.3g} on row "
                f"{self.source}, against {own} on its own row."
            )
        start = f", starting with row {self.source}" if self.source is not None else ""
        return (
            f"Output row {self.row} changed by up to {self.leak:.3g} (its values reach "
            f"{self.own:.3g}) when only other rows of the batch were changed{start}."
        )


def probed_rows(n: int) -> list[int]:
    """First, middle and last row: a batch-mixing bug shows in all of them."""
    return sorted({0, n // 2, n - 1})


def by_gradient(session: Session, batch: Batch, config: Config) -> list[Leak] | None:
    """Leaks found by input gradients; None when the inputs cannot be differentiated."""
    leaks: list[Leak] = []
    for i in probed_rows(len(batch)):
        per_row = session.input_gradients(batch, i, mode="eval")
        if per_row is None:
            return None
        per_row = np.asarray(per_row, dtype=np.float64).copy()
        own = float(per_row[i])
        per_row[i] = 0.0
        j = int(per_row.argmax())
        leak = float(per_row[j])
        if leak > 0 and leak > config.independence_tolerance * own:
            leaks.append(Leak(i, j, leak, own, "gradient"))
    return leaks


def by_perturbation(session: Session, batch: Batch, config: Config) -> list[Leak]:
    """Leaks found by replacing every other row with a copy of the probed row."""
    n = len(batch)
    base = np.asarray(session.evaluate(batch, mode="eval", outputs=True).outputs)
    leaks: list[Leak] = []
    for i in probed_rows(n):
        changed = session.take(batch, [i] * n)
        after = np.asarray(session.evaluate(changed, mode="eval", outputs=True).outputs)
        diff = float(np.abs(after[i] - base[i]).max())
        size = float(np.abs(base[i]).max())
        if diff > config.independence_rtol * max(size, 1e-12):
            leaks.append(Leak(i, None, diff, size, "perturbation"))
    return leaks


def _measure(session: Session, batch: Batch, config: Config) -> tuple[list[Leak], list[Leak]]:
    """Confirmed leaks, and gradient leaks that perturbation did not confirm."""
    found = by_gradient(session, batch, config)
    if found is None or found:
        # No gradients to read, or a finding to confirm by an independent measurement.
        perturbed = by_perturbation(session, batch, config)
        if found is None:
            return perturbed, []
        confirmed = [x for x in found if _confirmed(x, perturbed)]
        return confirmed, [x for x in found if not _confirmed(x, perturbed)]
    return [], []


def _leaks(session: Session, batch: Batch, config: Config) -> list[Leak]:
    return _measure(session, batch, config)[0]


def _confirmed(leak: Leak, perturbed: list[Leak]) -> bool:
    return any(p.row == leak.row for p in perturbed)


def shrink(session: Session, batch: Batch, config: Config) -> list[int] | None:
    """The smallest subset of the batch's rows (a batch of its own) that still leaks, found
    and shrunk by Hypothesis with the run's seed; None when no subset was found."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    n = len(batch)
    found: dict[str, list[int]] = {}

    class _Leaks(AssertionError):
        pass

    def probe(rows: list[int]) -> None:
        sub = session.take(batch, rows)
        if _leaks(session, sub, config):
            found["rows"] = list(rows)
            raise _Leaks()

    run = settings(
        max_examples=config.independence_examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        verbosity=Verbosity.quiet,
        print_blob=False,
    )(
        hypothesis_seed(config.seed)(
            given(st.lists(st.integers(0, n - 1), min_size=2, max_size=n, unique=True))(probe)
        )
    )
    try:
        run()
    except _Leaks:
        pass
    except Exception:  # Hypothesis gave up: the full batch stands as the counterexample
        return None
    return found.get("rows")


def batch_independence(session: Session, config: Config) -> CheckResult:
    """Fail when an output row depends on another input row (evaluation mode)."""
    batch = session.rows(config.independence_rows)
    n = len(batch)
    norms = session.batch_statistics_layers()
    mode_note = f"checked in {session.words.eval_mode}"
    if norms:
        shown = ", ".join(norms[:3]) + (" ..." if len(norms) > 3 else "")
        mode_note += (
            f", where the batch-statistics layers ({shown}) use running statistics: in "
            "training mode they mix the rows of a batch by design"
        )
    metrics: dict[str, Any] = {
        "rows": n,
        "probed_rows": probed_rows(n) if n > 1 else [],
        "tolerance": config.independence_tolerance,
        "perturbation_rtol": config.independence_rtol,
        "seed": config.seed,
    }
    if n < 2:
        return CheckResult(CHECK, "skip", "The data holds one sample: no other row to leak.")
    leaks, unconfirmed = _measure(session, batch, config)
    if not leaks and unconfirmed:
        weak = unconfirmed[0]
        metrics.update(row=weak.row, source_row=weak.source, leak=weak.leak, own=weak.own)
        return CheckResult(
            CHECK,
            "warn",
            f"{weak.sentence()} Replacing the other rows moved output row {weak.row} by less "
            f"than {config.independence_rtol:g} of its size, so the dependence is weak; "
            f"{mode_note}.",
            metrics,
            hint=_ADVICE,
        )
    if not leaks:
        return CheckResult(
            CHECK,
            "pass",
            f"No output row depended on another input row in a batch of {n} (rows "
            f"{', '.join(map(str, probed_rows(n)))} probed); {mode_note}.",
            metrics,
        )
    pairs = [[leak.row, leak.source] for leak in leaks]
    first = leaks[0]
    metrics.update(
        row=first.row,
        source_row=first.source,
        leak=first.leak,
        own=first.own,
        method=first.method,
        leaking_pairs=pairs,
    )
    evidence: dict[str, Any] = {"pairs": [{"row": r, "source": s} for r, s in pairs]}
    minimal = shrink(session, batch, config)
    where = ""
    if minimal is not None:
        counterexample = f"rows {minimal} of the data, as a batch of {len(minimal)}"
        evidence["counterexample"] = counterexample
        metrics["minimal_batch"] = len(minimal)
        where = f" Minimal counterexample: {counterexample}."
    shown_pairs = ", ".join(f"{r}<-{'others' if s is None else s}" for r, s in pairs)
    return CheckResult(
        CHECK,
        "fail",
        f"{first.sentence()} Leaking (output<-input) rows: {shown_pairs}.{where} "
        f"Batch of {n} rows, {mode_note}.",
        metrics,
        evidence,
        _ADVICE,
    )
