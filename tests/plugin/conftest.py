"""Fixtures of the plugin's tests: a small user project, written into a pytester directory.

The project's conftest imports nndiag only; its factories import torch, so a run that
never calls a factory (``--collect-only``, a run without ``--nndiag``) stays fast.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # pytester's fixtures. (`pytest_plugins = ["pytester"]` is only allowed in the rootdir's
    # conftest; this directory's conftest loads during collection.)
    if not config.pluginmanager.has_plugin("pytester"):
        config.pluginmanager.import_plugin("pytester")


MODELS = '''
import torch
from torch import nn


def data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


class BatchMixer(nn.Module):
    """Bug: subtracts the batch mean inside forward."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return self.net(x - x.mean(0))

'''

SUBJECTS = '''
import nndiag


def plain():
    """A plain function listed in [tool.nndiag] subjects (no decorator). Torch loads when it
    runs, not when pytest imports this module to collect it."""
    from models import data, mlp
    return nndiag.Subject(mlp(1), data())
'''

CONFTEST = """
import os

import nndiag
from nndiag.results import Report


def log(event):
    path = os.environ.get("NNDIAG_TEST_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(f"{event} {os.getpid()}\\n")


_to_json = Report.to_json


def _logged_to_json(self, path):
    log("to_json")
    return _to_json(self, path)


Report.to_json = _logged_to_json


@nndiag.subject(name="mlp")
def healthy():
    log("factory:mlp")
    from models import data, mlp
    return nndiag.Subject(mlp(), data())


@nndiag.subject(checks=["initial_loss", "gradient_check"])
def huge_init():
    log("factory:huge_init")
    import torch
    from models import data, mlp
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(100)
    return nndiag.Subject(model, data())


@nndiag.subject(checks="dead_neurons", dead_warn=0.0, dead_fail=1.0)
def warns():
    log("factory:warns")
    import torch
    from models import data, mlp
    model = mlp()
    with torch.no_grad():
        model[0].bias[0] = -100.0  # one dead unit: more than dead_warn = 0
    return nndiag.Subject(model, data())


@nndiag.subject(checks=["batch_independence", "numerics"])
def mixer():
    log("factory:mixer")
    from models import BatchMixer, data
    return nndiag.Subject(BatchMixer(), data())


@nndiag.subject(checks=["initial_loss", "gradient_check"])
def broken_factory():
    log("factory:broken_factory")
    raise RuntimeError("weights file not found")
"""

PYPROJECT = """
[tool.nndiag]
subjects = ["subjects:plain"]
overfit-lr = 0.01
property-examples = 15

[tool.nndiag.overrides.plain]
checks = ["initial_loss", "gradient_check", "numerics"]

[tool.nndiag.overrides.huge_init]
xfail = ["initial_loss"]
"""

TEST_FILE = """
def test_ordinary():
    assert True
"""


class Project:
    """The user project of these tests, and helpers to run pytest on it and read results."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.path = pytester.path
        self.log = pytester.path / "events.log"

    def run(self, *args: str) -> pytest.RunResult:
        """pytest in a fresh interpreter (the plugin loads from its entry point)."""
        return self.pytester.runpytest_subprocess(*args)

    def report(self, directory: str = "reports") -> dict[str, Any]:
        return json.loads((self.path / directory / "nndiag.json").read_text())

    def statuses(self, directory: str = "reports") -> dict[tuple[str, str], str]:
        return {(r["subject"], r["check"]): r["status"] for r in self.report(directory)["results"]}

    def events(self) -> list[tuple[str, int]]:
        if not self.log.exists():
            return []
        return [
            (event, int(pid))
            for event, pid in (line.split() for line in self.log.read_text().splitlines())
        ]

    def write(self, name: str, text: str) -> Path:
        path = self.path / name
        path.write_text(textwrap.dedent(text))
        return path


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Project:
    pytester.makepyfile(
        models=MODELS, subjects=SUBJECTS, conftest=CONFTEST, test_ordinary=TEST_FILE
    )
    (pytester.path / "pyproject.toml").write_text(PYPROJECT)
    # One torch thread per process: xdist's workers would otherwise oversubscribe the cores,
    # and serial and parallel runs must do the same arithmetic to compare equal.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("NNDIAG_TEST_LOG", str(pytester.path / "events.log"))
    monkeypatch.delenv("CI", raising=False)
    return Project(pytester)
