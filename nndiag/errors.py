"""The exceptions nndiag raises.

Three kinds of trouble are never confused: misuse (``InvalidSubject``: the fix is in the
caller's hands), a check that found a problem in the model (``CheckFailed``), and a missing
optional dependency (``BackendUnavailable``). A bug inside nndiag surfaces as an ``error``
result that says so, never as one of these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nndiag.results import CheckResult, Report

__all__ = [
    "BackendUnavailable",
    "CheckFailed",
    "InvalidSetting",
    "InvalidSettingType",
    "InvalidSubject",
    "ModelError",
    "NndiagError",
    "TrainingUnhealthy",
]


class NndiagError(Exception):
    """Base class of every exception nndiag raises on purpose."""


class InvalidSubject(NndiagError, ValueError):
    """A subject's argument is unusable; the message names the argument and the fix."""

    def __init__(self, argument: str, problem: str, fix: str) -> None:
        self.argument = argument
        self.problem = problem
        self.fix = fix
        super().__init__(f"{argument}: {problem}. Fix: {fix}")


class InvalidSetting(NndiagError, ValueError):
    """A setting (a ``Config`` field, a check id, an argument of ``diagnose``) is unusable;
    the message names it, the value and the fix."""

    def __init__(self, setting: str, problem: str, fix: str = "") -> None:
        self.setting = setting
        self.problem = problem
        self.fix = fix
        super().__init__(f"{setting}: {problem}" + (f". Fix: {fix}" if fix else ""))


class InvalidSettingType(InvalidSetting, TypeError):
    """A setting of the wrong type (also a ``TypeError``)."""


class ModelError(InvalidSubject):
    """The user's model, loss or regularization knob raised while nndiag called it."""

    def __init__(
        self,
        argument: str,
        call: str,
        error: BaseException,
        check: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.call = call
        self.check = check
        self.original = error
        where = f" during {check}" if check else ""
        super().__init__(
            argument,
            f"{call} raised {type(error).__name__}: {error}{where}",
            fix or f"make {call} run on the subject's data outside nndiag first",
        )


class CheckFailed(NndiagError, AssertionError):
    """A check failed; ``result`` carries the full :class:`~nndiag.CheckResult`."""

    def __init__(self, result: CheckResult) -> None:
        self.result = result
        super().__init__(result.summary())


class TrainingUnhealthy(NndiagError, RuntimeError):
    """A fatal rule of :func:`nndiag.monitor` fired under ``on_fatal="raise"``: ``result``
    is the rule's result, ``report`` the run's whole report so far."""

    def __init__(self, result: CheckResult, report: Report) -> None:
        self.result = result
        self.report = report
        super().__init__(result.summary())


class BackendUnavailable(NndiagError, ImportError):
    """The framework a model needs is not installed; says what to ``pip install``."""

    def __init__(self, framework: str, extra: str, package: str | None = None) -> None:
        self.framework = framework
        name = package or framework.split()[0]
        super().__init__(
            f"{framework} is not installed. Fix: pip install {name} (nndiag's [{extra}] "
            "extra: docs/your-project.md)"
        )


def describe(value: Any) -> str:
    """``value`` as error messages show it: a short repr and its type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} (type={type(value).__name__})"
