"""nndiag: the CS231n "babysitting the learning process" sanity checks, as tests.

Importing nndiag imports no framework: torch (or jax) loads only when a model of that
framework is diagnosed, and the user has imported it already.
"""

from __future__ import annotations

from nndiag import errors
from nndiag.config import Config
from nndiag.core import Runner, diagnose
from nndiag.results import CheckResult, Report, load_report
from nndiag.subject import Subject, subject

__version__ = "0.1.0"

__all__ = [
    "CheckResult",
    "Config",
    "Report",
    "Runner",
    "Subject",
    "diagnose",
    "errors",
    "load_report",
    "subject",
]
