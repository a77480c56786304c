"""``diagnose`` and ``Runner``: run checks on a subject and collect their results."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from nndiag.budget import BudgetExceeded, time_budget
from nndiag.checks import default_checks, get_check
from nndiag.config import DEFAULT_CHECKS, Config
from nndiag.errors import InvalidSettingType, InvalidSubject, ModelError, describe
from nndiag.progress import Progress, wanted
from nndiag.results import CheckResult, Cost, Report, environment

if TYPE_CHECKING:
    from nndiag.backends import Session
    from nndiag.subject import Subject

__all__ = ["Runner", "diagnose", "error_result"]


class Runner:
    """Runs checks one at a time on one subject, sharing one backend session.

    The session (a probe forward pass, the activation capture shared by
    ``activation_stats`` and ``dead_neurons``) is opened on the first :meth:`run`.

    Raises:
        InvalidSubject: from :meth:`run`, when the probe shows the subject unusable
            (labels out of range, a non-scalar loss, a model that raises in forward).
    """

    def __init__(self, subject: Subject, config: Config | None = None) -> None:
        from nndiag.subject import Subject

        if not isinstance(subject, Subject):
            raise InvalidSubject(
                "subject",
                f"expected an nndiag.Subject, got {describe(subject)}",
                "wrap the model: nndiag.Subject(model, (X, y))",
            )
        if config is not None and not isinstance(config, Config):
            raise InvalidSubject(
                "config",
                f"expected an nndiag.Config, got {describe(config)}",
                "pass nndiag.Config(...) or Config.from_mapping({...})",
            )
        self.subject = subject
        self.config = config or Config()
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self.subject.backend.session(self.subject, self.config)
        return self._session

    def run(self, check: str) -> CheckResult:
        """Run one check; model errors and nndiag bugs become ``error`` results."""
        spec = get_check(check)  # an unknown id is the caller's mistake: it raises
        session = self.session
        forward0, backward0 = session.passes()
        start = time.perf_counter()
        try:
            function = spec.load()  # a registered check that fails to import: an error result
            with session.isolated(check), time_budget(self.config.check_seconds):
                result = function(session, self.config)
        except BudgetExceeded as exc:  # a safety cap, not a verdict: what ran says nothing
            result = CheckResult(
                check,
                "skip",
                f"Not run to the end: {check} {exc} (Config.check_seconds, a safety cap) and "
                "was stopped with no verdict; the model is restored and the other checks ran.",
                {"budget_seconds": exc.seconds, "stopped": True},
                hint=f"raise check_seconds in [tool.nndiag] (0: no cap), or shrink the check's "
                f"own work budget ({', '.join(spec.settings[:3]) or 'see its section'})",
            )
        except Exception as exc:  # the model's fault or nndiag's: a result either way
            result = error_result(check, exc)
        forward1, backward1 = session.passes()
        cost = Cost(
            forward1 - forward0, backward1 - backward0, round(time.perf_counter() - start, 4)
        )
        return CheckResult(
            result.check,
            result.status,
            result.message,
            result.metrics,
            result.evidence,
            result.hint,
            cost,
            self.subject.name,
        )


def error_result(check: str, exc: Exception) -> CheckResult:
    """The ``error`` result for what a check raised: the user's model, loss or subject
    (named, with the fix), or a bug inside nndiag (said to be one)."""
    if isinstance(exc, ModelError):
        return CheckResult(
            check,
            "error",
            f"{exc.call} raised {type(exc.original).__name__} during {check}: {exc.original}",
            hint=exc.fix,
        )
    if isinstance(exc, InvalidSubject):
        return CheckResult(check, "error", f"{exc.argument}: {exc.problem}", hint=exc.fix)
    where = traceback.extract_tb(exc.__traceback__)[-1]
    return CheckResult(
        check,
        "error",
        f"internal nndiag error in {check}: "
        f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})",
        hint="please report this with the subject that triggers it",
    )


def diagnose(
    subject: Subject,
    checks: Iterable[str] | None = None,
    config: Config | None = None,
    *,
    progress: bool | None = None,
) -> Report:
    """Run checks on a subject and return their report.

    Args:
        subject: What to diagnose.
        checks: Check ids to run, in order; ``None`` runs ``config.checks`` (by default
            every check whose registry record is on by default, registered ones included).
        config: Thresholds, budgets and seed; ``None`` uses the defaults.
        progress: Print a line per check to stderr as it starts and ends. ``None`` (the
            default): only when stderr is a terminal, ``CI`` is unset and
            ``NNDIAG_PROGRESS`` is not ``0``.

    Returns:
        A :class:`Report`; ``report.passed`` is False iff a check failed or errored.

    Raises:
        InvalidSubject: the subject cannot be diagnosed (see :class:`Runner`).
        InvalidSetting: an unknown check id (a ``ValueError``), or ``checks`` not a list
            of ids (``InvalidSettingType``, a ``TypeError``).
    """
    runner = Runner(subject, config)
    config = runner.config
    if isinstance(checks, str):
        checks = [checks]
    if checks is not None and not isinstance(checks, Iterable):
        raise InvalidSettingType(
            "checks",
            f"expected check ids, got {describe(checks)}",
            'pass a list of ids, e.g. checks=["initial_loss"], or None for the defaults',
        )
    if checks is None:
        checks = default_checks() if config.checks == DEFAULT_CHECKS else config.checks
    selected = list(checks)
    for check in selected:
        get_check(check)  # an unknown id raises before any check runs
    if not wanted(progress, sys.stderr):
        results = [runner.run(check) for check in selected]
        return Report(results, meta=environment(config.seed))
    shown = Progress(subject.name, len(selected))
    results = []
    for check in selected:
        shown.start(check)
        results.append(runner.run(check))
        shown.done(results[-1])
    return Report(results, meta=environment(config.seed))
