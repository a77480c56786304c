"""overfit_small, initial_loss and regularization_loss: the cause each failure names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nndiag
from tests.models import IN, _classification, _he, _mlp, double_softmax, l2_mlp


def _subject(**kwargs: object) -> nndiag.Subject:
    torch.manual_seed(0)
    return nndiag.Subject(_mlp(3, nn.ReLU, _he), _classification(0), **kwargs)


def _overfit(subject: nndiag.Subject) -> nndiag.CheckResult:
    return nndiag.diagnose(subject, ["overfit_small"])["overfit_small"]


def test_overfit_passes_with_evidence_curve() -> None:
    result = _overfit(_subject())
    assert result.status == "pass"
    curve = result.evidence["loss"]
    assert len(curve) == result.metrics["steps"] < 300
    assert curve[-1] <= result.metrics["target_loss"]
    assert result.evidence["accuracy"][-1] == 1.0


def test_learning_rate_too_high_diverges() -> None:
    result = _overfit(_subject(optimizer=lambda p: torch.optim.SGD(p, lr=1e3)))
    assert result.status == "fail" and result.metrics["cause"] == "lr_too_high"
    assert "too high" in result.hint


def test_learning_rate_too_low_is_flat() -> None:
    result = _overfit(_subject(optimizer=lambda p: torch.optim.SGD(p, lr=1e-7)))
    assert result.status == "fail" and result.metrics["cause"] == "flat"
    assert "Raise the learning rate" in result.hint


def test_slow_learning_is_told_apart_from_a_plateau() -> None:
    result = _overfit(_subject(optimizer=lambda p: torch.optim.SGD(p, lr=3e-3)))
    assert result.status == "fail" and result.metrics["cause"] == "slow", result.summary()


def test_double_softmax_plateau_is_explained() -> None:
    result = _overfit(double_softmax(0))
    assert result.metrics["cause"] == "plateau"
    assert "softmax" in result.hint


def test_an_optimizer_instance_is_copied_never_stepped() -> None:
    subject = _subject()
    optimizer = torch.optim.SGD(subject.model.parameters(), lr=0.1, momentum=0.9)
    subject = _subject(optimizer=optimizer)
    before = {k: v for k, v in optimizer.state_dict().items()}
    result = _overfit(subject)
    assert result.status == "pass" and "SGD" in result.metrics["optimizer"]
    assert optimizer.state_dict() == before and not optimizer.state


def test_frozen_graph_part_warns_when_the_rest_still_fits() -> None:
    class Frozen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(IN, 64)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.relu(self.fc1(x)).detach())

    torch.manual_seed(0)
    fast = lambda p: torch.optim.Adam(p, lr=1e-2)  # noqa: E731
    result = _overfit(nndiag.Subject(Frozen(), _classification(0), optimizer=fast))
    assert result.status == "warn"
    assert "fc1.weight" in result.message and result.metrics["never_updated"] == 2


def test_initial_loss_accepts_a_log_prior_bias() -> None:
    torch.manual_seed(0)
    X = torch.randn(200, IN)
    y = torch.cat([torch.zeros(180), torch.ones(20)]).long()  # 90% / 10%
    model = nn.Linear(IN, 2)
    with torch.no_grad():
        model.weight.mul_(0.01)
        model.bias.copy_(torch.tensor([0.9, 0.1]).log())
    result = nndiag.diagnose(nndiag.Subject(model, (X, y)), ["initial_loss"])["initial_loss"]
    assert result.status == "pass", result.summary()
    assert abs(result.metrics["measured"] - result.metrics["expected"]) < 0.02


def test_initial_loss_names_summed_reduction() -> None:
    def summed(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y, reduction="sum")

    result = nndiag.diagnose(_subject(loss=summed), ["initial_loss"])["initial_loss"]
    assert result.status == "warn" and "reduction='sum'" in result.hint


def test_initial_loss_turns_regularization_off() -> None:
    subject = l2_mlp(0)
    subject.model.l2 = 10.0  # a strength that would dominate the loss
    result = nndiag.diagnose(subject, ["initial_loss"])["initial_loss"]
    assert result.status == "pass" and result.metrics["regularization_off"]
    assert subject.model.l2 == 10.0


def test_regularization_sign_error_fails() -> None:
    subject = l2_mlp(0)
    model = subject.model

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y) - model.penalty()

    batch = subject.batches[0]
    subject = nndiag.Subject(model, (batch.X, batch.y), loss=loss, regularization="l2")
    result = nndiag.diagnose(subject, ["regularization_loss"])["regularization_loss"]
    assert result.status == "fail" and "sign" in result.hint


def test_regularization_through_a_setter_function() -> None:
    subject = l2_mlp(0)
    calls: list[float] = []

    def knob(model: nn.Module, strength: float) -> None:
        calls.append(strength)
        model.l2 = strength

    batch = subject.batches[0]
    subject = nndiag.Subject(
        subject.model, (batch.X, batch.y), loss=subject.loss, regularization=knob
    )
    result = nndiag.diagnose(subject, ["regularization_loss"])["regularization_loss"]
    assert result.status == "pass"
    assert calls == [0.0, 1e-3, 1.0, 1e3]
    assert subject.model.l2 == 1e-4  # restored
    assert result.evidence["losses"] == sorted(result.evidence["losses"])


def test_a_tensor_knob_is_replaced_never_written_to() -> None:
    subject = l2_mlp(0)
    model = subject.model
    strength = torch.tensor(1e-4)
    model.l2 = strength  # a plain tensor attribute the penalty reads
    result = nndiag.diagnose(subject, ["regularization_loss"])["regularization_loss"]
    assert result.status == "pass", result.summary()
    assert model.l2 is strength and float(strength) == pytest.approx(1e-4)
