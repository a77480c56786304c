"""What a search returns: every trial, each stage's ranges and why, the best found.

JSON-safe (``to_dict``/``from_dict``) so a saved search re-renders; imports no optimizer
library.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["SCHEMA", "SearchResult", "StageRange", "TrialRecord", "load_search"]

SCHEMA = "nndiag.search/1"
TrialState = Literal["complete", "pruned", "fail"]


@dataclass(frozen=True)
class TrialRecord:
    """One trial.

    ``value`` is the validation metric (accuracy for classification, loss for regression)
    of a complete trial, or the last one measured before a trial was pruned; ``reason``
    says why a trial was pruned or failed ("loss 3.4× its start at step 12"); ``losses``
    is its training loss per step (every ``loss_every``-th step for long trials),
    ``checkpoints`` its ``(step, value)`` validation measurements and ``passes`` its cost in
    forward and backward passes of the model.
    """

    number: int
    stage: int
    params: dict[str, Any]
    state: TrialState
    value: float | None = None
    reason: str = ""
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    loss_every: int = 1
    checkpoints: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    passes: tuple[int, int] = (0, 0)  # forward and backward passes of the model

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        values = dict(data)
        values["checkpoints"] = [(int(s), float(v)) for s, v in values.get("checkpoints", [])]
        values["passes"] = tuple(int(n) for n in values.get("passes", (0, 0)))
        return cls(**values)


@dataclass(frozen=True)
class StageRange:
    """The space one stage searched (``Param.describe()`` per name), its budget and why."""

    stage: int
    trials: int
    steps: int
    params: dict[str, dict[str, Any]]
    why: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageRange:
        return cls(**dict(data))


@dataclass(frozen=True)
class SearchResult:
    """A finished (or resumed and finished) search.

    Attributes:
        best_params: The params of the best complete trial (empty when none completed).
        best_value: Its validation metric, or None.
        metric: What ``value`` measures, e.g. "validation accuracy".
        direction: "maximize" or "minimize".
        trials: Every trial of every stage, in (stage, number) order.
        ranges: Per stage, the range searched and why.
        validation: Which data the metric is measured on.
        storage: The Optuna storage URL (a password masked).
        study: The study name; stage ``k`` is the Optuna study ``{study}.stage{k}``.
        command: The command that resumes or extends this search.
    """

    best_params: dict[str, Any]
    best_value: float | None
    metric: str
    direction: Literal["maximize", "minimize"]
    trials: list[TrialRecord]
    ranges: list[StageRange]
    validation: str
    storage: str
    study: str
    command: str
    meta: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Trials per state."""
        counts = {"complete": 0, "pruned": 0, "fail": 0}
        for trial in self.trials:
            counts[trial.state] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema"] = SCHEMA
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchResult:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not an nndiag search result (schema {data.get('schema')!r})")
        values = {k: v for k, v in data.items() if k != "schema"}
        values["trials"] = [TrialRecord.from_dict(t) for t in values["trials"]]
        values["ranges"] = [StageRange.from_dict(r) for r in values["ranges"]]
        return cls(**values)

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the result as JSON (the trials included); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=True), encoding="utf-8")
        return path

    def to_html(self, path: str | os.PathLike[str]) -> Path:
        """Write the search's self-contained HTML page; returns the path."""
        from nndiag.report.tuning import write_search_html

        return write_search_html(self, path)

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {state}" for state, n in self.counts().items())
        best = "none" if self.best_value is None else f"{self.best_value:.4g}"
        return f"SearchResult(best {self.metric}={best} at {self.best_params}, {counts})"


def load_search(path: str | os.PathLike[str]) -> SearchResult:
    """Read a result written by :meth:`SearchResult.to_json`."""
    return SearchResult.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
