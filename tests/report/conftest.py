from __future__ import annotations

import pytest
import report_synthetic as synthetic

from nndiag.report import render_html
from nndiag.results import Report


@pytest.fixture(scope="session")
def demo_report() -> Report:
    return synthetic.demo_report()


@pytest.fixture(scope="session")
def demo_html(demo_report: Report) -> str:
    return render_html(demo_report)


@pytest.fixture(scope="session")
def hostile_report() -> Report:
    return synthetic.hostile_report()


@pytest.fixture(scope="session")
def hostile_html(hostile_report: Report) -> str:
    return render_html(hostile_report)
