"""The report files of ``pytest --nndiag`` agree with pytest: expected failures and
unexpected passes are states of their own, ``passed`` is pytest's verdict, and a partial run
merges into the existing report instead of replacing it."""

from __future__ import annotations

import pytest

from .conftest import Project

# A user's own non-strict xfail on an nndiag item (pytest's marker, added by their conftest).
NON_STRICT = """

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if item.nodeid == "nndiag::warns::dead_neurons":
            item.add_marker(pytest.mark.xfail(reason="known dead unit", strict=False))
"""


def _by_key(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["subject"], r["check"]): r for r in report["results"]}


def test_xfail_and_xpass_are_states_and_passed_is_pytests_verdict(project: Project) -> None:
    conftest = project.path / "conftest.py"
    conftest.write_text(conftest.read_text() + NON_STRICT)
    (project.path / "pyproject.toml").write_text(
        "[tool.nndiag.overrides.huge_init]\nxfail = ['initial_loss']\n"
        "[tool.nndiag.overrides.mlp]\nxfail = ['initial_loss']\n"
    )
    args = (
        "--nndiag",
        "--nndiag-checks",
        "initial_loss,dead_neurons",
        "-k",
        "mlp or huge or warns",
    )
    result = project.run(*args)
    # mlp passes a check its override expects to fail: pytest's strict xfail fails the run.
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1, xfailed=1, xpassed=1)
    report = project.report()
    found = _by_key(report)
    assert {k: (r["status"], r["outcome"], r["state"]) for k, r in found.items()} == {
        ("mlp", "initial_loss"): ("pass", "xpassed-strict", "xpass"),
        ("mlp", "dead_neurons"): ("pass", "passed", "pass"),
        ("huge_init", "initial_loss"): ("fail", "xfailed", "xfail"),
        ("warns", "dead_neurons"): ("warn", "xpassed", "xpass"),
    }
    assert report["passed"] is False
    summary = result.stdout.str()
    assert "4 results: 1 pass, 1 xfail, 2 xpass" in summary
    html = (project.path / "reports" / "nndiag.html").read_text()
    assert "FAILED" in html and 'class="badge st-xfail"' in html and "st-xpass" in html
    assert "expected to fail (strict xfail), but it passed" in html

    # Without the strict unexpected pass, pytest passes the run, and so do the files.
    (project.path / "pyproject.toml").write_text(
        "[tool.nndiag.overrides.huge_init]\nxfail = ['initial_loss']\n"
    )
    (project.path / "reports" / "nndiag.json").unlink()
    result = project.run(*args)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=2, xfailed=1, xpassed=1)
    report = project.report()
    assert report["passed"] is True
    assert _by_key(report)["huge_init", "initial_loss"]["state"] == "xfail"
    assert "3 pass" not in result.stdout.str()  # the fail shows as xfail, not fail
    assert "2 pass, 1 xfail, 1 xpass" in result.stdout.str()
    assert (
        '<span class="verdict pass" id="verdict">PASSED</span>'
        in (project.path / "reports" / "nndiag.html").read_text()
    )


def test_a_partial_run_merges_into_the_report_and_marks_the_rest_stale(project: Project) -> None:
    (project.path / "pyproject.toml").write_text(
        "[tool.nndiag]\nsubjects = ['subjects:plain']\n"
        "[tool.nndiag.overrides.plain]\nchecks = ['initial_loss', 'numerics']\n"
    )
    full = project.run("--nndiag", "--nndiag-checks", "initial_loss,numerics", "-k", "mlp or plain")
    before = _by_key(project.report())
    assert len(before) == 4 and not any(r.get("stale") for r in before.values())
    assert "nndiag report: reports/nndiag.json" in full.stdout.str()
    assert "merged" not in full.stdout.str()

    partial = project.run("--nndiag", "-k", "mlp and initial_loss")
    partial.assert_outcomes(passed=1)
    after = _by_key(project.report())
    assert list(after) == list(before)  # same results, same order
    stale = {k for k, r in after.items() if r.get("stale")}
    assert stale == set(before) - {("mlp", "initial_loss")}
    assert after["mlp", "initial_loss"]["outcome"] == "passed"
    assert after["plain", "numerics"]["outcome"] == "passed"  # as the earlier run left it
    partial.stdout.fnmatch_lines(
        [
            "nndiag report: reports/nndiag.json",
            "nndiag report: 1 result(s) of this run merged with 3 kept from earlier runs*stale",
        ]
    )
    html = (project.path / "reports" / "nndiag.html").read_text()
    assert html.count('class="stale"') == 3 and "3 stale" in html

    # A check a subject no longer runs leaves the report; one it runs again is fresh.
    (project.path / "pyproject.toml").write_text(
        "[tool.nndiag]\nsubjects = ['subjects:plain']\n"
        "[tool.nndiag.overrides.plain]\nchecks = ['initial_loss']\n"
    )
    project.run("--nndiag", "-k", "plain")
    again = _by_key(project.report())
    assert ("plain", "numerics") not in again
    assert not again["plain", "initial_loss"].get("stale")
    assert again["mlp", "numerics"]["stale"] is True
