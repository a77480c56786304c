"""The docs' check tables and counts follow the registry: a check added, renamed or given a
plot cannot leave them stale."""

from __future__ import annotations

import re
from pathlib import Path

from nndiag.checks import BUILTIN, default_checks
from nndiag.config import Config
from nndiag.report.plots import PLOTTERS

ROOT = Path(__file__).resolve().parents[1]


def _table_ids(text: str, header: str) -> list[str]:
    """The check ids in the first column of the markdown table under ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        found = re.match(r"\| `(\w+)`", line)
        if found:
            rows.append(found.group(1))
    return rows


def test_the_readme_table_lists_every_check_in_registry_order() -> None:
    text = (ROOT / "README.md").read_text()
    assert _table_ids(text, "| check | what it asks |") == [spec.id for spec in BUILTIN]
    opt_in = {spec.id for spec in BUILTIN if not spec.default}
    marked = set(re.findall(r"\| `(\w+)` \(opt-in\)", text))
    assert marked == opt_in


def test_the_report_docs_plot_table_lists_every_check_with_a_plot() -> None:
    text = (ROOT / "docs" / "report.md").read_text()
    assert set(_table_ids(text, "| check | plot |")) == set(PLOTTERS)


def test_counts_quoted_in_the_docs_match_the_registry() -> None:
    texts = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    quoted = []
    for path in texts:
        text = path.read_text()
        quoted += [
            (path.name, "default", int(n)) for n in re.findall(r"else the (\d+) default", text)
        ]
        quoted += [
            (path.name, "default", int(n)) for n in re.findall(r"(\d+) default checks", text)
        ]
    assert quoted  # the run header's "else the N default" is quoted in docs/pytest.md
    expected = {"default": len(default_checks())}
    assert [q for q in quoted if q[2] != expected[q[1]]] == []


def test_the_calibration_quotes_the_configured_initial_loss_bands() -> None:
    calibration = (ROOT / "docs" / "calibration.md").read_text()
    warn, fail = Config().initial_loss_warn, Config().initial_loss_fail
    assert f"+{warn:.0%}/+{fail:.0%}" in calibration
    assert "10% warn, 25% fail" not in calibration


def test_the_pytest_guide_lists_the_default_and_opt_in_checks() -> None:
    text = (ROOT / "docs" / "pytest.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `initial_loss`")]
    assert len(rows) == 1
    assert re.findall(r"`(\w+)`", rows[0].split("|")[1]) == list(default_checks())
    opt_in = [line for line in text.splitlines() if line.startswith("| `learning_rate`")]
    assert [re.findall(r"`(\w+)`", row.split("|")[1]) for row in opt_in] == [
        [spec.id for spec in BUILTIN if not spec.default]
    ]
