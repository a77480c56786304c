"""The rerun command a report prints works from where the run was launched: a project run
as ``pytest --nndiag proj/`` from the directory above it reruns one check with the
project's own settings (its xfails kept) and merges into the same report; subjects declared
beside the root's ``testpaths`` rerun from their conftest's directory; each result keeps the
command of the run that made it."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nndiag._pytest import rerun
from tests.plugin.conftest import CONFTEST, MODELS, PYPROJECT, TEST_FILE

_SETTINGS = (
    PYPROJECT.split("[tool.nndiag.overrides.plain]")[0].replace(
        'subjects = ["subjects:plain"]\n', ""
    )
    + '[tool.nndiag.overrides.mixer]\nxfail = ["batch_independence"]\n'
)


def _commands(report: Path) -> set[str]:
    page = (report / "nndiag.html").read_text()
    return {html.unescape(c) for c in re.findall(r"rerun: <code>(.*?)</code>", page)}


def _run(command: str, where: Path) -> subprocess.CompletedProcess[str]:
    python = f"{sys.executable} -m pytest -p no:randomly"
    return subprocess.run(
        command.replace("pytest", python, 1), shell=True, cwd=where, capture_output=True, text=True
    )


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
    commands = _commands(pytester.path / "reports")
    rerun = next(c for c in commands if "mixer::batch_independence" in c)
    selected = '"nndiag::mixer::batch_independence"'
    assert rerun == f"cd proj && pytest --nndiag {selected} --nndiag-report=../reports"
    done = _run(rerun, pytester.path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 xfailed" in done.stdout  # the project's own xfail, not a failure
    results = json.loads((pytester.path / "reports" / "nndiag.json").read_text())["results"]
    fresh = {(r["subject"], r["check"]) for r in results if not r.get("stale")}
    assert fresh == {("mixer", "batch_independence")}
    assert len(results) > 1  # merged: the first run's other results kept, marked stale
    # Each result keeps the command of its own run: the kept ones were launched above proj.
    assert all(r["rerun"].startswith("cd proj && ") for r in results if r.get("stale"))
    fresh_command = next(r["rerun"] for r in results if not r.get("stale"))
    assert fresh_command == f"pytest --nndiag {selected} --nndiag-report=../reports"


def test_subjects_beside_the_testpaths_rerun_from_their_conftest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The root's testpaths name tests/ only; the subjects live in models/conftest.py.
    (pytester.path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n\n' + _SETTINGS
    )
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_plain.py").write_text(TEST_FILE)
    models = pytester.path / "models"
    models.mkdir()
    (models / "models.py").write_text(MODELS)
    (models / "conftest.py").write_text(CONFTEST)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("CI", raising=False)
    first = pytester.runpytest_subprocess("--nndiag", "models", "-k", "mixer")
    assert first.ret == pytest.ExitCode.OK, first.stdout.str()[-2000:]
    rerun = next(c for c in _commands(pytester.path / "reports") if "batch_independence" in c)
    selected = '"nndiag::mixer::batch_independence"'
    assert rerun == f"cd models && pytest --nndiag {selected} --nndiag-report=../reports"
    done = _run(rerun, pytester.path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 xfailed" in done.stdout
    assert not (models / "reports").exists()  # merged into the root's report


@pytest.mark.parametrize(
    ("path", "posix", "windows"),
    [
        ("models/v2", "models/v2", "models/v2"),
        ("my models", '"my models"', '"my models"'),
        ("it's", '"it\'s"', '"it\'s"'),
        ("$HOME x", "'$HOME x'", '"$HOME x"'),
    ],
)
def test_a_path_is_one_word_for_posix_shells_and_cmd(
    path: str, posix: str, windows: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rerun._quote(path) == posix
    monkeypatch.setattr(rerun.os, "name", "nt")
    assert rerun._quote(path) == windows
