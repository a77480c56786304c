"""The same seed gives the same report, and healthy models keep their statuses at every
seed: a verdict that flips with the seed is a flake, and nobody can gate CI on a flake."""

from __future__ import annotations

import time
from typing import Any

import pytest

import nndiag
from tests import models
from tests.backends import numpy_models

SWEEP = tuple(range(20))


def _without_timings(report: nndiag.Report) -> list[dict[str, Any]]:
    results = []
    for result in report:
        data = result.to_dict()
        data["cost"].pop("seconds")
        results.append(data)
    return results


@pytest.mark.parametrize("name", ["he_relu_mlp", "cnn_batchnorm", "numpy_he_relu"])
def test_the_same_seed_gives_the_same_report(name: str) -> None:
    def subject() -> nndiag.Subject:
        if name.startswith("numpy_"):
            return nndiag.Subject(numpy_models.net(3, reg=1e-3), numpy_models.data(3))
        return models.HEALTHY[name](3)

    config = nndiag.Config(seed=7)
    first = nndiag.diagnose(subject(), config=config)
    second = nndiag.diagnose(subject(), config=config)
    assert _without_timings(first) == _without_timings(second)


class _Sleepy:
    """A forward hook that sleeps: a slow machine, a loaded CI runner."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        self.calls += 1
        time.sleep(0.002)


@pytest.mark.parametrize("name", ["cnn_batchnorm", "double_softmax"])
def test_a_slow_forward_gets_the_same_verdicts(name: str) -> None:
    # No clock in a verdict: every budget that decides one counts work (steps, passes,
    # rows), so a forward that takes longer changes the seconds and nothing else.
    factory = models.HEALTHY.get(name) or getattr(models, name)
    config = nndiag.Config(seed=3)
    quick = nndiag.diagnose(factory(3), config=config)
    subject, sleepy = factory(3), _Sleepy()
    subject.model.register_forward_hook(sleepy)
    slow = nndiag.diagnose(subject, config=config)
    assert sleepy.calls > 50  # it ran slowly throughout
    assert _without_timings(slow) == _without_timings(quick)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["he_relu_mlp", "default_relu_mlp", "xavier_tanh_mlp"])
def test_healthy_models_pass_at_every_seed(name: str) -> None:
    flips = []
    for seed in SWEEP:
        report = nndiag.diagnose(models.HEALTHY[name](seed), config=nndiag.Config(seed=seed))
        flips += [f"seed {seed}: {r.summary()}" for r in report if r.status not in ("pass", "skip")]
    assert not flips, "\n".join(flips)
