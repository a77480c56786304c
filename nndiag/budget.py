"""A wall-clock safety cap per check: a check still running when it is spent is stopped,
its result is a ``skip`` ("not run to the end", never a verdict: verdicts come from budgets
that count work), and the run goes on with the next check.

The stop is an exception raised by ``SIGALRM`` in the main thread, where pytest and
``diagnose()`` run checks; it derives from ``BaseException`` so that neither nndiag's
wrapping of the model's exceptions nor a model's own ``except Exception`` swallows it, and
the check's isolation restores the model on the way out, as for ``KeyboardInterrupt``.
Where no alarm can be set (another thread, Windows, a timer already armed by e.g.
pytest-timeout) the budget is not enforced.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["BudgetExceeded", "time_budget"]


class BudgetExceeded(BaseException):
    """A check ran past its time budget (caught by the runner, never escapes it)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"ran past its time budget of {seconds:g} s")
        self.seconds = seconds


def _can_alarm() -> bool:
    return (
        hasattr(signal, "SIGALRM")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0  # nobody else's timer is armed
        and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
    )


@contextmanager
def time_budget(seconds: float) -> Iterator[bool]:
    """Raise :class:`BudgetExceeded` in the body once ``seconds`` pass (0: no budget).
    Yields whether the budget is enforced."""
    if seconds <= 0 or not _can_alarm():
        yield False
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise BudgetExceeded(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
