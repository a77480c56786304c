"""The HTML report: one self-contained page drawn from a report's JSON document.

``render_html(report)`` returns the page as a string and ``write_html(report, path)`` writes
it; :meth:`nndiag.Report.to_html` and ``nndiag report saved.json`` both end here. The page
is built from ``report.to_dict()`` (the JSON document), so a report rendered live and the
same report re-read from its JSON file give the same bytes.

Every user string (subject and layer names, messages, hints, metric keys) reaches the page
through Jinja2 autoescaping; the Python side prepares plain text only, never markup.

A page written into a folder that also holds a hyperparameter search's ``search.json``
(what ``nndiag search`` writes) gets a "Hyperparameter search" section read from that JSON
alone: no optimizer library is imported.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nndiag.report.plots import Plot, plots_for
from nndiag.results import STATES, STATUSES, CheckResult, Report

if TYPE_CHECKING:
    from jinja2 import Environment

__all__ = ["format_value", "render_html", "rerun_command", "write_html"]

TEMPLATE = "report.html"

# Worst first: a subject's or a grid cell's colour is its worst result. An expected failure
# ranks just above a pass (a subject with one shows it, whatever the order); an expected
# failure that passed is one to look at.
_SEVERITY = {"error": 5, "fail": 4, "xpass": 4, "warn": 3, "xfail": 2, "pass": 1, "skip": 0}
# States the page lists first, in "Needs attention", most severe first.
_ATTENTION = ("error", "fail", "xpass", "warn")
_LINE = 180  # characters of a message or hint in that list
# Results a reader has to look at start expanded; the rest are one click away.
_OPEN = frozenset({"fail", "error", "warn", "xpass"})
# What a pytest outcome adds to a result's badge.
_OUTCOME_NOTE = {
    "xfailed": "expected to fail (xfail), and it did",
    "xpassed": "expected to fail (xfail), but it passed",
    "xpassed-strict": "expected to fail (strict xfail), but it passed: pytest fails the test",
    "failed": "pytest failed the test",
}
# Metric keys that hold a limit or a reference value rather than a measurement.
_THRESHOLD_KEY = re.compile(
    r"(^|_)(warn|fail|threshold|thresholds|band|bands|expected|target|limit|limits|tol"
    r"|tolerance|allowed|min_rise)(_|$)"
)
# Evidence keys that are thresholds; shown beside the metrics when the metrics lack them.
_EVIDENCE_THRESHOLDS = (
    "expected",
    "band",
    "warn_band",
    "fail_band",
    "target_loss",
    "warn",
    "fail",
    "bands",
)
_TABLE_ROWS = 30
# The search result written beside the page (nndiag search's default reports/search.json);
# must match nndiag.tuning.result.SCHEMA, not imported so rendering stays light.
SEARCH_JSON = "search.json"
_SEARCH_SCHEMA = "nndiag.search/1"
_SEARCH_KEYS = ("best_params", "best_value", "metric", "direction", "trials", "ranges", "command")


@dataclass(frozen=True)
class Row:
    """One line of a metrics table: a key, its formatted value, and whether it is a limit."""

    key: str
    value: str
    threshold: bool = False


@dataclass(frozen=True)
class Table:
    """An evidence table: column headers and formatted cells, plus a note when truncated."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str | None = None


@dataclass(frozen=True)
class ResultView:
    """What the template shows for one :class:`CheckResult`."""

    anchor: str
    subject: str
    check: str
    status: str  # the state a reader sees (see CheckResult.state)
    verdict: str  # the check's own status
    outcome_note: str | None
    stale: bool
    message: str
    hint: str | None
    metrics: list[Row]
    thresholds: list[Row]
    cost: str
    plots: list[Plot]
    tables: list[Table]
    counterexample: str | None
    open: bool
    rerun: str
    seconds: float
    forward: int
    search: str  # what the search box matches: subject, check, state and message


