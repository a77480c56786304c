"""What a ``--nndiag`` run tells: the header, results gathered from test reports, the
JSON/HTML report files and the terminal's subject x check table.

A result travels as a plain-data payload on its item's setup report, so that under xdist the
controller sees every worker's results (the plugin serializes the payload across execnet).
The controller alone writes the files and the table; workers only send.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from nndiag._pytest.common import PAYLOAD_VERSION
from nndiag._pytest.rerun import rerun_command
from nndiag._pytest.settings import ALL_CHECKS, Settings
from nndiag.checks import default_checks
from nndiag.results import STATES, CheckResult, Report, environment, load_report

__all__ = ["Reporter", "drawn_plots", "make_payload", "outcome_of"]

_SHOWN = {
    "pass": "pass",
    "warn": "WARN",
    "fail": "FAIL",
    "skip": "skip",
    "error": "ERROR",
    "xfail": "xfail",
    "xpass": "XPASS",
}
_MARKUP: dict[str, dict[str, bool]] = {
    "pass": {"green": True},
    "warn": {"yellow": True},
    "fail": {"red": True, "bold": True},
    "error": {"red": True, "bold": True},
    "skip": {},
    "xfail": {"yellow": True},
    "xpass": {"red": True, "bold": True},
}


def outcome_of(report: pytest.TestReport) -> str | None:
    """pytest's verdict on a check's test from one of its reports, or None while it is
    still open (a passed setup: the call decides)."""
    expected = hasattr(report, "wasxfail")
    if report.when == "setup":
        if report.failed:
            return "error"
        if report.skipped:
            return "xfailed" if expected else "skipped"
        return None
    if report.when == "call":
        if report.passed:
            return "xpassed" if expected else "passed"
        if report.skipped:
            return "xfailed" if expected else "skipped"
        if str(report.longrepr).startswith("[XPASS(strict)]"):
            return "xpassed-strict"
        return "failed"
    return "error" if report.failed else None  # teardown


def make_payload(
    result: Mapping[str, Any], *, order: tuple[int, int], xfail: bool, defined_in: Path
) -> dict[str, Any]:
    """What an item's setup report carries: its result's JSON form, its place in the table
    (subject index, check index), the file that declares its subject, the frameworks its
    process loaded, and whether a failure is expected."""
    return {
        "v": PAYLOAD_VERSION,
        "result": result,
        "order": list(order),
        "defined_in": str(defined_in),
        "frameworks": environment()["frameworks"],
        "xfail": xfail,
    }


def drawn_plots(result: CheckResult) -> list[dict[str, Any]] | None:
    """The result's plots for the HTML page as plain data, or None without the renderer's
    dependencies (the controller then says why the page is missing)."""
    try:
        from nndiag.report.plots import plots_for
    except ImportError:
        return None
    return [dataclasses.asdict(plot) for plot in plots_for(result)]


def _plots(payloads: list[dict[str, Any]]) -> dict[tuple[str, str], list[Any]]:
    """Plots drawn by the workers, by (subject, check)."""
    from nndiag.report.plots import Plot

    return {
        (p["result"]["subject"], p["result"]["check"]): [Plot(**plot) for plot in p["plots"]]
        for p in payloads
        if isinstance(p.get("plots"), list)
    }


class Reporter:
    """Results of one run as they arrive (on the controller), and what is made of them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.results: dict[str, dict[str, Any]] = {}
        self.outcomes: dict[str, str] = {}
        self.written: list[Path] = []
        self.merged: str | None = None  # what the report file kept from earlier runs
        self.notes: list[str] = []
        self.discovered: int | None = None  # subjects found (None: not collected here)
        self.selected: int | None = None  # of them, those the arguments select
        # Each collected subject's checks, before any selection: an earlier result of a
        # check outside them is dropped when merging (None: not collected in this process).
        self.known: dict[str, frozenset[str]] | None = None

    def header(self) -> list[str]:
        settings = self.settings
        # As plan_for decides: a subject's own, else [tool.nndiag] checks, else the defaults.
        if settings.cli_checks is not None:
            checks = ",".join(settings.cli_checks)
        elif settings.global_checks is not None:
            checks = (
                f"each subject's own, else [tool.nndiag] checks {','.join(settings.global_checks)}"
            )
        else:
            checks = f"each subject's own, else the {len(default_checks())} default"
        return [
            f"nndiag: seed {settings.seed} ({settings.seed_origin}; rerun with --nndiag-seed "
            f"{settings.seed}), checks: {checks}, strict: {'on' if settings.strict else 'off'}, "
            f"report: {settings.shown(settings.report_dir)}/"
        ]

    def record(self, nodeid: str, when: str, payload: Any) -> None:
        """Keep the payload of a setup report; payloads of another version are ignored."""
        if when == "setup" and isinstance(payload, dict) and payload.get("v") == PAYLOAD_VERSION:
            self.results[nodeid] = payload

    def record_outcome(self, report: pytest.TestReport) -> None:
        """Keep pytest's verdict on an nndiag item (the worst of its phases)."""
        outcome = outcome_of(report)
        if outcome is not None and self.outcomes.get(report.nodeid) != "error":
            self.outcomes[report.nodeid] = outcome

    def _results(self, config: pytest.Config | None = None) -> list[CheckResult]:
        """This run's results in table order, each with pytest's verdict on it and, given
        ``config``, the command that reruns it."""
        forced = self.settings.seed_origin.startswith("--nndiag-seed")
        seed = self.settings.seed if forced else None
        found = []
        for nodeid, payload in sorted(
            self.results.items(),
            key=lambda kv: (
                tuple(kv[1]["order"]),
                kv[1]["result"]["subject"],
                kv[1]["result"]["check"],
            ),
        ):
            data = dict(payload["result"], outcome=self.outcomes.get(nodeid))
            if config is not None and "defined_in" in payload:
                where = Path(payload["defined_in"])
                data["rerun"] = rerun_command(config, self.settings.report_dir, where, nodeid, seed)
            found.append(CheckResult.from_dict(data))
        return found

    def _merge(self, path: Path, results: list[CheckResult]) -> list[CheckResult]:
        """This run's results merged into the report at ``path`` by (subject, check): an
        earlier result this run did not repeat is kept and marked stale, unless its subject
        no longer runs that check."""
        self.merged = None
        if not path.is_file():
            return results
        try:
            old = load_report(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.notes.append(f"replaced {self.settings.shown(path)}, unreadable ({exc})")
            return results
        new = {(r.subject, r.check): r for r in results}
        known = self.known
        kept: list[CheckResult] = []
        merged: list[CheckResult] = []
        for r in old.results:
            key = (r.subject, r.check)
            if key in new:
                merged.append(new.pop(key))
            elif known is None or r.subject not in known or r.check in known[r.subject]:
                stale = r if r.stale else dataclasses.replace(r, stale=True)
                kept.append(stale)
                merged.append(stale)
        if not kept:
            return results
        merged.extend(new.values())
        when = old.meta.get("created", "an earlier run")
        self.merged = (
            f"{len(results)} result(s) of this run merged with {len(kept)} kept from "
            f"earlier runs (last written {when}), marked stale"
        )
        return merged

    def _ordered(self) -> list[dict[str, Any]]:
        return sorted(
            self.results.values(),
            key=lambda p: (tuple(p["order"]), p["result"]["subject"], p["result"]["check"]),
        )

    def write_reports(self, config: pytest.Config) -> None:
        """Write nndiag.json (and nndiag.html) once, on the controller."""
        if hasattr(config, "workerinput") or not self.results:
            return  # an xdist worker: its results travel to the controller
        report_dir = self.settings.report_dir
        payloads = self._ordered()
        meta = environment(self.settings.seed)
        for payload in payloads:  # under xdist the controller never imported the frameworks
            for name, version in payload.get("frameworks", {}).items():
                meta["frameworks"].setdefault(name, version)
        results = self._merge(report_dir / "nndiag.json", self._results(config))
        report = Report(results, meta)
        try:
            self.written.append(report.to_json(report_dir / "nndiag.json"))
        except OSError as exc:
            self.notes.append(f"could not write the JSON report: {exc}")
            return
        try:
            import nndiag.report  # noqa: F401 - the HTML renderer is optional
        except ImportError as exc:
            self.notes.append(f"HTML report skipped: {exc}")
            return
        try:
            from nndiag.report import write_html

            page = write_html(report, report_dir / "nndiag.html", plots=_plots(payloads))
            self.written.append(page)
        except Exception as exc:  # the JSON is the source of truth; say why the page is missing
            self.notes.append(
                f"HTML report failed: {type(exc).__name__}: {exc} (re-render it "
                f"with: nndiag report {self.settings.shown(self.written[0])})"
            )

    def summary(self, terminal: Any) -> None:
        """The check x subject table (split to fit the terminal), then the report paths."""
        if self.discovered == 0:
            terminal.write_line(
                "nndiag: no subjects found; declare them with @nndiag.subject "
                "in a conftest.py, or list them in [tool.nndiag] subjects",
                yellow=True,
            )
        elif self.selected == 0:
            terminal.write_line(
                f"nndiag: none of the {self.discovered} subject(s) is defined under the paths "
                "given; run pytest --nndiag without paths for all, or name them: "
                "nndiag::<subject>[::<check>] (see docs/pytest.md, 'Selecting')",
                yellow=True,
            )
        if not self.results and not self.notes:
            return
        payloads = self._ordered()
        subjects = list(dict.fromkeys(p["result"]["subject"] for p in payloads))
        checks = [c for c in ALL_CHECKS if any(p["result"]["check"] == c for p in payloads)]
        cells: dict[tuple[str, str], str] = {}
        counts = dict.fromkeys(STATES, 0)
        for result in self._results():
            counts[result.state] += 1
            cells[result.subject, result.check] = result.state
        terminal.write_sep("=", f"nndiag: {len(subjects)} subject(s), seed {self.settings.seed}")
        label = max((len(c) for c in checks), default=5) + 2
        width = max(shutil.get_terminal_size((80, 24)).columns, 40)
        groups: list[list[str]] = [[]]
        used = label
        for name in subjects:
            column = _column(name)
            if groups[-1] and used + column > width:
                groups.append([])
                used = label
            groups[-1].append(name)
            used += column
        for group in groups:
            if group:
                _table(terminal, group, checks, cells, label)
        totals = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        if payloads:
            terminal.write_line(f"{len(payloads)} results: {totals}")
        for path in self.written:
            terminal.write_line(f"nndiag report: {self.settings.shown(path)}")
        if self.merged:
            terminal.write_line(f"nndiag report: {self.merged}")
        for note in self.notes:
            terminal.write_line(f"nndiag: {note}", yellow=True)


def _column(name: str) -> int:
    return max(len(name), 5) + 2


def _table(
    terminal: Any,
    subjects: list[str],
    checks: list[str],
    cells: Mapping[tuple[str, str], str],
    label: int,
) -> None:
    terminal.write_line(
        ("check".ljust(label) + "".join(s.ljust(_column(s)) for s in subjects)).rstrip()
    )
    for check in checks:
        terminal.write(check.ljust(label))
        for i, subject in enumerate(subjects):
            status = cells.get((subject, check), "")
            text = _SHOWN.get(status, "-")
            terminal.write(
                text if i == len(subjects) - 1 else text.ljust(_column(subject)),
                **_MARKUP.get(status, {}),
            )
        terminal.line("")
