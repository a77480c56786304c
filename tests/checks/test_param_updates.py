"""param_updates on every backend: healthy models pass; each planted bug fails (or warns)
with the cause the evidence shows, naming the tensors."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nndiag
from nndiag.report import plots
from tests import models as T
from tests.backends import numpy_models as NM

CHECK = "param_updates"


def _run(subject: nndiag.Subject, **options: Any) -> nndiag.CheckResult:
    config = nndiag.Config(**options)
    return nndiag.diagnose(subject, [CHECK], config)[CHECK]


def _bad(result: nndiag.CheckResult) -> dict[str, str]:
    return {r["name"]: r["cause"] for r in result.evidence["tensors"] if r["cause"]}


# -- torch -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(T.HEALTHY))
def test_healthy_torch_models_pass(name: str, seed: int) -> None:
    result = _run(T.HEALTHY[name](seed), seed=seed)
    assert result.status == "pass", result.summary()
    assert 1e-3 < result.metrics["median_ratio"] < 0.05
    assert result.cost.forward == result.cost.backward == 3


def test_a_detached_layer_gets_no_gradient() -> None:
    result = _run(T.detached(0))
    assert result.status == "fail" and result.metrics["cause"] == "no_gradient"
    assert _bad(result) == {"fc1.weight": "no_gradient", "fc1.bias": "no_gradient"}
    assert ".detach()" in result.hint and "confirmed on another step" in result.message
    assert result.cost.forward == 4  # three steps and the confirming one


def test_dead_relus_give_an_all_zero_gradient() -> None:
    result = _run(T.dead_relu(0))
    assert result.status == "fail" and result.metrics["cause"] == "zero_gradient"
    assert _bad(result)["2.bias"] == "zero_gradient"  # the layer whose bias is -10
    assert "dead path" in result.hint


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return T._mlp(3, nn.ReLU, T._he)


def test_a_head_replaced_after_the_optimizer_was_built_is_not_owned() -> None:
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model[4] = nn.Linear(T.WIDTH, T.CLASSES)
    result = _run(nndiag.Subject(model, T._classification(0), optimizer=optimizer))
    assert result.status == "fail" and result.metrics["cause"] == "not_owned"
    assert _bad(result) == {"4.weight": "not_owned", "4.bias": "not_owned"}
    assert result.metrics["stale"] == 2 and "(10, 64), (10,)" in result.hint
    assert "after the last change to the model" in result.hint
    assert result.cost.forward == 3  # ownership is read, not re-measured


def test_a_factory_over_part_of_the_model_leaves_the_rest_unowned() -> None:
    model = _mlp()
    subject = nndiag.Subject(
        model,
        T._classification(0),
        optimizer=lambda params: torch.optim.Adam(model[0].parameters(), lr=1e-3),
    )
    result = _run(subject)
    assert result.status == "fail" and result.metrics["not_owned"] == 4
    assert set(_bad(result)) == {"2.weight", "2.bias", "4.weight", "4.bias"}


def test_an_instance_over_every_trainable_tensor_passes_and_frozen_layers_stay() -> None:
    model = _mlp()
    model[0].requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    result = _run(nndiag.Subject(model, T._classification(0), optimizer=optimizer))
    assert result.status == "pass", result.summary()
    assert result.metrics["tensors"] == 4  # the frozen layer is not trainable


def test_a_zero_learning_rate_group_never_updates() -> None:
    model = _mlp()

    def optimizer(params: Any) -> torch.optim.Optimizer:
        rest = [p for n, p in model.named_parameters() if not n.startswith("0.")]
        groups = [{"params": model[0].parameters(), "lr": 0.0}, {"params": rest}]
        return torch.optim.SGD(groups, lr=0.05)

    result = _run(nndiag.Subject(model, T._classification(0), optimizer=optimizer))
    assert result.status == "fail" and result.metrics["cause"] == "not_updated"
    assert _bad(result) == {"0.weight": "not_updated", "0.bias": "not_updated"}
    assert "learning rate of 0" in result.hint


class _FrozenMaxNorm(nn.Module):
    """Frozen pretrained-style embeddings that keep ``max_norm``: every forward pass
    renormalizes the rows it looks up, in place."""

    def __init__(self, max_norm: float | None) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16, max_norm=max_norm, padding_idx=0)
        self.embed.weight.requires_grad_(False)
        self.head = nn.Linear(16, T.CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(1))


def _tokens() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 50, (64, 8), generator=g), torch.randint(0, 10, (64,), generator=g)


def test_a_frozen_tensor_written_in_forward_fails() -> None:
    torch.manual_seed(0)
    result = _run(nndiag.Subject(_FrozenMaxNorm(max_norm=1.0), _tokens()))
    assert result.status == "fail" and result.metrics["cause"] == "frozen_changed"
    assert _bad(result) == {"embed.weight": "frozen_changed"}
    assert "renormalizes" in result.hint


def test_frozen_embeddings_without_max_norm_and_batch_statistics_pass() -> None:
    torch.manual_seed(0)
    assert _run(nndiag.Subject(_FrozenMaxNorm(max_norm=None), _tokens())).status == "pass"
    result = _run(T.cnn_batchnorm(0))  # running mean/var change: statistics, not weights
    assert result.status == "pass", result.summary()


def test_tied_weights_and_a_padding_row_pass() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 16, padding_idx=0)
            self.out = nn.Linear(16, 50, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.out(torch.tanh(self.embed(tokens)))

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 50, (32, 9), generator=g)

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.reshape(-1, 50), y.reshape(-1))

    result = _run(nndiag.Subject(Tied(), (ids[:, :-1], ids[:, 1:]), loss=loss))
    assert result.status == "pass", result.summary()
    assert result.metrics["tensors"] == 1


def _sgd(lr: float) -> Any:
    return lambda params: torch.optim.SGD(params, lr=lr)


def test_a_tiny_learning_rate_warns_too_low() -> None:
    result = _run(nndiag.Subject(_mlp(), T._classification(0), optimizer=_sgd(1e-8)))
    assert result.status == "warn" and result.metrics["cause"] == "lr_too_low"
    assert result.metrics["median_ratio"] < 1e-6 and "too low" in result.hint


def _adam(lr: float) -> Any:
    return lambda params: torch.optim.Adam(params, lr=lr)


def _given(subject: nndiag.Subject, optimizer: Any) -> nndiag.Subject:
    batch = subject.batches[0]
    return nndiag.Subject(subject.model, (batch.X, batch.y), optimizer=optimizer)


def test_a_huge_learning_rate_warns_too_high() -> None:
    result = _run(_given(T.he_relu_mlp(0), _adam(1.0)))
    assert result.status == "warn" and result.metrics["cause"] in ("lr_too_high", "diverged")
    assert result.metrics["median_ratio"] > 0.2 and "too high" in result.hint


def test_the_band_is_a_setting() -> None:
    result = _run(_given(T.he_relu_mlp(0), _adam(1e-3)), param_update_ratio_high=1e-3)
    assert result.status == "warn" and result.metrics["cause"] == "lr_too_high"
    with pytest.raises(ValueError, match="param_update_ratio_low"):
        nndiag.Config(param_update_ratio_low=1.0, param_update_ratio_high=0.1)


def test_nndiag_s_own_rate_off_the_band_is_no_finding_about_the_user() -> None:
    # No optimizer given: nndiag's Adam decides the ratio, so the band says nothing about
    # the user's rate; the result passes and says so.
    result = _run(T.he_relu_mlp(0), param_update_ratio_high=1e-3)
    assert result.status == "pass", result.summary()
    assert result.metrics["default_rate_off_band"] and "nndiag's default rate" in result.message


def test_a_gradient_seen_on_one_batch_only_is_a_warning() -> None:
    class Gated(nn.Module):
        """A branch used only for batches whose first input is positive."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(T.IN, T.CLASSES)
            self.branch = nn.Linear(T.IN, T.CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.body(x)
            return out + self.branch(x) if bool(x[0, 0] > 0) else out

    torch.manual_seed(0)
    X, y = T._classification(0)
    X[0, 0] = -1.0  # the steps' batch skips the branch
    X[64, 0] = 1.0  # the confirming batch (rows 64..) takes it
    result = _run(nndiag.Subject(Gated(), (X, y)))
    assert result.status == "warn" and result.metrics["cause"] == "unconfirmed"
    assert result.metrics["unconfirmed"] == 2 and "branch.weight" in result.message
    assert _bad(result) == {
        "branch.weight": "no_gradient (not confirmed)",
        "branch.bias": "no_gradient (not confirmed)",
    }


def test_the_plot_renders_from_real_evidence() -> None:
    for subject in (T.detached(0), T.he_relu_mlp(0)):
        drawn = plots.plots_for(_run(subject))
        assert len(drawn) == 1 and drawn[0].uri and drawn[0].uri.startswith("data:image/png")


# -- numpy -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(NM.HEALTHY))
def test_healthy_numpy_models_pass(name: str, seed: int) -> None:
    result = _run(nndiag.Subject(NM.HEALTHY[name](seed), NM.data(seed)), seed=seed)
    assert result.status == "pass", result.summary()


def test_numpy_a_gradient_never_written_is_no_gradient() -> None:
    model = NM.net(0, bugs=frozenset({"missing_grad"}))
    result = _run(nndiag.Subject(model, NM.data(0)))
    assert result.status == "fail" and _bad(result) == {"b1": "no_gradient"}
    assert "left out of grads" in result.hint


def test_numpy_dead_layer_is_zero_gradient() -> None:
    result = _run(nndiag.Subject(NM.net(0, bugs=frozenset({"dead"})), NM.data(0)))
    assert result.status == "fail" and result.metrics["cause"] == "zero_gradient"
    assert _bad(result)["b2"] == "zero_gradient"


def test_numpy_a_tiny_update_rule_warns_too_low() -> None:
    def tiny_sgd(w: np.ndarray, dw: np.ndarray, config: dict) -> tuple[np.ndarray, dict]:
        return w - 1e-9 * dw, config

    subject = nndiag.Subject(NM.net(0), NM.data(0), optimizer=tiny_sgd)
    result = _run(subject)
    assert result.status == "warn" and result.metrics["cause"] == "lr_too_low"


def test_a_tiny_gradient_is_not_taken_for_a_zero_one() -> None:
    # Entries of ~1e-23: their float32 squares underflow, so a float32 norm says 0.
    class Faint(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(T.IN, T.CLASSES)
            self.faint = nn.Linear(T.IN, T.CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x) + 1e-22 * self.faint(x)

    torch.manual_seed(0)
    result = _run(nndiag.Subject(Faint(), T._classification(0)))
    assert result.status == "pass", result.summary()
    faint = [r for r in result.evidence["tensors"] if r["name"].startswith("faint")]
    assert all(0 < r["grad_norm"] < 1e-20 and r["note"] for r in faint), faint


def test_a_bias_before_batchnorm_is_noted_not_failed_under_sgd() -> None:
    # BatchNorm subtracts the conv bias: its gradient is rounding (~1e-7 of the others'),
    # and SGD steps may leave it bit-identical. True, harmless: a pass that says so.
    subject = T.cnn_batchnorm(0)
    batch = subject.batches[0]
    subject = nndiag.Subject(subject.model, (batch.X, batch.y), optimizer=_sgd(0.05))
    result = _run(subject)
    assert result.status == "pass", result.summary()
    assert result.metrics["negligible_gradient"] == 2
    assert "conv1.bias, conv2.bias" in result.message and "batch normalization" in result.message


# -- jax -------------------------------------------------------------------------------------
def _jax() -> Any:
    pytest.importorskip("jax")
    from tests.backends import jax_models

    return jax_models


_JAX_HEALTHY = ("he_relu_mlp", "xavier_tanh_mlp", "regression_mlp", "l2_mlp", "holder_mlp")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", _JAX_HEALTHY)
def test_healthy_jax_models_pass(name: str, seed: int) -> None:
    JM = _jax()
    assert set(JM.HEALTHY) == set(_JAX_HEALTHY)
    result = _run(JM.HEALTHY[name](seed), seed=seed)
    assert result.status == "pass", result.summary()


def test_jax_stop_gradient_is_named() -> None:
    JM = _jax()
    result = _run(JM.stop_gradient(0))
    assert result.status == "fail" and result.metrics["cause"] == "zero_gradient"
    assert _bad(result) == {"layers/0/W": "zero_gradient", "layers/0/b": "zero_gradient"}
    assert "stop_gradient" in result.hint


class _Masked(NamedTuple):
    """An optax-style transformation whose update leaves the first layer out."""

    init: Any
    update: Any


def test_jax_a_masked_update_is_not_updated() -> None:
    JM = _jax()

    def update(grads: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        updates = [-1e-2 * g for g in grads]
        updates[0] = updates[0] * 0.0
        return updates, state

    subject = JM.he_relu_mlp(0)
    subject = nndiag.Subject(
        subject.model, JM.classification(0), optimizer=_Masked(lambda p: (), update)
    )
    result = _run(subject)
    assert result.status == "fail" and result.metrics["cause"] == "not_updated"
    assert list(_bad(result)) == ["layers/0/W"]


def test_jax_a_huge_learning_rate_warns() -> None:
    JM = _jax()
    from tests.backends.test_jax import _sgd  # an optax-shaped SGD, without optax

    result = _run(_given(JM.he_relu_mlp(0), _sgd(3.0)))
    assert result.status == "warn" and result.metrics["median_ratio"] > 0.2
