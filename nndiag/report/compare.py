"""A report against an earlier one: what newly fails, what was fixed, which metrics moved.

``nndiag report new.json --against old.json`` puts this comparison at the top of the page.
Results are matched by (subject, check); stale results (kept from earlier runs) are left
out on both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nndiag.results import CheckResult, Report

__all__ = ["Change", "Comparison", "compare"]

# States that fail a run (an expected failure that passed counts: pytest fails it).
_FAILING = frozenset({"fail", "error", "xpass"})
# Relative change below which a metric is "the same": run-to-run float noise.
_RELATIVE = 0.01
_SHOWN = 40  # metric changes listed, largest first


@dataclass(frozen=True)
class Change:
    """One (subject, check): its state before and now, and what moved."""

    subject: str
    check: str
    before: str
    after: str
    anchor: str
    metric: str = ""
    old: str = ""
    new: str = ""


@dataclass
class Comparison:
    """What differs between the earlier report and this one."""

    against: str  # when the earlier report was written
    new_failures: list[Change] = field(default_factory=list)
    fixed: list[Change] = field(default_factory=list)
    other: list[Change] = field(default_factory=list)  # other changes of state
    added: list[Change] = field(default_factory=list)
    removed: list[Change] = field(default_factory=list)
    metrics: list[Change] = field(default_factory=list)
    more_metrics: int = 0

    @property
    def empty(self) -> bool:
        return not (
            self.new_failures
            or self.fixed
            or self.other
            or self.added
            or self.removed
            or self.metrics
        )


def compare(report: Report, earlier: Report) -> Comparison:
    """``report`` against ``earlier``, matched by (subject, check)."""
    from nndiag.report import format_value

    now = {(r.subject, r.check): r for r in report.results if not r.stale}
    then = {(r.subject, r.check): r for r in earlier.results if not r.stale}
    found = Comparison(against=str(earlier.meta.get("created") or "an earlier run"))
    moved: list[tuple[float, Change]] = []
    for key, result in now.items():
        old = then.get(key)
        if old is None:
            found.added.append(_change(result, "\u2014", result.state))
            continue
        change = _change(result, old.state, result.state)
        if result.state in _FAILING and old.state not in _FAILING:
            found.new_failures.append(change)
        elif old.state in _FAILING and result.state not in _FAILING:
            found.fixed.append(change)
        elif old.state != result.state:
            found.other.append(change)
        for name, value in result.metrics.items():
            before = old.metrics.get(name)
            size = _moved(before, value)
            if size is not None:
                moved.append(
                    (
                        size,
                        _change(
                            result,
                            old.state,
                            result.state,
                            metric=str(name),
                            old=format_value(before, limit=60),
                            new=format_value(value, limit=60),
                        ),
                    )
                )
    for key, old in then.items():
        if key not in now:
            found.removed.append(_change(old, old.state, "\u2014"))
    moved.sort(key=lambda item: -item[0])
    found.metrics = [change for _, change in moved[:_SHOWN]]
    found.more_metrics = max(0, len(moved) - _SHOWN)
    return found


def _change(result: CheckResult, before: str, after: str, **metric: str) -> Change:
    return Change(result.subject, result.check, before, after, result.anchor, **metric)


def _moved(before: Any, after: Any) -> float | None:
    """How far a number moved (relative, inf for a change to or from non-finite), or None
    when it did not move beyond float noise or is not a number on both sides."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (before, after))
    if not numbers:
        return None if before == after or before is None else math.inf
    if math.isnan(before) and math.isnan(after):
        return None
    if not (math.isfinite(before) and math.isfinite(after)):
        return None if before == after else math.inf
    scale = max(abs(before), abs(after))
    if scale == 0:
        return None
    size = abs(after - before) / scale
    return size if size > _RELATIVE else None
