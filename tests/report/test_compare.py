"""The page's comparison with an earlier report, the rerun command, durations and states."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import report_synthetic as synthetic

from nndiag.cli import main
from nndiag.report import render_html, rerun_command
from nndiag.report.compare import compare
from nndiag.results import CheckResult, Cost, Report


def _pair() -> tuple[Report, Report]:
    old = Report(
        [
            CheckResult("initial_loss", "pass", "a", {"measured": 1.10}, subject="net"),
            CheckResult("overfit_small", "fail", "b", {"final_loss": 0.9}, subject="net"),
            CheckResult("numerics", "pass", "c", {"rows": 32}, subject="net"),
            CheckResult("dead_neurons", "pass", "d", subject="gone"),
        ],
        meta={**synthetic.META, "created": "2026-01-01T00:00:00+00:00"},
    )
    new = Report(
        [
            CheckResult("initial_loss", "fail", "a", {"measured": 9.3}, subject="net"),
            CheckResult("overfit_small", "pass", "b", {"final_loss": 0.001}, subject="net"),
            CheckResult("numerics", "pass", "c", {"rows": 32.1}, subject="net"),  # < 1%
            CheckResult("gradient_check", "pass", "e", subject="net"),
        ],
        meta=synthetic.META,
    )
    return new, old


def test_compare_finds_new_failures_fixes_and_moved_metrics() -> None:
    new, old = _pair()
    found = compare(new, old)
    assert [(c.check, c.before, c.after) for c in found.new_failures] == [
        ("initial_loss", "pass", "fail")
    ]
    assert [(c.check, c.before, c.after) for c in found.fixed] == [
        ("overfit_small", "fail", "pass")
    ]
    assert [c.check for c in found.added] == ["gradient_check"]
    assert [(c.subject, c.check) for c in found.removed] == [("gone", "dead_neurons")]
    # Largest relative move first; a change within float noise (1%) is not listed.
    assert [(c.metric, c.old, c.new) for c in found.metrics] == [
        ("final_loss", "0.9", "0.001"),
        ("measured", "1.1", "9.3"),
    ]
    assert compare(new, new).empty


def test_cli_against_puts_the_comparison_on_the_page(tmp_path: Path) -> None:
    new, old = _pair()
    new.to_json(tmp_path / "new.json")
    old.to_json(tmp_path / "old.json")
    assert (
        main(["report", str(tmp_path / "new.json"), "--against", str(tmp_path / "old.json")]) == 0
    )
    html = (tmp_path / "new.html").read_text()
    assert "Compared with the report of 2026-01-01T00:00:00+00:00" in html
    assert "New failures (1)" in html and "Fixed (1)" in html
    assert '<a href="#net::initial_loss">net &middot; initial_loss</a>: pass &rarr; fail' in html
    assert "Metrics that moved by more than 1% (2)" in html
    # Without --against, no comparison.
    assert main(["report", str(tmp_path / "new.json"), "-o", str(tmp_path / "plain.html")]) == 0
    assert 'id="comparison"' not in (tmp_path / "plain.html").read_text()


def test_against_a_missing_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new, _ = _pair()
    new.to_json(tmp_path / "new.json")
    assert main(["report", str(tmp_path / "new.json"), "--against", "nope.json"]) == 2
    assert "no such file: nope.json" in capsys.readouterr().err


def test_rerun_command_and_durations() -> None:
    ran = CheckResult("initial_loss", "pass", "a", cost=Cost(1, 0, 0.5), subject="mlp")
    assert rerun_command(ran) == 'nndiag.diagnose(subject, checks=["initial_loss"])'
    by_pytest = dataclasses.replace(ran, outcome="passed")
    assert rerun_command(by_pytest) == 'pytest --nndiag "nndiag::mlp::initial_loss"'
    # The command its run recorded wins (tests/plugin/test_rerun.py makes them).
    recorded = dataclasses.replace(by_pytest, rerun="cd proj && pytest --nndiag x")
    assert rerun_command(recorded) == "cd proj && pytest --nndiag x"
    slow = CheckResult("overfit_small", "pass", "b", cost=Cost(300, 300, 4.25), subject="mlp")
    html = render_html(Report([by_pytest, slow], meta=synthetic.META))
    assert "rerun: <code>pytest --nndiag &#34;nndiag::mlp::initial_loss&#34;</code>" in html
    # Durations: slowest first, numeric sort keys, each row linked to its result.
    rows = re.findall(
        r'<a href="#mlp::(\w+)">\w+</a></td><td>pass</td><td class="num" '
        r'data-value="([\d.]+)"',
        html,
    )
    assert rows == [("overfit_small", "4.25"), ("initial_loss", "0.5")]


def test_xfail_xpass_and_stale_show_on_the_page() -> None:
    results = [
        CheckResult("initial_loss", "fail", "m", subject="a", outcome="xfailed"),
        CheckResult("numerics", "pass", "m", subject="a", outcome="xpassed-strict"),
        CheckResult("dead_neurons", "fail", "m", subject="a", stale=True),
    ]
    report = Report(results, meta=synthetic.META)
    assert not report.passed  # the strict xpass; the stale fail does not count
    html = render_html(report)
    assert '<span class="badge st-xfail" title="expected to fail (xfail), and it did">' in html
    assert 'data-filter="xpass"' in html and 'class="stale"' in html
    assert '<span class="verdict fail" id="verdict">FAILED</span>' in html
    only_expected = Report(results[:1] + results[2:], meta=synthetic.META)
    assert only_expected.passed
    assert '<span class="verdict pass" id="verdict">PASSED</span>' in render_html(only_expected)
