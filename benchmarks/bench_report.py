"""HTML report rendering: 20 subjects x 10 checks with realistic evidence.

Run with ``pytest benchmarks/bench_report.py``. The baselines in the same run (the page
without plots, one plot of each kind) tell where the time goes: drawing dominates.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from nndiag.report import plots, render_html
from nndiag.results import Report

# Seconds: generous for a 2-core machine (about 10 s there); minutes would be a regression.
BUDGET = 60.0


def _synthetic() -> ModuleType:
    # The generator lives with the report tests; load it by path (tests/ is no package).
    path = Path(__file__).resolve().parents[1] / "tests" / "report" / "report_synthetic.py"
    spec = importlib.util.spec_from_file_location("report_synthetic", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


synthetic = _synthetic()


@pytest.fixture(scope="module")
def big() -> Report:
    report = synthetic.big_report(subjects=20, checks=10)
    assert len(report) == 200
    render_html(synthetic.demo_report())  # warm matplotlib's font cache outside the timing
    return report


def test_render_20_subjects_x_10_checks(benchmark, big: Report) -> None:
    html = benchmark.pedantic(render_html, args=(big,), rounds=2, iterations=1)
    assert html.count('<details class="result') == 200
    benchmark.extra_info["images"] = html.count("<img ")
    benchmark.extra_info["megabytes"] = round(len(html.encode()) / 2**20, 2)
    benchmark.extra_info["within_budget"] = benchmark.stats.stats.max < BUDGET


def test_baseline_page_without_plots(
    benchmark, big: Report, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Template, formatting and JSON normalisation alone."""
    monkeypatch.setattr(plots, "PLOTTERS", {})
    html = benchmark.pedantic(render_html, args=(big,), rounds=3, iterations=1)
    assert "<img " not in html


@pytest.mark.parametrize("check", sorted(synthetic.BUILDERS))
def test_one_plot(benchmark, check: str) -> None:
    result = synthetic.result("net", check, "fail")
    drawn = benchmark.pedantic(
        plots.plots_for, args=(result,), rounds=5, iterations=1, warmup_rounds=1
    )
    assert drawn and all(p.uri for p in drawn)