@dataclass(frozen=True)
class SearchView:
    """The "Hyperparameter search" section, or just a note when the JSON is unreadable."""

    note: str | None = None
    metric: str = ""
    direction: str = ""
    best_value: str = ""
    best_params: list[tuple[str, str]] = field(default_factory=list)
    counts: list[tuple[str, int]] = field(default_factory=list)
    study: str = ""
    ranges: list[tuple[int, int, int, list[tuple[str, str]], str]] = field(default_factory=list)
    command: str = ""
    page: str | None = None  # the search page's href, relative to this page


@dataclass(frozen=True)
class Cell:
    """One square of the summary grid; ``status`` is None where the check did not run."""

    status: str | None
    anchor: str | None = None
    title: str = ""


@dataclass
class SubjectView:
    """A subject's section and its row in the summary grid."""

    anchor: str
    name: str
    results: list[ResultView] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)

    @property
    def statuses(self) -> list[str]:
        return [s for s in STATES if any(r.status == s for r in self.results)]

    @property
    def counts(self) -> list[tuple[str, int]]:
        return [(s, sum(r.status == s for r in self.results)) for s in self.statuses]

    @property
    def worst(self) -> str:
        return _worst(r.status for r in self.results)


def render_html(
    report: Report,
    against: Report | None = None,
    search: str | os.PathLike[str] | None = None,
    *,
    plots: Mapping[tuple[str, str], list[Plot]] | None = None,
    page_dir: str | os.PathLike[str] | None = None,
) -> str:
    """Render ``report`` as one self-contained HTML page.

    Plots are PNG data URIs, CSS and the status filter's script are inline: the page needs
    no network and no other file.

    Args:
        report: The report to render.
        against: An earlier report: the page opens with what newly fails, what was fixed
            and which metrics moved.
        search: A search result's JSON file (``SearchResult.to_json``): the page gets a
            "Hyperparameter search" section, linking to the ``.html`` page beside that
            file. Absent: no section; unreadable: a one-line note.
        plots: Plots already drawn, by (subject, check): the pytest plugin's xdist workers
            draw their own results' plots in parallel; the rest are drawn here.
        page_dir: Where the page will live, for the link to the search's own page
            (default: beside ``search``).

    Returns:
        The page's HTML source.
    """
    # Render from the JSON document, not the live objects: numpy scalars, tuples and other
    # Python-only values are already normalised, so a re-read JSON file renders identically.
    document = report.to_dict()
    normal = Report.from_dict(document)
    context = _context(normal, document["meta"], plots or {})
    context["comparison"] = None
    if against is not None:
        from nndiag.report.compare import compare

        context["comparison"] = compare(normal, Report.from_dict(against.to_dict()))
    context["search"] = _search_view(Path(search), page_dir) if search is not None else None
    return _environment().get_template(TEMPLATE).render(**context)


