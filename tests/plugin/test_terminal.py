"""What ``pytest --nndiag`` prints: the header's checks, a pass's numbers under ``-v``."""

from __future__ import annotations

import pytest

from .conftest import Project


def test_header_says_which_checks_run_and_v_shows_a_pass_s_numbers(project: Project) -> None:
    (project.path / "pyproject.toml").write_text(
        "[tool.nndiag]\nchecks = ['initial_loss', 'numerics']\n"
    )
    result = project.run("--nndiag", "-v", "-k", "mlp and initial_loss")
    assert result.ret == pytest.ExitCode.OK
    text = result.stdout.str()
    assert (
        "checks: each subject's own, else [tool.nndiag] checks initial_loss,numerics, strict: off"
        in text
    )
    result.stdout.fnmatch_lines(
        ["nndiag::mlp::initial_loss PASSED Loss at init * on 32 samples, expected *"]
    )
    # Without [tool.nndiag] checks, the header counts what runs by default.
    (project.path / "pyproject.toml").write_text("")
    plain = project.run("--nndiag", "--collect-only")
    from nndiag.checks import default_checks

    count = len(default_checks())
    plain.stdout.fnmatch_lines([f"*checks: each subject's own, else the {count} default,*"])
