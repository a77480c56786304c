"""nndiag: the CS231n "babysitting the learning process" sanity checks, as tests.

Importing nndiag imports no framework: torch (or jax) loads only when a model of that
framework is diagnosed, and the user has imported it already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nndiag import errors
from nndiag.config import Config
from nndiag.core import Runner, diagnose
from nndiag.results import CheckResult, Report, load_report
from nndiag.subject import Subject, subject

if TYPE_CHECKING:
    from nndiag.monitoring import monitor
    from nndiag.tuning import Choice, LogUniform, SearchResult, Uniform, search

__version__ = "0.1.0"

# The search's names load on first use: ``import nndiag`` stays as light as before.
_LAZY = ("Choice", "LogUniform", "SearchResult", "Uniform", "search")


def __getattr__(name: str) -> Any:
    if name == "monitor":
        import nndiag.monitoring

        return nndiag.monitoring.monitor
    if name in _LAZY:
        import nndiag.tuning

        return getattr(nndiag.tuning, name)
    raise AttributeError(f"module 'nndiag' has no attribute {name!r}")


__all__ = [
    "CheckResult",
    "Choice",
    "Config",
    "LogUniform",
    "Report",
    "Runner",
    "SearchResult",
    "Subject",
    "Uniform",
    "diagnose",
    "errors",
    "load_report",
    "monitor",
    "search",
    "subject",
]
