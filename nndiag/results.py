"""Check results and reports: plain data, JSON-safe, the source of truth for every view.

A report serializes to a versioned JSON document (``SCHEMA``); the HTML page and the
terminal summary are drawn from that document, never from live objects.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "FAILING_OUTCOMES",
    "OUTCOMES",
    "SCHEMA",
    "STATES",
    "STATUSES",
    "CheckResult",
    "Cost",
    "Report",
    "load_report",
]

SCHEMA = "nndiag.report/1"
Status = Literal["pass", "warn", "fail", "skip", "error"]
STATUSES: tuple[Status, ...] = ("pass", "warn", "fail", "skip", "error")
# What pytest made of a check's item (``pytest --nndiag`` only): its outcome words, and a
# strict expected failure that passed (pytest fails the test, "[XPASS(strict)]").
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "xpassed-strict")
FAILING_OUTCOMES = frozenset({"failed", "error", "xpassed-strict"})
# What a reader sees: the check's status, or the expectation pytest judged it against.
STATES = (*STATUSES, "xfail", "xpass")
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True)
class Cost:
    """What a check spent: model forward passes, backward passes and wall-clock seconds."""

    forward: int = 0
    backward: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one check on one subject.

    Attributes:
        check: Stable check id, e.g. ``"dead_neurons"``.
        status: One of ``pass``, ``warn``, ``fail``, ``skip``, ``error``.
        message: One-paragraph summary a person reads first.
        metrics: Scalars behind the verdict (measured values and thresholds).
        evidence: Series for plots (per-layer statistics, loss curves, ...).
        hint: The recommended next step, when there is one.
        cost: Passes and seconds spent.
        subject: Name of the subject the check ran on.
        outcome: pytest's verdict on the check's test under ``pytest --nndiag`` (one of
            ``OUTCOMES``: a ``fail`` expected by ``xfail`` is ``xfailed``, a ``warn`` under
            ``--nndiag-strict`` is ``failed``); None outside pytest.
        stale: Kept from an earlier run that this (partial) run did not repeat.
        rerun: The shell command that runs the check again from where its run was
            launched, set by ``pytest --nndiag``; None outside pytest.
    """

    check: str
    status: Status
    message: str
    metrics: Mapping[str, Any] = field(default_factory=dict)
    evidence: Mapping[str, Any] = field(default_factory=dict)
    hint: str | None = None
    cost: Cost = field(default_factory=Cost)
    subject: str = ""
    outcome: str | None = None
    stale: bool = False
    rerun: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES} or None, got {self.outcome!r}")

    @property
    def ok(self) -> bool:
        """pytest's verdict where pytest ran the check, else True unless the status is
        ``fail`` or ``error``."""
        if self.outcome is not None:
            return self.outcome not in FAILING_OUTCOMES
        return self.status not in ("fail", "error")

    @property
    def anchor(self) -> str:
        """The result's id in the HTML page (``report.html#mlp::initial_loss``), as in its
        pytest node id."""
        return "::".join("_".join(part.split()) for part in (self.subject, self.check) if part)

    @property
    def state(self) -> str:
        """The status a reader sees: ``xfail`` for an expected failure, ``xpass`` for an
        expected failure that passed, else :attr:`status`."""
        if self.outcome == "xfailed":
            return "xfail"
        if self.outcome in ("xpassed", "xpassed-strict"):
            return "xpass"
        return self.status

    def summary(self) -> str:
        """``subject::check status: message`` plus the hint, for terminals and exceptions."""
        head = f"{self.subject}::{self.check}" if self.subject else self.check
        text = f"{head} {self.status}: {self.message}"
        return f"{text}\nHint: {self.hint}" if self.hint else text

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "subject": self.subject,
            "check": self.check,
            "status": self.status,
            "message": self.message,
            "hint": self.hint,
            "metrics": dict(self.metrics),
            "evidence": dict(self.evidence),
            "cost": {
                "forward": self.cost.forward,
                "backward": self.cost.backward,
                "seconds": self.cost.seconds,
            },
        }
        # Present only where they apply: diagnose()'s documents stay as they were.
        if self.outcome is not None:
            data["outcome"] = self.outcome
            data["state"] = self.state
        if self.stale:
            data["stale"] = True
        if self.rerun is not None:
            data["rerun"] = self.rerun
        return _jsonable(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        return cls(
            check=data["check"],
            status=data["status"],
            message=data["message"],
            metrics=_restore(data.get("metrics", {})),
            evidence=_restore(data.get("evidence", {})),
            hint=data.get("hint"),
            cost=Cost(**data.get("cost", {})),
            subject=data.get("subject", ""),
            outcome=data.get("outcome"),
            stale=bool(data.get("stale", False)),
            rerun=data.get("rerun"),
        )


def environment(seed: int | None = None) -> dict[str, Any]:
    """Versions and settings recorded in a report's header, without importing frameworks."""
    from nndiag import __version__

    frameworks = {}
    for name in ("torch", "jax", "numpy"):
        module = sys.modules.get(name)
        if module is not None:
            frameworks[name] = getattr(module, "__version__", "?")
    return {
        "nndiag": __version__,
        "python": platform.python_version(),
        "frameworks": frameworks,
        "seed": seed,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


class Report:
    """The results of one or more subjects' checks.

    ``report["dead_neurons"]`` returns that check's result when the report holds one
    subject; ``report["mlp", "dead_neurons"]`` picks a subject explicitly.
    """

    def __init__(self, results: Iterable[CheckResult] = (), meta: Mapping[str, Any] | None = None):
        self.results: list[CheckResult] = list(results)
        self.meta: dict[str, Any] = dict(meta) if meta is not None else environment()

    @property
    def passed(self) -> bool:
        """True iff no result of this run failed: none is ``fail`` or ``error``, or, for a
        report written by ``pytest --nndiag``, pytest failed none of the checks' tests
        (stale results, kept from earlier runs, do not count)."""
        return all(r.ok for r in self.results if not r.stale)

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(r.subject for r in self.results))

    @property
    def checks(self) -> list[str]:
        return list(dict.fromkeys(r.check for r in self.results))

    def __iter__(self) -> Iterator[CheckResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, key: str | tuple[str, str]) -> CheckResult:
        subject, check = key if isinstance(key, tuple) else (None, key)
        found = [r for r in self.results if r.check == check and subject in (None, r.subject)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise KeyError(f"no result for {key!r}; checks in this report: {self.checks}")
        raise KeyError(
            f"{len(found)} subjects ran {check!r}; pick one with report[subject, {check!r}] "
            f"(subjects: {self.subjects})"
        )

    def __repr__(self) -> str:
        counts = {s: sum(r.state == s for r in self.results) for s in STATES}
        shown = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        return f"<Report {len(self.subjects)} subject(s): {shown or 'empty'}>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "meta": _jsonable(self.meta),
            "passed": self.passed,
            "results": [r.to_dict() for r in self.results],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        schema = data.get("schema") if isinstance(data, Mapping) else None
        if schema != SCHEMA:
            raise ValueError(f"not an nndiag report: schema {schema!r}, expected {SCHEMA!r}")
        return cls([CheckResult.from_dict(r) for r in data["results"]], meta=data.get("meta", {}))

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON (creating parent folders) and return the path."""
        from nndiag.files import write_atomic

        return write_atomic(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))

    def to_html(self, path: str | os.PathLike[str]) -> Path:
        """Write the self-contained HTML page for this report and return the path."""
        from nndiag.report import write_html

        return write_html(self, path)


def load_report(path: str | os.PathLike[str]) -> Report:
    """Read a report written by :meth:`Report.to_json`."""
    return Report.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become the strings JSON lacks a literal for."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return _jsonable(value.tolist())
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    return str(value)


def _restore(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    return value
