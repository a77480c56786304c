"""gradient_check: finds wrong backward passes, names them, ignores kinks and dropout."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import nndiag
from tests.models import IN, WIDTH, _classification, dead_relu, wrong_backward


class _ScaledGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x, scale):  # type: ignore[no-untyped-def]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        return grad * ctx.scale, None


class ScaledWeightGrad(nn.Module):
    """fc2.weight's gradient comes out ``scale`` times too large; the forward is exact."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN, WIDTH)
        self.fc2 = nn.Linear(WIDTH, 10)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _ScaledGrad.apply(self.fc2.weight, self.scale)
        return F.linear(F.relu(self.fc1(x)), weight, self.fc2.bias)


class FunctionalDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN, WIDTH)
        self.fc2 = nn.Linear(WIDTH, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(F.relu(self.fc1(x)), p=0.5, training=self.training)
        return self.fc2(h * torch.rand_like(h).add(0.5))  # more randomness, drawn each call


def _check(model: nn.Module, seed: int = 0) -> nndiag.CheckResult:
    torch.manual_seed(seed)
    subject = nndiag.Subject(model, _classification(seed))
    return nndiag.diagnose(subject, ["gradient_check"])["gradient_check"]


def test_one_percent_wrong_weight_gradient_is_caught_and_named() -> None:
    # docs/calibration.md: gradcheck fast mode misses this bug; the per-tensor direction does not.
    torch.manual_seed(0)
    result = _check(ScaledWeightGrad(1.01))
    assert result.status == "fail", result.summary()
    assert result.metrics["worst_tensor"] == "fc2.weight"
    failed = [t["name"] for t in result.evidence["tensors"] if t["status"] == "fail"]
    assert failed == ["fc2.weight"]
    coordinate = result.evidence["coordinates"][0]
    assert coordinate["tensor"] == "fc2.weight" and len(coordinate["index"]) == 2
    assert "fc2.weight" in result.message and "worst coordinate" in result.message


def test_exact_gradient_through_the_same_function_passes() -> None:
    torch.manual_seed(0)
    result = _check(ScaledWeightGrad(1.0))
    assert result.status == "pass", result.summary()
    assert result.metrics["max_rel_error"] < 1e-6


def test_wrong_relu_backward_fails_on_every_seed() -> None:
    for seed in range(5):
        result = nndiag.diagnose(wrong_backward(seed), ["gradient_check"])["gradient_check"]
        assert result.status == "fail", result.summary()
        assert result.metrics["worst_tensor"].startswith("fc1.")


def test_dropout_and_random_ops_in_forward_do_not_fail() -> None:
    for seed in range(3):
        result = _check(FunctionalDropout(), seed)
        assert result.status == "pass", result.summary()


def test_units_sitting_exactly_on_a_kink_do_not_fail() -> None:
    # Behind a dead layer every unit's input is 0, so zero biases sit exactly on ReLU's
    # corner, where the centered difference is 1/2 and autograd's subgradient is 0.
    for seed in range(3):
        result = nndiag.diagnose(dead_relu(seed), ["gradient_check"])["gradient_check"]
        assert result.status == "pass", result.summary()


def test_cut_graph_names_the_tensor_and_the_cause() -> None:
    class Cut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(IN, WIDTH)
            self.fc2 = nn.Linear(WIDTH, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.tanh(self.fc1(x)).detach())

    result = _check(Cut())
    assert result.status == "fail"
    no_grad = {t["name"] for t in result.evidence["tensors"] if t["no_grad"]}
    assert no_grad == {"fc1.weight", "fc1.bias"}
    assert "cuts the graph" in result.hint


def test_unused_parameter_warns() -> None:
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(IN, 10)
            self.spare = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    result = _check(Unused())
    assert result.status == "warn"
    assert "spare.weight" in result.hint


def test_cost_grows_with_tensors_not_parameters() -> None:
    def passes(width: int) -> int:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(IN, width), nn.Tanh(), nn.Linear(width, 10))
        return _check(model).cost.forward

    assert passes(8) == passes(512)
    # one backward pass, two forwards per tensor, two per coordinate shown as evidence
    assert passes(8) <= 1 + 2 * 4 + 2 * 2


def test_float32_model_is_checked_in_float64_and_left_in_float32() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 10))
    result = _check(model)
    assert result.status == "pass"
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_loss_closing_over_a_float32_class_weight_is_checked_in_float64() -> None:
    import functools

    torch.manual_seed(0)
    weight = torch.rand(10) + 0.5

    def weighted(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y, weight=weight)

    for loss in (weighted, functools.partial(F.cross_entropy, weight=weight)):
        model = nn.Sequential(nn.Linear(IN, WIDTH), nn.Tanh(), nn.Linear(WIDTH, 10))
        subject = nndiag.Subject(model, _classification(0), loss=loss)
        result = nndiag.diagnose(subject, ["gradient_check"])["gradient_check"]
        assert result.status == "pass", result.summary()
        assert weight.dtype == torch.float32


