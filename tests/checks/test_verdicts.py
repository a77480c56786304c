"""Every check passes on healthy models and fails on the bug it exists for, across seeds."""

from __future__ import annotations

import pytest

import nndiag
from tests.models import BROKEN, HEALTHY

SEEDS = (0, 1, 2)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_models_pass_every_check(name: str, seed: int) -> None:
    report = nndiag.diagnose(HEALTHY[name](seed), config=nndiag.Config(seed=seed))
    bad = [r.summary() for r in report if r.status not in ("pass", "skip")]
    assert not bad, "\n".join(bad)
    assert report.passed


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_models_fail_their_check(name: str, seed: int) -> None:
    build, check = BROKEN[name]
    report = nndiag.diagnose(build(seed), checks=[check], config=nndiag.Config(seed=seed))
    result = report[check]
    assert result.status == "fail", result.summary()
    assert not report.passed
    assert result.hint


def test_skips_say_why() -> None:
    report = nndiag.diagnose(HEALTHY["xavier_tanh_mlp"](0))
    assert report["regularization_loss"].status == "skip"
    assert "regularization=" in report["regularization_loss"].message
    assert report["dead_neurons"].status == "skip"
    assert "ReLU" in report["dead_neurons"].message
