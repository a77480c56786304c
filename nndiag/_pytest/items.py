"""The nodes of a ``--nndiag`` run, and running one check.

``nndiag`` (:class:`NndiagRoot`) holds one :class:`SubjectNode` per subject, which holds one
:class:`CheckItem` per check. An item runs its check in setup through the
:class:`CheckRunner`, which builds each subject once per process, and maps the result's
status to a pytest outcome.
"""

from __future__ import annotations

import dataclasses
import os
import re
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nndiag._pytest.common import REPORT_ATTRIBUTE, NndiagWarning
from nndiag._pytest.plan import (
    Plan,
    SubjectSpec,
    discover,
    plan_for,
    stray_overrides,
    valid_name,
)
from nndiag._pytest.reporting import drawn_plots, make_payload
from nndiag._pytest.settings import Settings
from nndiag.checks import registry
from nndiag.core import Runner, error_result
from nndiag.errors import CheckFailed, InvalidSubject
from nndiag.results import CheckResult
from nndiag.subject import Subject

if TYPE_CHECKING:
    from nndiag._pytest.session import NndiagSession

__all__ = ["CheckItem", "CheckRunner", "NndiagRoot", "SubjectNode"]

# Frames under this directory are nndiag's own: hidden from the tracebacks users read.
_NNDIAG_DIR = str(Path(__file__).resolve().parent.parent) + os.sep


# -- running --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Broken:
    """A subject whose factory could not be imported or raised: every item errors."""

    message: str
    hint: str
    frames: tuple[str, ...] = ()


class CheckRunner:
    """Runs checks on subjects, building each subject (or its failure) once per process."""

    def __init__(self) -> None:
        self._built: dict[str, tuple[Subject, Runner] | _Broken] = {}
        # Subject -> the item whose error showed its broken factory's traceback: the
        # subject's other items refer to it instead of repeating it.
        self.traceback_shown: dict[str, str] = {}

    def _build(self, spec: SubjectSpec, plan: Plan) -> tuple[Subject, Runner] | _Broken:
        """The subject and its runner, made once per process; a failure is kept too."""
        built = self._built.get(spec.name)
        if built is not None:
            return built
        if spec.load_error is not None or spec.factory is None:
            built = _Broken(
                f"subject {spec.name!r} could not be loaded: {spec.load_error}",
                "make the [tool.nndiag] subjects entry importable ('package.module:"
                "function', with the package installed or on pytest's pythonpath)",
            )
        else:
            try:
                subject = spec.factory()
            except Exception as exc:
                built = _factory_failure(spec, exc)
            else:
                built = (subject, Runner(subject, plan.config))
        self._built[spec.name] = built
        return built

    def run(self, spec: SubjectSpec, plan: Plan, check: str) -> CheckResult:
        """One check's result; never raises for a broken model or subject."""
        built = self._build(spec, plan)
        if isinstance(built, _Broken):
            evidence = {"traceback": list(built.frames)} if built.frames else {}
            return CheckResult(
                check, "error", built.message, evidence=evidence, hint=built.hint, subject=spec.name
            )
        subject, runner = built
        try:
            runner.session  # noqa: B018 - the probe: raises InvalidSubject if unusable
            result = runner.run(check)
        except InvalidSubject as exc:
            result = CheckResult(
                check,
                "error",
                f"subject {spec.name!r} cannot be diagnosed: {exc.argument}: {exc.problem}",
                hint=exc.fix,
            )
        except Exception as exc:  # a bug in nndiag: say so, keep the other items running
            result = error_result(check, exc)
        return dataclasses.replace(result, subject=spec.name)


def _user_frames(exc: BaseException) -> tuple[str, ...]:
    """The traceback of ``exc`` without nndiag's own frames, formatted."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_NNDIAG_DIR)
    ]
    return tuple(line.rstrip("\n") for line in traceback.format_list(frames[-6:]))


def _factory_failure(spec: SubjectSpec, exc: Exception) -> _Broken:
    frames = _user_frames(exc)
    if isinstance(exc, InvalidSubject):
        return _Broken(
            f"subject {spec.name!r} ({spec.origin}) is invalid: {exc.argument}: {exc.problem}",
            exc.fix,
            frames,
        )
    return _Broken(
        f"subject {spec.name!r} could not be built: its factory ({spec.origin}) "
        f"raised {type(exc).__name__}: {exc}",
        "call the factory on its own and fix what it raises (the traceback below shows where)",
        frames,
    )


def _properties(data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Key metrics for --junitxml: the status, the cost and the scalar metrics, from the
    result's JSON form (plain Python values: xdist sends them to the controller as they are,
    and cannot send numpy scalars)."""
    found: list[tuple[str, Any]] = [
        ("nndiag.status", data["status"]),
        ("nndiag.seconds", data["cost"]["seconds"]),
    ]
    for key, value in data["metrics"].items():
        if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) < 80):
            found.append((f"nndiag.{key}", value))
    return found[:24]