def test_detach_under_an_l2_penalty_is_named_as_a_cut_graph() -> None:
    # The penalty keeps fc1's gradient a (zero) tensor rather than None: still a cut graph.
    torch.manual_seed(0)

    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.l2 = nn.Linear(IN, WIDTH), nn.Linear(WIDTH, 10), 1e-3

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.relu(self.fc1(x)).detach())

    model = Detached()

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y) + model.l2 * sum((p**2).sum() for p in model.parameters())

    subject = nndiag.Subject(model, _classification(0), loss=loss, regularization="l2")
    result = nndiag.diagnose(subject, ["gradient_check"])["gradient_check"]
    assert result.status == "fail", result.summary()
    assert result.hint.startswith("No gradient reaches fc1.")


class _NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        return grad * float("nan")


def test_a_nan_gradient_with_a_finite_loss_fails() -> None:
    class NanBackward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(IN, WIDTH), nn.Linear(WIDTH, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(_NanGrad.apply(F.relu(self.fc1(x))))

    result = _check(NanBackward())
    assert result.status == "fail", result.summary()
    assert "NaN/Inf" in result.message and "fc1" in result.message


def test_kinks_crossed_at_larger_steps_are_recorded_and_never_used() -> None:
    # Seed 16 of the PyTorch-default ReLU MLP on 32 rows: at h = 1e-5 the whole-model
    # direction crosses ReLU kinks (relative error ~0.04). Every step with a large error
    # has its crossings counted; the verdict stands on steps where none changed.
    from tests.models import default_relu_mlp

    config = nndiag.Config(seed=16, gradient_batch=32, gradient_steps=(1e-5,))
    result = nndiag.diagnose(default_relu_mlp(16), ["gradient_check"], config)["gradient_check"]
    assert result.status == "pass", result.summary()
    assert not result.metrics["localized"] and "changed at larger steps" in result.message
    screens = result.evidence["screens"]
    assert any(c for s in screens for _, c in s["crossings"]), screens
    for screen in screens:
        for (h, error), (_, changed) in zip(screen["errors"], screen["crossings"]):
            assert error < 1e-6 or changed, (h, error, changed)


class _Scaled(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * 1.01


def test_every_tensor_wrong_fails_within_a_counted_budget() -> None:
    # A backward that scales the whole gradient by 1.01 (a wrong custom loss): all 20
    # tensors of a 10-layer MLP are wrong. Twelve are confirmed one by one; the groups
    # that still disagree are named as such rather than measured tensor by tensor.
    layers: list[nn.Module] = []
    for i in range(10):
        layers += [nn.Linear(IN if i == 0 else WIDTH, WIDTH if i < 9 else 10), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    torch.manual_seed(0)
    subject = nndiag.Subject(
        model, _classification(0), loss=lambda out, y: _Scaled.apply(F.cross_entropy(out, y))
    )
    result = nndiag.diagnose(subject, ["gradient_check"])["gradient_check"]
    assert result.status == "fail", result.summary()
    assert result.metrics["failed"] == 12 and result.metrics["tensors"] == 20
    assert "8 more tensors sit in groups that disagree" in result.message
    assert result.cost.forward < 200, result.cost


class Staircase(nn.Module):
    """A ReLU MLP whose hidden layer also feeds a fine staircase (``floor`` of the units
    times 1e9): a winner changes at every step the check can take through ``fc1``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(IN, WIDTH), nn.Linear(WIDTH, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(F.relu(h) + 1e-12 * torch.floor(h * 1e9))


def test_tensors_with_no_smooth_segment_warn_and_are_named() -> None:
    # No step reaches a smooth segment through fc1: its gradient is neither confirmed nor
    # refuted, and the result says so instead of passing on an inferred kink.
    result = _check(Staircase())
    assert result.status == "warn", result.summary()
    assert "could not be checked" in result.message and "fc1.weight" in result.message
    assert "fc2.weight" not in result.message.split("(")[1]
    rows = {t["name"]: t for t in result.evidence["tensors"]}
    assert rows["fc1.weight"]["unresolved"] and not rows.get("fc2.weight", {}).get("unresolved")


class Float32Inside(nn.Module):
    """A norm and a softmax that ask for float32 whatever the input's dtype, as
    transformers' RMSNorm and eager attention do; ``scale`` plants a gradient error."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN, WIDTH)
        self.fc2 = nn.Linear(WIDTH, 10)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        dtype = h.dtype
        h32 = h.float()
        h = (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
        h = h * F.softmax(h, dim=-1, dtype=torch.float32).to(torch.float32).to(dtype)
        weight = _ScaledGrad.apply(self.fc2.weight, self.scale)
        return F.linear(torch.tanh(h), weight, self.fc2.bias)


def test_casts_to_float32_inside_forward_are_computed_in_float64() -> None:
    torch.manual_seed(0)
    model = Float32Inside()
    result = _check(model)
    assert result.status == "pass", result.summary()
    assert result.metrics["internal_precision"] < 1e-15
    assert result.metrics["max_rel_error"] < 1e-7
    assert "computed them in float64" in result.message
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # the same casts outside the check still run in float32
    assert model(torch.randn(2, IN)).dtype == torch.float32


def test_a_one_percent_error_behind_float32_casts_fails() -> None:
    for seed in range(4):
        torch.manual_seed(seed)
        config = nndiag.Config(seed=seed)
        subject = nndiag.Subject(Float32Inside(1.01), _classification(seed))
        result = nndiag.diagnose(subject, ["gradient_check"], config)["gradient_check"]
        assert result.status == "fail", result.summary()
        assert result.metrics["worst_tensor"] == "fc2.weight"
