"""``batchnorm`` on small torch, numpy (CS231n) and JAX models: healthy ones pass, each
planted bug gets its status and its cause."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nndiag
from nndiag.results import CheckResult
from tests.models import CLASSES, cnn_batchnorm, he_relu_mlp
from tests.test_isolation import _assert_same, _state

SEEDS = range(5)


def _run(subject: nndiag.Subject) -> CheckResult:
    return nndiag.diagnose(subject, ["batchnorm"])["batchnorm"]


def _data(seed: int, n: int = 64, features: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(500 + seed)
    return torch.randn(n, features, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


class BNMLP(nn.Module):
    """Linear -> BatchNorm1d -> ReLU, twice, then a linear head."""

    def __init__(self, features: int = 16, width: int = 32, **bn: Any) -> None:
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(features, width), nn.BatchNorm1d(width, **bn)
        self.fc2, self.bn2 = nn.Linear(width, width), nn.BatchNorm1d(width, **bn)
        self.head = nn.Linear(width, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.fc1(x)))
        return self.head(F.relu(self.bn2(self.fc2(x))))


def bn_mlp(seed: int, **bn: Any) -> nndiag.Subject:
    torch.manual_seed(seed)
    return nndiag.Subject(BNMLP(**bn), _data(seed), name="bn_mlp")


class AlwaysTraining(BNMLP):
    """Bug: forward normalizes with ``training=True`` whatever the mode, passing the
    layer's buffers (so evaluation uses, and updates, batch statistics)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn1
        x = self.fc1(x)
        x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=True)
        return self.head(F.relu(self.bn2(self.fc2(F.relu(x)))))