def write_html(
    report: Report,
    path: str | os.PathLike[str],
    against: Report | None = None,
    *,
    plots: Mapping[tuple[str, str], list[Plot]] | None = None,
    search: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the HTML page of ``report`` to ``path`` (creating parent folders).

    A ``search.json`` in the page's folder (see ``nndiag search``) adds the
    "Hyperparameter search" section.

    Args:
        report: The report to render.
        path: Where the page goes; an existing file is replaced.
        against: An earlier report to compare with (see :func:`render_html`).
        plots: Plots already drawn (see :func:`render_html`).
        search: A search result's JSON file for the "Hyperparameter search" section;
            default: the ``search.json`` beside ``path``, if any.

    Returns:
        The path written, as a :class:`~pathlib.Path`.
    """
    from nndiag.files import write_atomic

    if search is None:
        beside = Path(path).parent / SEARCH_JSON
        search = beside if beside.exists() else None
    page = render_html(report, against, search=search, plots=plots, page_dir=Path(path).parent)
    return write_atomic(path, page)


@lru_cache(maxsize=1)
def _environment() -> Environment:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    return Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=StrictUndefined,  # a misspelt field fails the tests, not a user's page
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _context(
    report: Report, meta: Mapping[str, Any], plots: Mapping[tuple[str, str], list[Plot]]
) -> dict[str, Any]:
    checks = report.checks
    subjects: dict[str, SubjectView] = {}
    for name in report.subjects:
        subjects[name] = SubjectView(anchor=f"s{len(subjects) + 1}", name=name or "(unnamed)")
    used: set[str] = set()
    for result in report.results:
        anchor = result.anchor or "result"
        while anchor in used:  # names that differ only in whitespace, or repeated results
            anchor += "~"
        used.add(anchor)
        drawn = plots.get((result.subject, result.check))
        shown = _result_view(result, anchor, drawn, rerun_command(result))
        subjects[result.subject].results.append(shown)
    for view in subjects.values():
        for check in checks:
            found = [r for r in view.results if r.check == check]
            if not found:
                view.cells.append(Cell(None, title=f"{check}: not run"))
                continue
            worst = max(found, key=lambda r: _SEVERITY.get(r.status, 0))
            view.cells.append(Cell(worst.status, worst.anchor, f"{worst.status}: {worst.message}"))

    frameworks = meta.get("frameworks")
    framework_text = (
        ", ".join(f"{name} {version}" for name, version in frameworks.items())
        if isinstance(frameworks, Mapping) and frameworks
        else "none recorded"
    )
    forward = int(sum(_finite_or_zero(r.cost.forward) for r in report.results))
    backward = int(sum(_finite_or_zero(r.cost.backward) for r in report.results))
    seconds = sum(_finite_or_zero(r.cost.seconds) for r in report.results)
    counts = {s: sum(r.state == s for r in report.results) for s in STATES}
    durations = sorted(
        (r for view in subjects.values() for r in view.results), key=lambda r: -r.seconds
    )
    return {
        "durations": durations,
        "attention": _attention(subjects.values()),
        "passed": report.passed,
        # The pytest-only states get a filter only where they occur.
        "statuses": [s for s in STATES if s in STATUSES or counts[s]],
        "all_states": STATES,
        "counts": counts,
        "stale": sum(r.stale for r in report.results),
        "total": len(report.results),
        "checks": checks,
        "subjects": list(subjects.values()),
        "meta": [
            ("subjects", ", ".join(v.name for v in subjects.values()) or "none"),
            ("created", _when(meta.get("created"))),
            ("seed", _text(meta.get("seed"))),
            ("nndiag", _text(meta.get("nndiag"))),
            ("frameworks", framework_text),
            ("python", _text(meta.get("python"))),
            ("cost", _cost_text(forward, backward, seconds)),
        ],
        "nndiag_version": _text(meta.get("nndiag")),
    }


def _result_view(
    result: CheckResult, anchor: str, drawn: list[Plot] | None, rerun: str
) -> ResultView:
    metrics = [
        Row(str(k), format_value(v), bool(_THRESHOLD_KEY.search(str(k).lower())))
        for k, v in result.metrics.items()
    ]
    evidence = result.evidence if isinstance(result.evidence, Mapping) else {}
    known = {row.key for row in metrics}
    # A limit the metrics already show under another name (dead_warn as warn_above in the
    # metrics, warn in the evidence), or as a pair's ends (band as band_low and band_high),
    # is shown once.
    shown = {row.value for row in metrics if row.threshold}
    extra = [
        Row(k, format_value(evidence[k]), True)
        for k in _EVIDENCE_THRESHOLDS
        if k in evidence
        and k not in known
        and evidence[k] is not None
        and format_value(evidence[k]) not in shown
        and not {f"{k}_low", f"{k}_high"} <= known
    ]
    counterexample = evidence.get("counterexample")
    if counterexample is not None and not isinstance(counterexample, str):
        counterexample = format_value(counterexample)
    return ResultView(
        anchor=anchor,
        subject=result.subject,
        check=result.check,
        status=result.state,
        verdict=result.status,
        outcome_note=_outcome_note(result),
        stale=result.stale,
        message=result.message,
        hint=result.hint or None,
        metrics=[row for row in metrics if not row.threshold],
        thresholds=[row for row in metrics if row.threshold] + extra,
        cost=_cost_text(result.cost.forward, result.cost.backward, result.cost.seconds),
        plots=plots_for(result) if drawn is None else drawn,
        tables=_tables(result.check, evidence),
        counterexample=counterexample,
        open=result.state in _OPEN and not result.stale,
        rerun=rerun,
        seconds=_finite_or_zero(result.cost.seconds),
        forward=int(_finite_or_zero(result.cost.forward)),
        search=" ".join((result.subject, result.check, result.state, result.message)).lower(),
    )


@dataclass(frozen=True)
class Attention:
    """One row of "Needs attention": a result that failed or warned, in one line."""

    result: ResultView
    finding: str
    next_step: str


def _attention(subjects: Iterable[SubjectView]) -> list[Attention]:
    """Failures first (errors, fails, unexpected passes, then warnings), each with the
    first sentence of its message and of its hint; results kept from earlier runs after
    this run's (tagged stale on the page)."""
    found = [r for view in subjects for r in view.results if r.status in _ATTENTION]
    # stable: subjects keep their order within a state
    found.sort(key=lambda r: (r.stale, -_SEVERITY.get(r.status, 0)))
    return [Attention(r, _first_sentence(r.message), _first_sentence(r.hint or "")) for r in found]


# A sentence ends at . ! or ? before a space, not inside "e.g." or "i.e.".
_SENTENCE_END = re.compile(r"(?<!e\.g\.)(?<!i\.e\.)(?<!etc\.)(?<!vs\.)(?<=[.!?])\s")


def _first_sentence(text: str) -> str:
    head = _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    return head if len(head) <= _LINE else head[: _LINE - 3].rstrip() + "..."


def _link(target: Path, page_dir: str | os.PathLike[str]) -> str:
    """An href from a page in ``page_dir`` to ``target``: relative, or a file URI where
    there is no relative path (another drive)."""
    from urllib.parse import quote

    try:
        return quote(Path(os.path.relpath(target, page_dir)).as_posix())
    except ValueError:
        return target.resolve().as_uri()


def _search_view(path: Path, page_dir: str | os.PathLike[str] | None) -> SearchView:
    """The search section from a ``SearchResult.to_json`` file, read as plain JSON; its
    link to the search's own page is relative to ``page_dir`` (default: ``path``'s)."""
    page_dir = path.parent if page_dir is None else page_dir
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, Mapping) or data.get("schema") != _SEARCH_SCHEMA:
            schema = data.get("schema") if isinstance(data, Mapping) else None
            raise ValueError(f"not an nndiag search result (schema {schema!r})")
        missing = [key for key in _SEARCH_KEYS if key not in data]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        trials = [t for t in data.get("trials") or [] if isinstance(t, Mapping)]
        counts = {"complete": 0, "pruned": 0, "fail": 0}
        for trial in trials:
            state = str(trial.get("state"))
            counts[state] = counts.get(state, 0) + 1
        ranges = [
            (
                int(r.get("stage", 0)) + 1,
                int(r.get("trials", 0)),
                int(r.get("steps", 0)),
                [(str(name), _range_text(d)) for name, d in (r.get("params") or {}).items()],
                str(r.get("why", "")),
            )
            for r in data.get("ranges") or []
            if isinstance(r, Mapping)
        ]
        best = data.get("best_params") or {}
        page = path.with_suffix(".html")
        return SearchView(
            metric=str(data.get("metric", "")),
            direction=str(data.get("direction", "")),
            best_value=_text(data.get("best_value")),
            best_params=[(str(k), format_value(v)) for k, v in best.items()],
            counts=list(counts.items()),
            study=str(data.get("study", "")),
            ranges=ranges,
            command=str(data.get("command", "")),
            page=_link(page, page_dir) if page.exists() else None,
        )
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        # UnicodeDecodeError and json.JSONDecodeError are ValueErrors.
        return SearchView(note=f"{path.name} could not be read: {exc}")


