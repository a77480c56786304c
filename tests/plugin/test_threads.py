"""Under ``pytest --nndiag -n N`` each worker runs torch with one thread, unless the user set
``OMP_NUM_THREADS``: on few cores, workers with all cores' threads each are slower than a
serial run."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("xdist")
pytest.importorskip("torch")

CONFTEST = """
import os

import torch
from torch import nn

import nndiag


@nndiag.subject(name="probe")
def probe():
    record = os.path.join(os.environ["THREADS_LOG"], f"{os.getpid()}.txt")
    with open(record, "w") as f:
        f.write(f"{torch.get_num_threads()} {os.environ.get('OMP_NUM_THREADS')}")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    return nndiag.Subject(nn.Linear(4, 2), (torch.randn(8, 4, generator=g), torch.arange(8) % 2))
"""


def _threads(pytester: pytest.Pytester, tmp_path: Path) -> set[str]:
    pytester.makeconftest(CONFTEST)
    log = tmp_path / "threads"
    log.mkdir()
    result = pytester.runpytest_subprocess(
        "--nndiag", "-n", "2", "--nndiag-checks", "numerics,gradient_check", "-p", "no:randomly"
    )
    assert result.ret == 0, result.stdout.str()
    return {p.read_text() for p in log.iterdir()}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("THREADS_LOG", str(tmp_path / "threads"))


@pytest.mark.usefixtures("clean_env")
def test_xdist_workers_run_torch_with_one_thread(pytester: pytest.Pytester, tmp_path: Path) -> None:
    assert _threads(pytester, tmp_path) == {"1 1"}


@pytest.mark.usefixtures("clean_env")
def test_the_users_thread_count_is_kept(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # 3 is capped at the cores
    assert _threads(pytester, tmp_path) == {"2 2"}