class Bypassed(BNMLP):
    """Bug: forward normalizes with batch statistics of its own (``F.batch_norm`` without
    running statistics) next to a BatchNorm1d it never calls."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn1
        x = F.batch_norm(self.fc1(x), None, None, bn.weight, bn.bias, training=True)
        return self.head(F.relu(self.bn2(self.fc2(F.relu(x)))))


def _subject(model: nn.Module, seed: int) -> nndiag.Subject:
    return nndiag.Subject(model, _data(seed), name=type(model).__name__)


# -- torch: healthy --------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "build",
    [
        cnn_batchnorm,
        bn_mlp,
        lambda seed: bn_mlp(seed, momentum=None),
        lambda seed: bn_mlp(seed, affine=False),
    ],
    ids=["cnn_batchnorm", "bn_mlp", "momentum_none", "affine_false"],
)
def test_healthy_batchnorm_models_pass(build: Any, seed: int) -> None:
    result = _run(build(seed))
    assert result.status == "pass", result.message
    assert result.metrics["layers"] == result.metrics["tracking"] == 2
    assert result.metrics["stale_layers"] == [] and result.metrics["eval_batch_dependence"] <= 1e-4
    assert result.metrics["train_eval_gap"] < nndiag.Config().batchnorm_gap_warn


def test_several_batches_are_averaged_and_pass() -> None:
    torch.manual_seed(0)
    X, y = _data(0, n=128)
    batches = [(X[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)]
    result = _run(nndiag.Subject(BNMLP(), batches))
    assert result.status == "pass", result.message
    assert result.metrics["warm_batches"] == 4 and result.metrics["batch_sizes"] == [32] * 4


def test_a_model_without_batch_statistics_skips() -> None:
    result = _run(he_relu_mlp(0))
    assert result.status == "skip" and "No batch-statistics" in result.message


def test_frozen_batchnorm_is_the_users_choice_and_passes() -> None:
    subject = bn_mlp(0)
    subject.model.train()
    subject.model.bn1.eval()  # frozen statistics while the rest trains
    result = _run(subject)
    assert result.status == "pass", result.message
    assert result.metrics["frozen_layers"] == ["bn1"] and "frozen" in result.message
    assert not subject.model.bn1.training and subject.model.bn2.training


# -- torch: planted bugs ---------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_momentum_zero_leaves_running_statistics_stale(seed: int) -> None:
    result = _run(bn_mlp(seed, momentum=0.0))
    assert result.status == "fail", result.message
    assert result.metrics["cause"] == "stale"
    assert result.metrics["stale_layers"] == ["bn1", "bn2"]
    assert "momentum=0.0" in result.message


def test_one_stale_layer_is_named() -> None:
    subject = bn_mlp(0)
    subject.model.bn2.momentum = 0.0
    result = _run(subject)
    assert result.status == "fail" and result.metrics["stale_layers"] == ["bn2"]
    assert "1 of 2 layers (bn2)" in result.message


@pytest.mark.parametrize("seed", range(3))
def test_batch_statistics_in_eval_mode_fail(seed: int) -> None:
    torch.manual_seed(seed)
    result = _run(_subject(AlwaysTraining(), seed))
    assert result.status == "fail", result.message
    assert result.metrics["cause"] == "updated_in_eval"
    assert result.metrics["updated_in_eval_layers"] == ["bn1"]
    assert result.metrics["eval_batch_dependence"] > 1e-2


def test_a_bypassed_layer_fails_with_the_cause() -> None:
    torch.manual_seed(0)
    result = _run(_subject(Bypassed(), 0))
    assert result.status == "fail", result.message
    assert result.metrics["cause"] == "bypassed"
    assert result.metrics["never_updated_layers"] == ["bn1"]


def test_an_unused_layer_warns() -> None:
    class Unused(BNMLP):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.bn2(self.fc2(F.relu(self.fc1(x))))))

    torch.manual_seed(0)
    result = _run(_subject(Unused(), 0))
    assert result.status == "warn", result.message
    assert result.metrics["cause"] == "never_updated"


@pytest.mark.parametrize("seed", range(3))
def test_no_running_statistics_warns_that_eval_depends_on_the_batch(seed: int) -> None:
    result = _run(bn_mlp(seed, track_running_stats=False))
    assert result.status == "warn", result.message
    assert result.metrics["cause"] == "no_running_statistics"
    assert result.metrics["untracked_layers"] == ["bn1", "bn2"]
    assert result.metrics["eval_batch_dependence"] > 1e-2


def test_a_batch_of_one_warns() -> None:
    torch.manual_seed(0)
    X, y = torch.randn(1, 3, 16, 16), torch.tensor([3])
    from tests.models import SmallCNN

    result = _run(nndiag.Subject(SmallCNN(), (X, y)))
    assert result.status == "warn", result.message
    assert result.metrics["cause"] == "batch_of_one" and result.metrics["batch_sizes"] == [1]


def test_a_final_batch_of_one_warns_and_is_left_out_of_warming() -> None:
    torch.manual_seed(0)
    X, y = _data(0, n=33)
    result = _run(nndiag.Subject(BNMLP(), [(X[:32], y[:32]), (X[32:], y[32:])]))
    assert result.status == "warn", result.message  # BatchNorm1d would raise on one sample
    assert result.metrics["cause"] == "batch_of_one" and result.metrics["warm_batches"] == 1


@pytest.mark.parametrize("seed", range(3))
def test_batches_of_one_class_open_a_train_eval_gap(seed: int) -> None:
    """Unshuffled data: every batch holds one class, whose mean the batch statistics
    remove in train mode and the averaged running statistics keep in eval mode."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    centers = 8 * torch.randn(CLASSES, 16, generator=g)
    batches = [
        (centers[c] + torch.randn(32, 16, generator=g), torch.full((32,), c)) for c in range(4)
    ]
    model = BNMLP()
    with torch.no_grad():
        model.head.weight.mul_(30)  # informative scores, so the loss shows the shift
    result = _run(nndiag.Subject(model, batches))
    assert result.status == "warn", result.message
    assert result.metrics["cause"] == "train_eval_gap"
    assert result.metrics["train_eval_gap"] > nndiag.Config().batchnorm_gap_warn
    # The same batches shuffled together: silent.
    X = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    order = torch.randperm(len(y), generator=g)
    shuffled = [(X[order[i : i + 32]], y[order[i : i + 32]]) for i in range(0, len(y), 32)]
    assert _run(nndiag.Subject(model, shuffled)).status == "pass"