def _range_text(described: Any) -> str:
    """``1e-05 .. 0.1 (log)`` or ``one of a, b`` from a ``Param.describe()`` mapping."""
    if not isinstance(described, Mapping):
        return format_value(described)
    if described.get("kind") == "choice":
        return "one of " + ", ".join(format_value(o) for o in described.get("options", []))
    scale = "log" if described.get("kind") == "log" else "uniform"
    low, high = format_value(described.get("low")), format_value(described.get("high"))
    return f"{low} .. {high} ({scale})"


def rerun_command(result: CheckResult) -> str:
    """The command that runs ``result``'s check again: the one its pytest run recorded (from
    where that run was launched), else its node id, else the ``diagnose`` call."""
    if result.rerun is not None:  # "" where no command reruns it (a training run's rules)
        return result.rerun
    if result.outcome is None:
        return f'nndiag.diagnose(subject, checks=["{result.check}"])'
    return f'pytest --nndiag "nndiag::{result.subject}::{result.check}"'


def _outcome_note(result: CheckResult) -> str | None:
    if result.outcome == "failed" and result.status == "warn":
        return "a warning, failed by --nndiag-strict"
    return _OUTCOME_NOTE.get(result.outcome or "")


# --------------------------------------------------------------------------- evidence tables


def _tables(check: str, evidence: Mapping[str, Any]) -> list[Table]:
    from nndiag.checks import registry

    spec = registry().get(check)
    tables: list[Table] = []
    for table in spec.tables if spec is not None else ():
        records = evidence.get(table.key)
        if table.sort_by is not None and isinstance(records, list):
            key = table.sort_by
            records = sorted(
                (r for r in records if isinstance(r, Mapping)),
                key=lambda r: _number_or(r.get(key), math.inf),
            )
        tables += _table(records, table.title, list(table.columns))
    return tables


