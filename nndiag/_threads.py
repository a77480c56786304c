"""One compute thread per worker process, unless the user chose a number.

On a machine with few cores, every pytest-xdist worker or search job running torch and
BLAS with all cores' threads makes ``-n 2`` slower than a serial run (a GPT-2 subject: 205 s
under ``-n 2`` against 83 s serially; 60 s with ``OMP_NUM_THREADS=1``). The variables are
read by torch and numpy when first imported, and by worker processes started later; a
worker that already imported torch (from a conftest) is set directly.
"""

from __future__ import annotations

import os
import sys

_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_MARK = "NNDIAG_ONE_THREAD"  # nndiag set the variables, not the user


def user_chose() -> bool:
    """Whether the user set a thread count in the environment."""
    return "OMP_NUM_THREADS" in os.environ and os.environ.get(_MARK) != "1"


def one_thread_for_workers() -> dict[str, str | None]:
    """Set one thread in this process's environment for the worker processes it starts,
    unless the user chose; returns the variables' previous values (for :func:`restore`)."""
    if user_chose():
        return {}
    before = {name: os.environ.get(name) for name in (*_VARIABLES, _MARK)}
    for name in _VARIABLES:
        os.environ.setdefault(name, "1")
    os.environ[_MARK] = "1"
    return before


def restore(before: dict[str, str | None]) -> None:
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def limit_loaded() -> None:
    """In a worker whose parent chose one thread: a torch that is already imported (a
    conftest imported it before the variables could act) is set to one thread too."""
    torch = sys.modules.get("torch")
    if os.environ.get(_MARK) == "1" and torch is not None:
        torch.set_num_threads(1)
