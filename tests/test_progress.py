"""diagnose()'s progress lines: on a terminal outside CI, off elsewhere, and switchable."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from torch import nn

import nndiag

CHECKS = ["initial_loss", "numerics"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _subject() -> nndiag.Subject:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    X, y = torch.randn(24, 6, generator=g), torch.randint(0, 3, (24,), generator=g)
    return nndiag.Subject(model, (X, y), name="tiny")


def _without_cost(report: nndiag.Report) -> list[dict]:
    return [{k: v for k, v in r.to_dict().items() if k != "cost"} for r in report]


def test_off_where_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    nndiag.diagnose(_subject(), CHECKS)
    assert capsys.readouterr().err == ""


def test_on_when_asked_a_line_per_check(capsys: pytest.CaptureFixture[str]) -> None:
    quiet = nndiag.diagnose(_subject(), CHECKS, progress=False)
    shown = nndiag.diagnose(_subject(), CHECKS, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "nndiag tiny [1/2] initial_loss ..."
    assert lines[1].startswith("nndiag tiny [1/2] initial_loss pass (") and lines[1].endswith(" s)")
    assert lines[2] == "nndiag tiny [2/2] numerics ..."
    assert lines[3].startswith("nndiag tiny [2/2] numerics pass (")
    assert len(lines) == 4
    assert _without_cost(shown) == _without_cost(quiet)  # the same results


def test_a_terminal_gets_progress_unless_ci_or_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("NNDIAG_PROGRESS", raising=False)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    nndiag.diagnose(_subject(), CHECKS)
    text = terminal.getvalue()
    # The running line is replaced by the finished one.
    assert text.startswith(
        "nndiag tiny [1/2] initial_loss ...\r\033[Knndiag tiny [1/2] initial_loss pass"
    )
    assert text.count("\n") == 2

    for variable, value in (("CI", "true"), ("NNDIAG_PROGRESS", "0")):
        with monkeypatch.context() as m:
            m.setenv(variable, value)
            quiet = _Terminal()
            m.setattr(sys, "stderr", quiet)
            nndiag.diagnose(_subject(), CHECKS)
            assert quiet.getvalue() == ""