def test_one_stored_batch_measures_the_gap_without_judging_it() -> None:
    result = _run(bn_mlp(0))
    assert result.metrics["gap_judged"] is False and "not judged" in result.message


# -- isolation -------------------------------------------------------------------------
def test_the_users_running_statistics_and_settings_are_bit_identical() -> None:
    subject = bn_mlp(0)
    model = subject.model
    model.train()
    with torch.no_grad():  # real running statistics, a batch count and a frozen layer
        for _ in range(3):
            model(subject.batches[0].X)
    model.bn1.momentum = None
    model.bn2.eval()
    before = copy.deepcopy(model.state_dict())
    settings = [(m.momentum, m.training, m.track_running_stats) for m in (model.bn1, model.bn2)]
    ids = [id(b) for b in model.buffers()]
    rng = torch.get_rng_state()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = _state(model, optimizer)
    result = _run(subject)
    _assert_same(state, _state(model, optimizer))
    assert result.status == "pass", result.message
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
        assert value.dtype == after[key].dtype, key
    assert int(after["bn1.num_batches_tracked"]) == 3
    assert settings == [
        (m.momentum, m.training, m.track_running_stats) for m in (model.bn1, model.bn2)
    ]
    assert ids == [id(b) for b in model.buffers()]
    assert torch.equal(rng, torch.get_rng_state())


# -- numpy: CS231n batch normalization -------------------------------------------------
def batchnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, bn: dict) -> Any:
    """CS231n assignment 2's batchnorm_forward (train and test mode, running averages)."""
    eps, momentum = bn.get("eps", 1e-5), bn.get("momentum", 0.9)
    mean = bn.get("running_mean", np.zeros(x.shape[1]))
    var = bn.get("running_var", np.zeros(x.shape[1]))
    if bn["mode"] == "train":
        mu, sigma2 = x.mean(axis=0), x.var(axis=0)
        xhat = (x - mu) / np.sqrt(sigma2 + eps)
        bn["running_mean"] = momentum * mean + (1 - momentum) * mu
        bn["running_var"] = momentum * var + (1 - momentum) * sigma2
        cache = (xhat, gamma, sigma2, eps)
    else:
        xhat = (x - mean) / np.sqrt(var + eps)
        cache = None
    return gamma * xhat + beta, cache


def batchnorm_backward(dout: np.ndarray, cache: Any) -> tuple[np.ndarray, ...]:
    xhat, gamma, sigma2, eps = cache
    n = len(dout)
    dxhat = dout * gamma
    dx = (n * dxhat - dxhat.sum(0) - xhat * (dxhat * xhat).sum(0)) / (n * np.sqrt(sigma2 + eps))
    return dx, (dout * xhat).sum(0), dout.sum(0)


