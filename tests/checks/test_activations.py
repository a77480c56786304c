"""activation_stats and dead_neurons: what is captured, how it is named, what it says."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nndiag
from tests.models import IN, _classification, cnn_batchnorm, large_init_tanh, small_init_tanh


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN, 64)
        self.fc2 = nn.Linear(64, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = torch.tanh(self.fc2(x))
        return self.fc3(x)


def _diagnose(model: nn.Module, *checks: str) -> nndiag.Report:
    return nndiag.diagnose(nndiag.Subject(model, _classification(0)), checks)


def test_functional_activations_are_captured_in_depth_order() -> None:
    torch.manual_seed(0)
    result = _diagnose(Functional(), "activation_stats")["activation_stats"]
    layers = result.evidence["layers"]
    assert [(x["name"], x["kind"]) for x in layers] == [("relu", "relu"), ("tanh", "tanh")]
    assert layers[0]["weight_layer"] == "fc1" and layers[1]["weight_layer"] == "fc2"
    assert sum(layers[1]["hist_counts"]) > 0


def test_statistics_match_a_direct_computation() -> None:
    torch.manual_seed(0)
    model = Functional()
    X, _ = _classification(0)
    with torch.no_grad():
        expected = torch.tanh(model.fc2(F.relu(model.fc1(X))))
    layer = _diagnose(model, "activation_stats")["activation_stats"].evidence["layers"][1]
    assert layer["mean"] == pytest.approx(float(expected.mean()), abs=1e-5)
    assert layer["std"] == pytest.approx(float(expected.std(unbiased=False)), rel=1e-4)
    assert layer["saturated"] == pytest.approx(float((expected.abs() > 0.99).float().mean()))


def test_collapse_names_first_bad_layer_and_recommends_xavier_with_numbers() -> None:
    result = nndiag.diagnose(small_init_tanh(0), ["activation_stats"])["activation_stats"]
    assert result.status == "fail"
    assert "collapses" in result.message
    # the 8-layer net's hidden layers have fan_in 100 (the first 32)
    assert "Xavier" in result.hint and "std 0.00" in result.hint
    assert f"wants {1 / math.sqrt(100):.3g}" in result.hint


def test_saturation_is_reported_for_large_init() -> None:
    result = nndiag.diagnose(large_init_tanh(0), ["activation_stats"])["activation_stats"]
    assert result.status == "fail" and "saturates" in result.message
    assert result.metrics["max_saturated"] > 0.5
    assert "Xavier" in result.hint


def test_relu_nets_get_he_advice() -> None:
    from tests.models import xavier_deep_relu

    result = nndiag.diagnose(xavier_deep_relu(0), ["activation_stats"])["activation_stats"]
    assert result.status == "fail" and "He" in result.hint
    assert f"{math.sqrt(2 / 100):.3g}" in result.hint


def test_dead_fraction_per_layer_matches_a_direct_count() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(IN, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 10)
    )
    with torch.no_grad():
        model[2].bias[:30] = -50.0  # 30 of 50 units can never fire
    X, _ = _classification(0)
    with torch.no_grad():
        hidden = F.relu(model[2](F.relu(model[0](X))))
    expected = int((hidden <= 0).all(0).sum())
    result = _diagnose(model, "dead_neurons")["dead_neurons"]
    rows = {r["name"]: r for r in result.evidence["layers"]}
    assert rows["3:relu"]["dead"] == expected >= 30
    assert result.status == ("fail" if expected / 50 >= 0.7 else "warn")
    assert "3:relu" in result.message


def test_conv_units_are_channels() -> None:
    result = nndiag.diagnose(cnn_batchnorm(0), ["dead_neurons"])["dead_neurons"]
    assert [r["units"] for r in result.evidence["layers"]] == [8, 16]


def test_activation_capture_leaves_no_hooks_behind() -> None:
    torch.manual_seed(0)
    model = Functional()
    _diagnose(model, "activation_stats", "dead_neurons")
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert not torch.overrides._get_current_function_mode_stack()


def test_no_activation_function_skips() -> None:
    torch.manual_seed(0)
    report = _diagnose(nn.Linear(IN, 10), "activation_stats", "dead_neurons")
    assert report["activation_stats"].status == "skip"
    assert report["dead_neurons"].status == "skip"


def test_a_layer_with_constant_output_fails() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(IN, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # the first ReLU layer never fires: std 0 from there on
    result = _diagnose(model, "activation_stats")["activation_stats"]
    assert result.status == "fail" and "The output of 1:relu is constant" in result.message
    # The cause the evidence shows: the bias feeding the layer, not the weights' scale.
    assert result.hint is not None and "The bias 0.bias feeding 1:relu has mean -100" in result.hint
    # All-zero weights with a positive bias: a constant that fires; the weights are the cause.
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(0.1)
    zero = _diagnose(model, "activation_stats")["activation_stats"]
    assert zero.status == "fail" and zero.hint is not None
    assert zero.hint.startswith("Weights of 0 have std 0"), zero.hint


def test_relu6_layers_count_as_relu_units() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, 20), nn.ReLU6(), nn.Linear(20, 10))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    result = _diagnose(model, "dead_neurons")["dead_neurons"]
    assert result.status == "fail" and result.evidence["layers"][0]["name"] == "1:relu"


def test_the_message_names_the_layer_over_the_failing_limit() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(IN, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 10)
    )
    with torch.no_grad():
        model[0].bias[:11] = -100.0  # 55%: over the warn limit only
        model[2].bias[:16] = -100.0  # 80%: over the fail limit
    result = _diagnose(model, "dead_neurons")["dead_neurons"]
    assert result.status == "fail" and "units of 3:relu" in result.message
