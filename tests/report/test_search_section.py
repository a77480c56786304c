"""The report page's "Hyperparameter search" section: read from the search.json written
beside the page, every user string escaped; no JSON, no section; an unreadable one, a note."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nndiag.report import render_html, write_html
from nndiag.results import Report
from nndiag.tuning import SearchResult, StageRange, TrialRecord

EVIL = "<script>alert(1)</script>"
HEADING = "<h2>Hyperparameter search</h2>"


def search_result() -> SearchResult:
    space = {
        "lr": {"kind": "log", "low": 1e-4, "high": 1.0},
        EVIL: {"kind": "choice", "options": ["relu", EVIL]},
    }
    trials = [
        TrialRecord(0, 0, {"lr": 1e-3, EVIL: "relu"}, "complete", 0.8),
        TrialRecord(1, 0, {"lr": 0.5, EVIL: EVIL}, "pruned", None, "loss 4.1× its start"),
        TrialRecord(2, 0, {"lr": 0.01, EVIL: "relu"}, "fail", None, f"raised {EVIL}"),
        TrialRecord(0, 1, {"lr": 2e-3, EVIL: "relu"}, "complete", 0.9),
    ]
    return SearchResult(
        best_params={"lr": 2e-3, EVIL: "relu"},
        best_value=0.9,
        metric="validation accuracy",
        direction="maximize",
        trials=trials,
        ranges=[
            StageRange(0, 3, 20, space, "the space as given"),
            StageRange(1, 1, 40, space, f"around {EVIL}"),
        ],
        validation="the given validation data",
        storage="sqlite:///reports/search.db",
        study=f"s{EVIL}",
        command=f"nndiag search m:f --study 's{EVIL}'",
    )


def section(html: str) -> str:
    start = html.index(HEADING)
    return html[start : html.index("</section>", start)]


def test_a_search_json_beside_the_page_adds_the_section(
    tmp_path: Path, demo_report: Report
) -> None:
    search_result().to_json(tmp_path / "search.json")
    (tmp_path / "search.html").write_text("stand-in", encoding="utf-8")
    html = write_html(demo_report, tmp_path / "nndiag.html").read_text(encoding="utf-8")
    part = section(html)
    assert "best validation accuracy</th><td>0.9 (maximize)" in part
    assert "<code>lr=0.002</code>" in part
    assert "2 complete &middot; 1 pruned &middot; 1 fail" in part
    assert "lr: 0.0001 .. 1 (log)" in part
    assert "one of relu, &lt;script&gt;alert(1)&lt;/script&gt;" in part
    assert "<td>2</td><td>1</td><td>40</td>" in part
    assert "nndiag search m:f --study &#39;s&lt;script&gt;alert(1)&lt;/script&gt;&#39;" in part
    assert '<a href="search.html">' in part
    # The study, a param name, a choice and a stage's reason: all escaped, never markup.
    assert "<td>s&lt;script&gt;alert(1)&lt;/script&gt;</td>" in part
    assert "<code>&lt;script&gt;alert(1)&lt;/script&gt;=relu</code>" in part
    assert "<script>alert" not in html


def test_no_search_json_no_section(tmp_path: Path, demo_report: Report) -> None:
    html = write_html(demo_report, tmp_path / "nndiag.html").read_text(encoding="utf-8")
    assert "Hyperparameter search" not in html
    assert render_html(demo_report) == html


def test_no_link_without_the_search_page(tmp_path: Path, demo_report: Report) -> None:
    search_result().to_json(tmp_path / "search.json")
    html = write_html(demo_report, tmp_path / "nndiag.html").read_text(encoding="utf-8")
    assert HEADING in html and 'href="search.html"' not in html


def test_an_unreadable_search_json_is_a_note(tmp_path: Path, demo_report: Report) -> None:
    for text in ("{not json", '{"schema": "other"}', "[1, 2]", '{"schema": "nndiag.search/1"}'):
        (tmp_path / "search.json").write_text(text, encoding="utf-8")
        part = section(write_html(demo_report, tmp_path / "nndiag.html").read_text("utf-8"))
        assert '<p class="note">search.json could not be read: ' in part
        assert "<table" not in part


def test_rendering_reads_the_json_without_optuna(tmp_path: Path) -> None:
    search_result().to_json(tmp_path / "search.json")
    code = (
        "import sys; from nndiag.report import write_html; from nndiag.results import Report;"
        f"write_html(Report([]), {str(tmp_path / 'nndiag.html')!r});"
        "assert 'optuna' not in sys.modules and 'nndiag.tuning' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert HEADING in (tmp_path / "nndiag.html").read_text(encoding="utf-8")


def test_a_page_rendered_elsewhere_keeps_the_section_and_links_back(
    tmp_path: Path, demo_report: Report
) -> None:
    from nndiag.cli import main

    reports = tmp_path / "reports"
    reports.mkdir()
    search_result().to_json(reports / "search.json")
    (reports / "search.html").write_text("stand-in", encoding="utf-8")
    demo_report.to_json(reports / "nndiag.json")
    original = write_html(demo_report, reports / "nndiag.html").read_text(encoding="utf-8")
    elsewhere = tmp_path / "site" / "page.html"
    assert main(["report", str(reports / "nndiag.json"), "-o", str(elsewhere)]) == 0
    moved = elsewhere.read_text(encoding="utf-8")
    assert section(moved).replace("../reports/search.html", "search.html") == section(original)
    assert '<a href="../reports/search.html">' in section(moved)
