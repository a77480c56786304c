"""A diagnosis never changes the user's model or any global state: checked bit for bit."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nndiag
from tests.models import CLASSES, HEALTHY


class Everything(nn.Module):
    """BatchNorm buffers, dropout, a frozen layer, a submodule left in eval mode, tied
    weights, an L2 knob the loss reads, and an attribute alias of a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.3)
        self.frozen = nn.Linear(8 * 8 * 8, 32)
        self.frozen.requires_grad_(False)
        self.enc = nn.Linear(32, 32)
        self.dec = nn.Linear(32, 32)
        self.dec.weight = self.enc.weight  # tied
        self.head = nn.Linear(32, CLASSES)
        self.head.eval()  # a mode the user chose; must survive
        self.l2 = 1e-3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        x = self.drop(torch.tanh(self.frozen(x.flatten(1))))
        x = F.relu(self.dec(F.relu(self.enc(x))))
        return self.head(x)


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "tensors": [
            (n, t.detach().clone(), t.dtype, t.data_ptr(), t.requires_grad)
            for n, t in [*model.named_parameters(), *model.named_buffers()]
        ],
        "objects": [id(t) for t in [*model.parameters(), *model.buffers()]],
        "grads": [
            (id(p.grad), None if p.grad is None else p.grad.clone()) for p in model.parameters()
        ],
        "training": [m.training for m in model.modules()],
        "attributes": {k: v for k, v in vars(model).items() if isinstance(v, (int, float))},
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
        "default_dtype": torch.get_default_dtype(),
        "grad_enabled": torch.is_grad_enabled(),
    }


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    for (n, t0, d0, p0, r0), (_, t1, d1, p1, r1) in zip(before["tensors"], after["tensors"]):
        assert (d0, p0, r0) == (d1, p1, r1), n
        assert torch.equal(t0.reshape(-1).view(torch.uint8), t1.reshape(-1).view(torch.uint8)), n
    assert before["objects"] == after["objects"]
    for (i0, g0), (i1, g1) in zip(before["grads"], after["grads"]):
        assert i0 == i1
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    for key in ("training", "attributes", "hooks", "python_rng", "default_dtype", "grad_enabled"):
        assert before[key] == after[key], key
    assert torch.equal(before["torch_rng"], after["torch_rng"])
    assert np.array_equal(before["numpy_rng"], after["numpy_rng"])
    o0, o1 = before["optimizer"], after["optimizer"]
    assert o0["param_groups"] == o1["param_groups"]
    assert o0["state"].keys() == o1["state"].keys()
    for k in o0["state"]:
        for name, v in o0["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(o1["state"][k][name]))


def test_full_diagnosis_leaves_model_optimizer_and_rng_bit_identical() -> None:
    torch.manual_seed(0)
    model = Everything()
    X, y = torch.randn(48, 3, 16, 16), torch.randint(0, CLASSES, (48,))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = nn.CrossEntropyLoss(weight=torch.rand(CLASSES) + 0.5)

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        penalty = sum((p**2).sum() for p in model.parameters() if p.ndim > 1)
        return loss_fn(out, target) + 0.5 * model.l2 * penalty

    loss(model(X), y).backward()  # leave real .grad values and optimizer state
    optimizer.step()
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(5)
    before = _state(model, optimizer)
    subject = nndiag.Subject(model, (X, y), loss=loss, optimizer=optimizer, regularization="l2")
    every = [*nndiag.Config().checks, "learning_rate", "training"]  # the opt-in ones too
    report = nndiag.diagnose(subject, checks=every)
    assert {r.status for r in report} <= {"pass", "warn", "fail", "skip"}, report.results
    assert report["regularization_loss"].status == "pass"
    assert report["training"].metrics["steps"] > 0  # it trained, with the user's optimizer
    _assert_same(before, _state(model, optimizer))


@pytest.mark.parametrize("name", ["cnn_batchnorm", "tiny_transformer"])
def test_healthy_models_are_untouched(name: str) -> None:
    subject = HEALTHY[name](0)
    optimizer = torch.optim.SGD(subject.model.parameters(), lr=0.1)
    subject.model.eval()
    before = _state(subject.model, optimizer)
    nndiag.diagnose(subject)
    _assert_same(before, _state(subject.model, optimizer))


def test_reading_a_shuffling_dataloader_leaves_the_global_rng_alone() -> None:
    dataset = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True)
    model = nn.Linear(4, 3)
    state = torch.get_rng_state()
    subject = nndiag.Subject(model, loader)
    assert torch.equal(state, torch.get_rng_state())
    assert len(subject.batches) == 4 and subject.num_samples == 64


def test_a_model_that_raises_midway_is_still_restored() -> None:
    class Flaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.bn = nn.BatchNorm1d(3)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > 3:
                raise RuntimeError("boom")
            return self.bn(self.fc(x))

    torch.manual_seed(0)
    model = Flaky()
    model.eval()
    buffers = [b.clone() for b in model.buffers()]
    report = nndiag.diagnose(nndiag.Subject(model, (torch.randn(8, 4), torch.randint(0, 3, (8,)))))
    errors = [r for r in report if r.status == "error"]
    assert errors and "model(X) raised RuntimeError" in errors[0].message
    assert errors[0].check in errors[0].message
    assert not model.training and all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert model.calls == 0  # a plain-number attribute the run changed, put back