class _CheckFailure(CheckFailed):
    """A failed check's test: its summary, then what to tune and where the report shows it."""

    def __init__(self, result: CheckResult, text: str) -> None:
        super().__init__(result)
        self.args = (text,)


def _mentioned_first(settings: tuple[str, ...], text: str) -> list[str]:
    """``settings`` with those the message or hint speaks of (``overfit_lr`` when it says
    "lr") first."""
    words = set(re.findall(r"[a-z]+", text.lower()))

    def mentioned(name: str) -> bool:
        return any(part in words for part in name.split("_")[1:] if len(part) > 1)

    return sorted(settings, key=lambda name: not mentioned(name))


def short_line(result: CheckResult, strict: bool = False) -> str:
    """The line pytest's short summary shows: the verdict, then the measured numbers."""
    head = "warn, failed by --nndiag-strict" if strict else result.status
    return f"{head}: {' '.join(result.message.split())}"


def _known_checks(settings: Settings, specs: list[SubjectSpec]) -> dict[str, frozenset[str]]:
    """Each subject's checks before ``--nndiag-checks`` narrows them (a subject whose
    settings are wrong is left out: its collection error says why)."""
    full = dataclasses.replace(settings, cli_checks=None)
    known = {}
    for spec in specs:
        try:
            known[spec.name] = frozenset(plan_for(full, spec).checks)
        except (ValueError, TypeError):
            continue
    return known


