"""Reports are plain data: JSON round trips, non-finite numbers, lookups."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import nndiag
from nndiag.results import SCHEMA, CheckResult, Cost, Report


def _report() -> Report:
    return Report(
        [
            CheckResult(
                "overfit_small",
                "fail",
                "diverged",
                {"final_loss": math.nan},
                {"loss": [2.3, math.inf, math.nan]},
                "lower the lr",
                Cost(3, 2, 0.5),
                "a",
            ),
            CheckResult("dead_neurons", "pass", "ok", {"worst": 0.1}, subject="a"),
            CheckResult("dead_neurons", "warn", "hmm", subject="b"),
        ],
        meta={"seed": 3},
    )


def test_json_round_trip_keeps_everything(tmp_path: Path) -> None:
    report = _report()
    path = report.to_json(tmp_path / "deep" / "r.json")
    raw = json.loads(path.read_text())
    assert raw["schema"] == SCHEMA and raw["passed"] is False
    assert raw["results"][0]["evidence"]["loss"][1:] == ["Infinity", "NaN"]
    loaded = nndiag.load_report(path)
    assert loaded.meta == {"seed": 3}
    first = loaded.results[0]
    assert first.cost == Cost(3, 2, 0.5) and first.hint == "lower the lr"
    assert math.isnan(first.metrics["final_loss"]) and math.isinf(first.evidence["loss"][1])
    assert [r.to_dict() for r in loaded] == [r.to_dict() for r in report]


def test_lookup_by_check_and_by_subject() -> None:
    report = _report()
    assert report["overfit_small"].status == "fail"
    assert report["b", "dead_neurons"].status == "warn"
    with pytest.raises(KeyError, match="2 subjects ran 'dead_neurons'"):
        report["dead_neurons"]
    with pytest.raises(KeyError, match="no result for 'gradient_check'"):
        report["gradient_check"]
    assert report.subjects == ["a", "b"] and not report.passed
    assert "1 fail" in repr(report)


def test_passed_ignores_warn_and_skip() -> None:
    report = Report([CheckResult("x", "warn", ""), CheckResult("y", "skip", "")])
    assert report.passed


def test_not_a_report_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"results": []}')
    with pytest.raises(ValueError, match="not an nndiag report"):
        nndiag.load_report(path)


def test_bad_status_is_refused() -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        CheckResult("x", "ok", "")  # type: ignore[arg-type]


def test_diagnose_report_records_environment() -> None:
    import torch

    torch.manual_seed(0)
    subject = nndiag.Subject(torch.nn.Linear(4, 3), (torch.randn(8, 4), torch.arange(8) % 3))
    report = nndiag.diagnose(subject, ["initial_loss"], nndiag.Config(seed=11))
    assert report.meta["seed"] == 11 and report.meta["frameworks"]["torch"] == torch.__version__
    assert report.results[0].subject == "Linear" and report.results[0].cost.forward >= 1


def test_a_write_that_fails_midway_leaves_the_previous_report_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from nndiag.files import write_atomic

    target = tmp_path / "nndiag.json"
    write_atomic(target, '{"old": 1}')

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, '{"new": 2}' * 1000)
    assert target.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["nndiag.json"]  # no temporary left
