"""Progress of ``diagnose()`` on a terminal: one line per check, as it starts and ends.

On by default only where someone watches: stderr is a terminal and ``CI`` is unset, so CI
logs and captured output stay clean. ``diagnose(..., progress=False)`` or
``NNDIAG_PROGRESS=0`` turns it off, ``progress=True`` on. Writing a line per check costs
nothing next to a check's forward and backward passes.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from nndiag.results import CheckResult

__all__ = ["Progress", "wanted"]


def wanted(progress: bool | None, stream: TextIO) -> bool:
    """Whether to show progress: ``progress`` when given, else on a terminal outside CI
    unless ``NNDIAG_PROGRESS=0``."""
    if progress is not None:
        return bool(progress)
    if os.environ.get("NNDIAG_PROGRESS", "").strip() in ("0", "false", "no", "off"):
        return False
    if os.environ.get("CI"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """Writes ``nndiag mlp [2/8] overfit_small ...`` when a check starts and its status and
    seconds when it ends; on a terminal the running line is replaced by the finished one."""

    def __init__(self, subject: str, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.subject = subject or "subject"
        self.total = total
        self.index = 0
        isatty = getattr(self.stream, "isatty", None)
        self.rewrite = bool(isatty and isatty())

    def start(self, check: str) -> None:
        self.index += 1
        line = f"{self._head(check)} ..."
        self.stream.write(line if self.rewrite else line + "\n")
        self.stream.flush()

    def done(self, result: CheckResult) -> None:
        line = f"{self._head(result.check)} {result.status} ({result.cost.seconds:.1f} s)"
        self.stream.write(f"\r\033[K{line}\n" if self.rewrite else line + "\n")
        self.stream.flush()

    def _head(self, check: str) -> str:
        return f"nndiag {self.subject} [{self.index}/{self.total}] {check}"