def _table(records: Any, title: str, columns: list[tuple[str, str]]) -> list[Table]:
    if not isinstance(records, Sequence) or isinstance(records, str):
        return []
    items = [r for r in records if isinstance(r, Mapping)]
    if not items:
        return []
    rows = [[format_value(item.get(key)) for key, _ in columns] for item in items[:_TABLE_ROWS]]
    note = f"first {_TABLE_ROWS} of {len(items)} rows" if len(items) > _TABLE_ROWS else None
    return [Table(title, [header for _, header in columns], rows, note)]


# --------------------------------------------------------------------------- formatting


def format_value(value: Any, *, limit: int = 240) -> str:
    """Plain text for a metric or evidence value: compact numbers, short sequences.

    Args:
        value: Any JSON-like value (``None``, bool, number, string, list, mapping).
        limit: Longest text returned; longer text ends with an ellipsis.

    Returns:
        The text; markup characters are left as they are (the template escapes them).
    """
    text = _format(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _format(value: Any, depth: int = 0) -> str:
    if value is None:
        return "\u2014"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "undefined"  # a 0/0 or a failed measurement: no number to show
        if math.isinf(value):
            return "\u221e" if value > 0 else "\u2212\u221e"
        if value == 0:
            return "0"
        if value.is_integer() and abs(value) < 1e6:
            return f"{value:.0f}"
        if abs(value) < 1e-3 or abs(value) >= 1e5:
            mantissa, _, exponent = f"{value:.3g}".partition("e")
            return f"{mantissa}e{int(exponent)}" if exponent else mantissa
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        if depth > 1:
            return "{\u2026}"
        return "{" + ", ".join(f"{k}: {_format(v, depth + 1)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        if depth > 1:
            return "[\u2026]"
        shown = [_format(v, depth + 1) for v in list(value)[:8]]
        if len(value) > 8:
            shown.append(f"\u2026 {len(value)} items")
        return "[" + ", ".join(shown) + "]"
    return str(value)


def _text(value: Any) -> str:
    return "\u2014" if value is None or value == "" else _format(value)


def _when(value: Any) -> str:
    """``2025-01-31 12:00:00 UTC`` from the ISO time stamp of ``environment()``."""
    from datetime import datetime, timezone

    if not isinstance(value, str):
        return _text(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None and moment.utcoffset() == timezone.utc.utcoffset(None):
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return moment.isoformat(sep=" ")


def _cost_text(forward: Any, backward: Any, seconds: Any) -> str:
    return (
        f"{_text(forward)} forward \u00b7 {_text(backward)} backward \u00b7 "
        f"{_format(_finite_or_zero(seconds))} s"
    )


def _finite_or_zero(value: Any) -> float:
    number = _number_or(value, 0.0)
    return number if math.isfinite(number) else 0.0


def _number_or(value: Any, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(value) if not math.isnan(value) else default


def _worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=lambda s: _SEVERITY.get(s, 0), default="skip")