class CS231nBatchnormNet:
    """affine - batchnorm - relu - affine - softmax, with ``bn_params`` as the assignment
    keeps them; ``stats_in_test`` plants the bug of batch statistics in test mode."""

    def __init__(self, seed: int, momentum: float | None = None, stats_in_test: bool = False):
        rng = np.random.default_rng(seed)
        self.params = {
            "W1": rng.standard_normal((16, 32)) * np.sqrt(2 / 16),
            "b1": np.zeros(32),
            "gamma1": np.ones(32),
            "beta1": np.zeros(32),
            "W2": rng.standard_normal((32, CLASSES)) * np.sqrt(2 / 32),
            "b2": np.zeros(CLASSES),
        }
        self.bn_params = [{"mode": "train"}]
        if momentum is not None:
            self.bn_params[0]["momentum"] = momentum
        self.stats_in_test = stats_in_test
        self.reg = 0.0

    def loss(self, X: np.ndarray, y: np.ndarray | None = None) -> Any:
        p, bn = self.params, self.bn_params[0]
        bn["mode"] = "train" if y is not None or self.stats_in_test else "test"
        a = X @ p["W1"] + p["b1"]
        h, cache = batchnorm_forward(a, p["gamma1"], p["beta1"], bn)
        r = np.maximum(h, 0)
        scores = r @ p["W2"] + p["b2"]
        if y is None:
            return scores
        shifted = scores - scores.max(1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
        n = len(y)
        loss = -np.log(probs[np.arange(n), y]).mean()
        loss += 0.5 * self.reg * ((p["W1"] ** 2).sum() + (p["W2"] ** 2).sum())
        dscores = probs.copy()
        dscores[np.arange(n), y] -= 1
        dscores /= n
        grads = {"W2": r.T @ dscores + self.reg * p["W2"], "b2": dscores.sum(0)}
        dh = (dscores @ p["W2"].T) * (h > 0)
        da, grads["gamma1"], grads["beta1"] = batchnorm_backward(dh, cache)
        grads["W1"] = X.T @ da + self.reg * p["W1"]
        grads["b1"] = da.sum(0)
        return loss, grads


def _numpy_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + seed)
    return rng.standard_normal((64, 16)), rng.integers(0, CLASSES, 64)


@pytest.mark.parametrize("seed", SEEDS)
def test_numpy_cs231n_batchnorm_passes(seed: int) -> None:
    model = CS231nBatchnormNet(seed)
    before = copy.deepcopy(model.bn_params)
    result = _run(nndiag.Subject(model, _numpy_data(seed)))
    assert result.status == "pass", result.message
    assert result.metrics["momentum"] == "0.1"  # CS231n's 0.9, in torch's convention
    assert model.bn_params == before  # no running statistics left behind


def test_numpy_layernorm_dicts_are_not_batch_statistics() -> None:
    model = CS231nBatchnormNet(0)
    model.bn_params = [{}]  # what the assignment keeps for layer normalization
    model.loss = lambda X, y=None: CS231nBatchnormNet(0).loss(X, y)  # type: ignore[method-assign]
    result = _run(nndiag.Subject(model, _numpy_data(0)))
    assert result.status == "skip", result.message


def test_numpy_momentum_one_is_stale() -> None:
    """CS231n's momentum weighs the old running statistics: 1.0 never lets a batch in."""
    result = _run(nndiag.Subject(CS231nBatchnormNet(0, momentum=1.0), _numpy_data(0)))
    assert result.status == "fail", result.message
    assert result.metrics["cause"] == "stale"
    assert "bn_param['momentum'] = 1.0" in result.message


def test_numpy_batch_statistics_in_test_mode_fail() -> None:
    model = CS231nBatchnormNet(0, stats_in_test=True)
    result = _run(nndiag.Subject(model, _numpy_data(0)))
    assert result.status == "fail", result.message
    assert result.metrics["cause"] == "updated_in_eval"


# -- JAX -------------------------------------------------------------------------------
def test_jax_subjects_skip_with_the_reason() -> None:
    pytest.importorskip("jax")
    from tests.backends import jax_models

    result = _run(jax_models.he_relu_mlp(0))
    assert result.status == "skip"
    assert "no train/eval mode" in result.message


# -- report ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "build", [lambda: bn_mlp(0, momentum=0.0), lambda: _subject(AlwaysTraining(), 0)]
)
def test_the_plot_draws_the_measured_evidence(build: Any) -> None:
    from nndiag.report import plots

    result = _run(build())
    assert [layer["name"] for layer in result.evidence["layers"]] == ["bn1", "bn2"]
    (plot,) = plots.plots_for(result)
    assert plot.uri and plot.note is None
