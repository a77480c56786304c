"""The rerun command a report prints works from where the run was launched: a project run
as ``pytest --nndiag proj/`` from the directory above it reruns one check with the
project's own settings (its xfails kept) and merges into the same report."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys

import pytest

from tests.plugin.conftest import CONFTEST, MODELS, PYPROJECT


def test_the_printed_rerun_command_works_from_the_launch_directory(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = pytester.path / "proj"
    project.mkdir()
    (project / "models.py").write_text(MODELS)
    (project / "conftest.py").write_text(CONFTEST)
    # The shared settings less the listed subject and its override; the bugs as xfails.
    settings = PYPROJECT.split("[tool.nndiag.overrides.plain]")[0]
    settings = settings.replace('subjects = ["subjects:plain"]\n', "")
    (project / "pyproject.toml").write_text(
        settings
        + '[tool.nndiag.overrides.huge_init]\nxfail = ["initial_loss"]\n\n'
        + '[tool.nndiag.overrides.mixer]\nxfail = ["batch_independence"]\n'
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("CI", raising=False)
    first = pytester.runpytest_subprocess("--nndiag", "proj", "-k", "mixer or huge_init")
    assert first.ret == pytest.ExitCode.OK, first.stdout.str()[-2000:]
    page = (pytester.path / "reports" / "nndiag.html").read_text()
    commands = {html.unescape(c) for c in re.findall(r"rerun: <code>(.*?)</code>", page)}
    rerun = next(c for c in commands if "mixer::batch_independence" in c)
    selected = '"nndiag::mixer::batch_independence"'
    assert rerun == f"cd proj && pytest --nndiag {selected} --nndiag-report=../reports"
    done = subprocess.run(
        rerun.replace("pytest", f"{sys.executable} -m pytest -p no:randomly", 1),
        shell=True,
        cwd=pytester.path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 xfailed" in done.stdout  # the project's own xfail, not a failure
    results = json.loads((pytester.path / "reports" / "nndiag.json").read_text())["results"]
    fresh = {(r["subject"], r["check"]) for r in results if not r.get("stale")}
    assert fresh == {("mixer", "batch_independence")}
    assert len(results) > 1  # merged: the first run's other results kept, marked stale
