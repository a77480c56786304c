"""The opt-in training check: a short real training run of the subject under the training
monitor's rules passes on healthy subjects fed either way, fails a diverging one with the
rule's cause, and skips without the subject's own optimizer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nndiag


def _subject(seed: int, lr: float, loader: bool) -> nndiag.Subject:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1024, 20, generator=g)
    y = (x @ torch.randn(20, 5, generator=g)).argmax(1)
    model = nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
    )
    data = (
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
        if loader
        else (x[:128], y[:128])
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return nndiag.Subject(model, data, optimizer=opt)


@pytest.mark.parametrize("loader", [True, False], ids=["loader", "one_batch"])
@pytest.mark.parametrize("seed", range(20))
def test_a_healthy_run_passes(seed: int, loader: bool) -> None:
    result = nndiag.diagnose(_subject(seed, 0.05, loader), ["training"], progress=False)["training"]
    assert result.status == "pass", result.summary()
    assert (
        result.metrics["steps"] == 200
        and result.metrics["loss_last"] < result.metrics["loss_first"]
    )
    rules = {row["rule"]: row["status"] for row in result.evidence["rules"]}
    assert rules["generalization_gap"] == "skip"  # memorising the held batches is healthy
    assert rules["dying_units"] == rules["update_ratio"] == "pass"


@pytest.mark.parametrize("seed", range(5))
def test_a_diverging_run_fails_with_its_rule(seed: int) -> None:
    result = nndiag.diagnose(_subject(seed, 50.0, True), ["training"], progress=False)["training"]
    assert result.status == "fail", result.summary()
    assert {"loss_spike_step", "nonfinite_step"} & set(result.metrics), result.metrics
    assert result.metrics["steps"] < 20  # stopped once a fatal rule fired
    assert result.hint and "learning rate (50)" in result.hint


def test_without_the_subjects_optimizer_it_skips() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    subject = nndiag.Subject(model, (torch.randn(16, 4), torch.randint(0, 3, (16,))))
    result = nndiag.diagnose(subject, ["training"], progress=False)["training"]
    assert result.status == "skip" and "nndiag's default" in result.message
