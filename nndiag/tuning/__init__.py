"""Hyperparameter search, the lecture's last part: coarse to fine, in log space, random
rather than a grid, trials aborted once their loss passes 3x its start; on Optuna.

Optuna is an extra (``pip install optuna==5.0.0``) and loads only when
:func:`search` runs; the space values and the result import nothing heavy.
"""

from __future__ import annotations

from nndiag.tuning.engine import Progress, search
from nndiag.tuning.result import SearchResult, StageRange, TrialRecord, load_search
from nndiag.tuning.space import Choice, LogUniform, Uniform

__all__ = [
    "Choice",
    "LogUniform",
    "Progress",
    "SearchResult",
    "StageRange",
    "TrialRecord",
    "Uniform",
    "load_search",
    "search",
]
