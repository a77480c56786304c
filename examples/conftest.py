"""The subjects ``pytest --nndiag`` checks in this example project.

Each function returns an ``nndiag.Subject``; the decorator marks it for the plugin, which
calls it lazily (once per test process) when the first of its checks runs. The broken
models' expected failures are listed in pyproject.toml ([tool.nndiag.overrides.<name>]
xfail), so this project's run passes exactly when nndiag catches every planted bug.

Frameworks are imported inside the functions, not at the top: pytest loads this file in
every process, and under ``pytest -n 2`` xdist's controller, which runs no check, then starts
its workers seconds sooner.
"""

from __future__ import annotations

import os

import pytest

import nndiag


def pytest_configure(config: pytest.Config) -> None:
    """The recommended Hypothesis setup: derandomized in CI, so a run there never flakes,
    and no example database there. Hypothesis's files (its example database, its constants
    cache) live in pytest's cache directory (.pytest_cache/d/hypothesis), not in a
    .hypothesis/ folder of the project root. Loaded before the test modules, whose
    ``@settings`` inherit the profile, and only where tests run."""
    if not _runs_tests(config):
        return
    from hypothesis import settings
    from hypothesis.configuration import set_hypothesis_home_dir

    cache = getattr(config, "cache", None)  # None under -p no:cacheprovider
    if cache is not None:
        set_hypothesis_home_dir(cache.mkdir("hypothesis"))
    settings.register_profile("ci", derandomize=True, deadline=None, database=None)
    settings.load_profile("ci" if os.environ.get("CI") else "default")


def _runs_tests(config: pytest.Config) -> bool:
    """False on pytest-xdist's controller (``-n 2``), which hands the tests to its workers
    and runs none: it has no use for Hypothesis, a second to import."""
    return hasattr(config, "workerinput") or getattr(config.option, "dist", "no") == "no"


@nndiag.subject(name="mlp")
def healthy_mlp() -> nndiag.Subject:
    """A healthy MLP with L2 regularization the checks can switch off and on."""
    from zoo import MLP, blobs, seeded

    model = seeded(MLP)
    return nndiag.Subject(model, blobs(), loss=model.loss, regularization="reg")


@nndiag.subject
def mlp_loader() -> nndiag.Subject:
    """The healthy MLP fed as a training loop feeds it: a DataLoader of 32-row batches."""
    from torch.utils.data import DataLoader, TensorDataset
    from zoo import MLP, blobs, seeded

    model = seeded(MLP)
    batches = DataLoader(TensorDataset(*blobs()), batch_size=32, shuffle=False)
    return nndiag.Subject(model, batches, loss=model.loss, regularization="reg")


@nndiag.subject
def huge_last_layer() -> nndiag.Subject:
    """Bug: last-layer weights 50x too large, so the scores at init are overconfident."""
    import torch
    from zoo import MLP, blobs, seeded

    model = seeded(MLP)
    with torch.no_grad():
        model.net[4].weight.mul_(50)
    return nndiag.Subject(model, blobs())


@nndiag.subject
def dead_relu() -> nndiag.Subject:
    """Bug: the first layer's bias is initialized to -10, so its ReLUs never fire."""
    import torch
    from zoo import MLP, blobs, seeded

    model = seeded(MLP)
    with torch.no_grad():
        model.net[0].bias.fill_(-10.0)
    return nndiag.Subject(model, blobs())


@nndiag.subject(checks=["initial_loss", "gradient_check", "batch_independence"])
def batch_mixer() -> nndiag.Subject:
    """Bug: standardizes inputs with the batch's statistics inside forward."""
    from zoo import BatchMixer, blobs, seeded

    return nndiag.Subject(seeded(BatchMixer), blobs())


@nndiag.subject(checks=["initial_loss", "gradient_check"], gradient_coordinates=4)
def custom_backward() -> nndiag.Subject:
    """Bug: a hand-written ReLU whose backward forgets the mask."""
    from zoo import CustomBackward, blobs, seeded

    return nndiag.Subject(seeded(CustomBackward), blobs())