# -- nodes ----------------------------------------------------------------------------------------
class NndiagRoot(pytest.Collector):
    """The ``nndiag`` node: one child per subject."""

    def __init__(self, *, nndiag: NndiagSession, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nndiag = nndiag

    def collect(self) -> list[pytest.Collector]:
        settings = self.nndiag.settings
        try:
            specs = discover(self.config, settings)
        except ValueError as exc:
            raise self.CollectError(f"nndiag: {exc}") from None
        self.nndiag.reporter.discovered = len(specs)
        self.nndiag.reporter.known = _known_checks(settings, specs)
        stray = stray_overrides(settings, specs)
        if stray:  # a typo, or a subject whose conftest this run does not load
            names = ", ".join(spec.name for spec in specs) or "none"
            tables = ", ".join(f"[tool.nndiag.overrides.{n}]" for n in stray)
            warnings.warn_explicit(
                pytest.PytestConfigWarning(
                    f"nndiag: {tables} match(es) no subject collected "
                    f"in this run (subjects: {names})"
                ),
                pytest.PytestConfigWarning,
                str(settings.pyproject or self.path),
                1,
            )
        selection = self.nndiag.selection
        chosen = [spec for spec in specs if selection.subject(spec.name, spec.path)]
        if not selection.ids:  # an id that selects nothing is a usage error instead
            self.nndiag.reporter.selected = len(chosen)
        return [
            SubjectNode.from_parent(
                self, name=spec.name, path=spec.path, spec=spec, nndiag=self.nndiag
            )
            for spec in chosen
        ]


class SubjectNode(pytest.Collector):
    """One subject: one item per check it runs."""

    def __init__(self, *, spec: SubjectSpec, nndiag: NndiagSession, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.nndiag = nndiag

    def collect(self) -> list[pytest.Item]:
        if not valid_name(self.spec.name):
            raise self.CollectError(
                f"nndiag: subject name {self.spec.name!r} ({self.spec.origin}) cannot be part of "
                "a test id; use letters, digits, '_', '-' or '.' (@nndiag.subject(name=...))"
            )
        try:
            plan = self.nndiag.plan(self.spec)
        except (ValueError, TypeError) as exc:
            raise self.CollectError(
                f"nndiag: subject {self.spec.name!r} ({self.spec.origin}): {exc}"
            ) from None
        selection = self.nndiag.selection
        return [
            CheckItem.from_parent(
                self, name=check, spec=self.spec, plan=plan, check=check, nndiag=self.nndiag
            )
            for check in plan.checks
            if selection.check(self.spec.name, self.spec.path, check)
        ]


class CheckItem(pytest.Item):
    """One check on one subject. The check runs in setup, so that an ``error`` result (a
    factory that raises, a model that cannot be run) is a setup error, not a failure."""

    def __init__(
        self, *, spec: SubjectSpec, plan: Plan, check: str, nndiag: NndiagSession, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.plan = plan
        self.check = check
        self.nndiag = nndiag
        self.result: CheckResult | None = None
        self.nndiag_payload: dict[str, Any] | None = None
        self.add_marker(pytest.mark.nndiag)
        if self.config.pluginmanager.hasplugin("xdist"):  # a marker xdist registers
            # One worker per subject under an explicit --dist loadgroup too (pytest < 9).
            self.add_marker(pytest.mark.xdist_group(spec.name))
        reason = plan.xfail_reason(spec.name, check)
        if reason is not None:
            self.add_marker(pytest.mark.xfail(reason=reason, raises=CheckFailed, strict=True))

    def setup(self) -> None:
        runner = self.nndiag.runner
        result = runner.run(self.spec, self.plan, self.check)
        self.result = result
        data = result.to_dict()
        self.nndiag_payload = make_payload(
            data,
            order=(self.spec.index, self.plan.checks.index(self.check)),
            xfail=self.check in self.plan.xfail,
            defined_in=self.spec.path,
        )
        self.user_properties.extend(_properties(data))
        if result.status == "error":
            text = short_line(result)
            if result.hint:
                text += f"\nHint: {result.hint}"
            frames = result.evidence.get("traceback")
            first = runner.traceback_shown.setdefault(self.spec.name, self.nodeid)
            if frames and first == self.nodeid:
                text += "\nTraceback (nndiag frames hidden):\n" + "\n".join(frames)
            elif frames:  # one broken factory: its traceback once, not once per check
                text += f"\n(the factory's traceback is shown under {first})"
            pytest.fail(text, pytrace=False)

    def runtest(self) -> None:
        result = self.result
        assert result is not None, "setup() runs the check"
        if result.status == "fail":
            raise _CheckFailure(result, self._failure_text(result))
        if result.status == "warn":
            if self.nndiag.settings.strict:
                raise _CheckFailure(
                    result,
                    self._failure_text(result) + "\n(--nndiag-strict: a warning fails the test)",
                )
            # Located at the subject's factory: the warning is about the user's model.
            warnings.warn_explicit(
                NndiagWarning(result.summary()),
                NndiagWarning,
                str(self.spec.path),
                self.spec.lineno or 1,
            )
        elif result.status == "skip":
            pytest.skip(result.message)

    def _failure_text(self, result: CheckResult) -> str:
        """The summary and hint, the settings to tune and the report section."""
        settings = self.nndiag.settings
        text = result.summary()
        spec = registry().get(result.check)
        if spec is not None and spec.settings:
            names = _mentioned_first(spec.settings, f"{result.message} {result.hint or ''}")
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            text += (
                f"\nSettings: {shown} (nndiag checks lists all), in [tool.nndiag] or "
                f"[tool.nndiag.overrides.{self.spec.name}]"
            )
        page = settings.shown(settings.report_dir / "nndiag.html")
        return text + f"\nReport: {page}#{result.anchor}"

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, CheckFailed):  # the summary, no nndiag frames
            return excinfo.getrepr(style="value", chain=False)
        return super().repr_failure(excinfo, style=style)

    def nndiag_report(self, report: pytest.TestReport) -> None:
        """Called by the plugin on each of this item's reports: the setup report carries the
        result; the short summary leads with the verdict and the measured numbers; a skip is
        located at the subject's factory rather than in nndiag."""
        if report.when == "setup" and self.nndiag_payload is not None:
            if hasattr(self.config, "workerinput") and self.result is not None:
                # Drawn here, outside the timed setup: xdist workers draw their results'
                # plots in parallel, and the controller only assembles the page.
                self.nndiag_payload["plots"] = drawn_plots(self.result)
            setattr(report, REPORT_ATTRIBUTE, self.nndiag_payload)
        result = self.result
        if report.when in ("setup", "call") and result is not None:
            strict = result.status == "warn" and report.failed
            crash = getattr(report.longrepr, "reprcrash", None)
            if crash is not None and report.failed:
                crash.message = short_line(result, strict)
            elif report.when == "call" and report.passed and not self.config.option.verbose:
                # -rA's PASSED line shows a string longrepr: the key numbers of a pass.
                report.longrepr = short_line(result)
        if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
            # pytest's skip summary prints no line for None, which its annotation omits.
            location: Any = (str(self.spec.path), self.spec.lineno or None, report.longrepr[2])
            report.longrepr = location

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # pytest counts lines from 0 here
        return self.spec.path, self.spec.lineno - 1 if self.spec.lineno else None, self.nodeid
