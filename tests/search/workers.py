"""Worker processes for the shared-study tests: each runs the same search on one storage,
started together (each waits for the word on stdin) so that they compete for trials."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.search import helpers as h

ROOT = Path(__file__).resolve().parents[2]


def worker_script(storage: str, study: str, factory: str = "regression", extra: str = "") -> str:
    return (
        "import sys, nndiag\n"
        "from tests.search import helpers as h\n"
        "print('ready', flush=True); sys.stdin.readline()\n"
        f"nndiag.search(h.{factory}, {{'lr': nndiag.LogUniform(1e-3, 1.0)}}, trials=[6, 6],"
        f" stages=2, steps={h.STEPS}, validation=h.validation_data(), storage={storage!r},"
        f" study={study!r}, seed=0{extra})\n"
    )


def start_worker(script: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def shared_study(storage: str, study: str, factory: str = "regression", extra: str = "") -> None:
    """Two workers, started together (each waits for the word), share one study."""
    workers = [start_worker(worker_script(storage, study, factory, extra)) for _ in range(2)]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    for worker in workers:
        assert worker.wait(timeout=300) == 0
    check_shared(storage, study)


def check_shared(storage: str, study: str, stopped: int = 0) -> set[str]:
    """Each stage ran its 6 trials once each; ``stopped`` trials of a killed worker were
    failed and queued again."""
    import optuna

    seen, workers = 0, set()
    for stage in (0, 1):
        trials = optuna.load_study(study_name=f"{study}.stage{stage}", storage=storage).trials
        dead = [
            t
            for t in trials
            if t.state == optuna.trial.TrialState.FAIL
            and "stopped" in str(t.user_attrs.get("reason"))
        ]
        seen += len(dead)
        trials = [t for t in trials if t not in dead]
        assert len(trials) == 6
        assert {t.state for t in trials} <= {
            optuna.trial.TrialState.COMPLETE,
            optuna.trial.TrialState.PRUNED,
        }
        assert len({t.number for t in trials}) == 6
        assert len({t.params["lr"] for t in trials}) == 6
        workers |= {str(t.user_attrs["worker"]) for t in trials}
    assert seen == stopped
    return workers
