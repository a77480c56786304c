"""The search's page and JSON: the plots are drawn, user strings are escaped, the JSON
carries every trial and reads back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import nndiag
from nndiag.tuning import SearchResult, StageRange, TrialRecord, load_search

pytest.importorskip("matplotlib")

EVIL = "<script>alert(1)</script>"


def result() -> SearchResult:
    space: dict[str, Any] = {
        "lr": {"kind": "log", "low": 1e-4, "high": 1.0},
        "act": {"kind": "choice", "options": ["relu", EVIL]},
    }
    trials = [
        TrialRecord(
            0,
            0,
            {"lr": 1e-3, "act": "relu"},
            "complete",
            0.8,
            "",
            20,
            [2.0, 1.0],
            1,
            [(20, 0.8)],
            0.1,
        ),
        TrialRecord(
            1,
            0,
            {"lr": 0.5, "act": EVIL},
            "pruned",
            None,
            "loss 4.1× its start at step 2",
            3,
            [2.0, 5.0, 9.0],
        ),
        TrialRecord(2, 0, {"lr": 0.01, "act": "relu"}, "fail", None, f"model(X) raised {EVIL}"),
        TrialRecord(
            0,
            1,
            {"lr": 2e-3, "act": "relu"},
            "complete",
            0.9,
            "",
            40,
            [2.0, 0.5],
            1,
            [(40, 0.9)],
            0.2,
        ),
    ]
    return SearchResult(
        best_params={"lr": 2e-3, "act": "relu"},
        best_value=0.9,
        metric="validation accuracy",
        direction="maximize",
        trials=trials,
        ranges=[
            StageRange(0, 3, 20, space, "the space as given"),
            StageRange(1, 1, 40, space, f"around {EVIL}"),
        ],
        validation="the given validation data (10 samples)",
        storage="sqlite:///reports/search.db",
        study=f"s{EVIL}",
        command=f"nndiag search m:f --study 's{EVIL}'",
    )


def test_page_has_plots_and_escapes_user_strings(tmp_path: Path) -> None:
    path = result().to_html(tmp_path / "search.html")
    html = path.read_text()
    assert EVIL not in html and "&lt;script&gt;" in html
    assert html.count("data:image/png;base64,") == 3  # lr, act, the loss curves
    assert "loss 4.1× its start at step 2" in html
    assert "nndiag search m:f" in html
    assert "1 pruned" in html and "2 complete" in html


def test_json_carries_the_trials_and_reads_back(tmp_path: Path) -> None:
    original = result()
    path = original.to_json(tmp_path / "search.json")
    again = load_search(path)
    assert again == original
    assert [t.state for t in again.trials] == ["complete", "pruned", "fail", "complete"]


def test_a_real_search_renders(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from tests.search import helpers as h

    found = nndiag.search(
        h.regression,
        {"lr": nndiag.LogUniform(1e-3, 1.0)},
        trials=4,
        stages=1,
        steps=5,
        validation=h.validation_data(),
        storage=f"sqlite:///{tmp_path / 's.db'}",
    )
    html = found.to_html(tmp_path / "page.html").read_text()
    assert "validation loss against lr" in html and found.command in html.replace("&#39;", "'")
