"""Names shared by the ``pytest11`` entry point and the ``--nndiag`` machinery.

:mod:`nndiag.plugin` imports this module in every pytest run, so it imports the standard
library and pytest only; the heavier modules import it, never the entry point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from nndiag._pytest.session import NndiagSession

__all__ = [
    "PAYLOAD_VERSION",
    "REPORT_ATTRIBUTE",
    "SESSION_KEY",
    "WORKER_SEED",
    "WORKER_SEED_FORCED",
    "NndiagWarning",
]

SESSION_KEY: pytest.StashKey[NndiagSession] = pytest.StashKey()
# Attribute of a TestReport carrying a check's result, and its key in serialized reports.
REPORT_ATTRIBUTE = "nndiag_result"
# Version of the payload under REPORT_ATTRIBUTE: a controller ignores payloads it cannot read.
PAYLOAD_VERSION = 1
# xdist workerinput keys: the controller's seed, and whether it overrides subjects' own.
WORKER_SEED = "nndiag_seed"
WORKER_SEED_FORCED = "nndiag_seed_forced"


class NndiagWarning(UserWarning):
    """A check passed with a warning; ``--nndiag-strict`` makes it fail."""