def test_a_setter_writing_into_a_dict_the_loss_reads_is_undone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    cfg = {"l2": 1e-4}

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y) + cfg["l2"] * sum((p**2).sum() for p in model.parameters())

    def knob(m: nn.Module, strength: float) -> None:
        cfg["l2"] = strength

    subject = nndiag.Subject(
        model, (torch.randn(32, 8), torch.arange(32) % 3), loss=loss, regularization=knob
    )
    report = nndiag.diagnose(subject, ["regularization_loss", "overfit_small"])
    assert report["regularization_loss"].status == "pass"
    assert cfg == {"l2": 1e-4}


def test_inputs_that_require_grad_get_no_grad() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    X = torch.randn(32, 8).requires_grad_(True)
    y = torch.randint(0, 3, (32,))
    nndiag.diagnose(nndiag.Subject(model, (X, y)))
    assert X.grad is None and X.requires_grad


class _HangsWhenTraining(nn.Module):
    """Never finishes a forward that records gradients (a training step)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while torch.is_grad_enabled():
            pass
        return self.fc(x)


def test_a_check_past_its_safety_cap_is_skipped_and_the_run_goes_on() -> None:
    model = _HangsWhenTraining()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    subject = nndiag.Subject(model, (torch.randn(16, 4), torch.arange(16) % 3))
    config = nndiag.Config(check_seconds=0.5)
    # torch imports sympy on the first optimizer step: an alarm landing inside that import
    # would leave it half-done for every later test of this process.
    torch.optim.Adam([nn.Parameter(torch.zeros(1))]).step()
    report = nndiag.diagnose(subject, ["overfit_small", "initial_loss"], config)
    stopped = report["overfit_small"]
    assert stopped.status == "skip", stopped.summary()  # no verdict from a clock
    assert stopped.message.startswith("Not run to the end")
    assert "time budget of 0.5 s (Config.check_seconds, a safety cap)" in stopped.message
    assert report["initial_loss"].status == "pass"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and model.fc.weight.grad is None


@pytest.mark.parametrize("replace_head", [False, True], ids=["owned", "head_replaced"])
def test_param_updates_leaves_model_optimizer_and_rng_bit_identical(replace_head: bool) -> None:
    # Both paths: a pass, and a fail that reads the optimizer's ownership (the user's
    # instance, with state from a real step) and confirms a finding with another trainer.
    torch.manual_seed(0)
    model = Everything()
    X, y = torch.randn(48, 3, 16, 16), torch.randint(0, CLASSES, (48,))
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9
    )
    F.cross_entropy(model(X), y).backward()
    optimizer.step()
    if replace_head:
        model.head = nn.Linear(32, CLASSES)
    torch.manual_seed(123)
    np.random.seed(7)
    before = _state(model, optimizer)
    subject = nndiag.Subject(model, (X, y), optimizer=optimizer)
    result = nndiag.diagnose(subject, ["param_updates"])["param_updates"]
    assert result.status == ("fail" if replace_head else "pass"), result.summary()
    _assert_same(before, _state(model, optimizer))


@pytest.mark.parametrize("check", ["input_stats", "init_scale"])
def test_data_and_weight_checks_leave_model_optimizer_and_rng_bit_identical(check: str) -> None:
    torch.manual_seed(0)
    model = Everything()
    X, y = torch.rand(48, 3, 16, 16) * 255, torch.randint(0, CLASSES, (48,))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    nn.functional.cross_entropy(model(X), y).backward()
    optimizer.step()
    data = (X.clone(), y.clone())
    before = _state(model, optimizer)
    subject = nndiag.Subject(model, (X, y), optimizer=optimizer)
    result = nndiag.diagnose(subject, [check])[check]
    assert result.status in ("pass", "warn", "fail"), result.summary()
    _assert_same(before, _state(model, optimizer))
    assert torch.equal(X, data[0]) and torch.equal(y, data[1])


@pytest.mark.parametrize("lr", [0.05, 10.0], ids=["healthy", "diverging"])
def test_learning_rate_range_test_leaves_model_optimizer_and_rng_bit_identical(lr: float) -> None:
    # Opt-in, so not in the full diagnosis above: seven trainers, each restoring the
    # private copies (BatchNorm buffers too), and a re-measurement when it diverges.
    torch.manual_seed(0)
    model = Everything()
    X, y = torch.randn(48, 3, 16, 16), torch.randint(0, CLASSES, (48,))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=lr, momentum=0.9)
    F.cross_entropy(model(X), y).backward()
    optimizer.step()
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(5)
    before = _state(model, optimizer)
    subject = nndiag.Subject(model, (X, y), optimizer=optimizer, regularization="l2")
    result = nndiag.diagnose(subject, ["learning_rate"])["learning_rate"]
    assert result.status == ("fail" if lr == 10.0 else "pass"), result.summary()
    _assert_same(before, _state(model, optimizer))
