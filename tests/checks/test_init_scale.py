"""init_scale on every backend: He/Xavier and PyTorch-default nets pass; std 0.01 and 1.0
tanh nets fail with the direction; a layer 4x small warns; zero and constant init fail as
symmetric units; normalized layers and the output layer are left out. And the weights()
primitive gives (units, fan_in) read-only matrices on every backend."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nndiag
from tests import models as torch_models
from tests.backends import numpy_models

IN, CLASSES = 32, 10
# name -> (act, std(fan_in) or a constant, width); the last layer stays small and random
Spec = tuple[str, Callable[[int], float] | str, int]


def _he(fan_in: int) -> float:
    return math.sqrt(2 / fan_in)


def _xavier(fan_in: int) -> float:
    return 1 / math.sqrt(fan_in)


def _weights(rng: np.random.Generator, fan_in: int, fan_out: int, init: object) -> np.ndarray:
    if init == "zeros":
        return np.zeros((fan_in, fan_out))
    if init == "constant":
        return np.full((fan_in, fan_out), 0.05)
    assert callable(init)
    return rng.normal(0.0, init(fan_in), (fan_in, fan_out))


def _layers(
    init: object, depth: int, width: int, seed: int, scale: dict[int, float] | None = None
) -> list[np.ndarray]:
    """(fan_in, fan_out) weights of a ``depth``-layer MLP; the last one at std 0.01."""
    rng = np.random.default_rng(seed)
    sizes = [IN] + [width] * (depth - 1) + [CLASSES]
    found = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = _weights(rng, a, b, init) if i < depth - 1 else 0.01 * rng.standard_normal((a, b))
        found.append(w * (scale or {}).get(i, 1.0))
    return found


def _torch(act: str, layers: list[np.ndarray], seed: int) -> nndiag.Subject:
    modules: list[nn.Module] = []
    for i, w in enumerate(layers):
        linear = nn.Linear(*w.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T))
            linear.bias.zero_()
        modules.append(linear)
        if i < len(layers) - 1:
            modules.append(nn.ReLU() if act == "relu" else nn.Tanh())
    return nndiag.Subject(nn.Sequential(*modules), torch_models._classification(seed))


def _numpy(act: str, layers: list[np.ndarray], seed: int) -> nndiag.Subject:
    dims = [layers[0].shape[0]] + [w.shape[1] for w in layers]
    model = numpy_models.FullyConnectedNet(dims, act=act, seed=seed)
    for i, w in enumerate(layers, start=1):
        model.params[f"W{i}"] = w.copy()
    return nndiag.Subject(model, numpy_models.data(seed))


def _jax(act: str, layers: list[np.ndarray], seed: int) -> nndiag.Subject:
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp

    from tests.backends import jax_models

    params = {
        "layers": [
            {"W": jnp.asarray(w, jnp.float32), "b": jnp.zeros(w.shape[1], jnp.float32)}
            for w in layers
        ]
    }
    fn = jax.nn.relu if act == "relu" else jnp.tanh
    return nndiag.Subject((jax_models.mlp(fn), params), jax_models.classification(seed))


BACKENDS = {"torch": _torch, "numpy": _numpy, "jax": _jax}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _run(backend: str, act: str, layers: list[np.ndarray], seed: int = 0) -> nndiag.CheckResult:
    subject = BACKENDS[backend](act, layers, seed)
    return nndiag.diagnose(subject, ["init_scale"])["init_scale"]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("act", "init"), [("relu", _he), ("tanh", _xavier), ("relu", _xavier)])
def test_he_and_xavier_nets_pass(backend: str, seed: int, act: str, init: object) -> None:
    result = _run(backend, act, _layers(init, 5, 64, seed), seed)
    assert result.status == "pass", result.summary()
    assert result.metrics["judged"] == 4  # the output layer is initial_loss's
    assert 0.6 < result.metrics["min_ratio"] <= result.metrics["max_ratio"] < 1.6


def test_pytorch_default_init_passes_at_041_he() -> None:
    for seed in range(3):
        result = nndiag.diagnose(torch_models.default_relu_mlp(seed), ["init_scale"])
        check = result["init_scale"]
        assert check.status == "pass", check.summary()
        assert check.metrics["max_ratio"] == pytest.approx(1 / math.sqrt(6), rel=0.1)


def test_lecture_small_init_tanh_fails_too_small(backend: str) -> None:
    result = _run(backend, "tanh", _layers(lambda fan_in: 0.01, 5, 100, 0))
    assert result.status == "fail", result.summary()
    assert result.metrics["cause"] == "too_small"
    assert "Init too small" in result.message and "Xavier" in result.hint
    assert result.metrics["max_ratio"] < 0.11  # 0.01 against 1/sqrt(100)


def test_unit_std_tanh_at_fan_in_500_fails_too_large(backend: str) -> None:
    result = _run(backend, "tanh", _layers(lambda fan_in: 1.0, 5, 500, 0))
    assert result.status == "fail", result.summary()
    assert result.metrics["cause"] == "too_large"
    assert result.metrics["max_ratio"] == pytest.approx(math.sqrt(500), rel=0.05)
    assert f"wants {1 / math.sqrt(500):.3g}" in result.hint  # Xavier at fan_in 500


def test_one_layer_four_times_too_small_warns_naming_it(backend: str) -> None:
    result = _run(backend, "relu", _layers(_he, 5, 64, 0, scale={2: 0.25}))
    assert result.status == "warn", result.summary()
    assert result.metrics["cause"] == "too_small"
    flagged = [row["name"] for row in result.evidence["layers"] if row["status"] == "warn"]
    names = {"torch": "4", "numpy": "W3", "jax": "layers/2/W"}
    assert flagged == [names[backend]] and result.metrics["first_bad_layer"] == names[backend]


@pytest.mark.parametrize("init", ["zeros", "constant"])
def test_identical_units_fail_as_symmetric(backend: str, init: str) -> None:
    result = _run(backend, "relu", _layers(init, 4, 64, 0))
    assert result.status == "fail", result.summary()
    assert result.metrics["cause"] == "symmetric"
    assert len(result.metrics["symmetric_layers"]) == 3  # every hidden layer, not the output
    assert "never differentiate" in result.message
    assert ("all zero" in result.message) == (init == "zeros")


def test_a_zero_output_layer_is_left_to_initial_loss(backend: str) -> None:
    layers = _layers(_he, 4, 64, 0)
    layers[-1] = np.zeros_like(layers[-1])
    result = _run(backend, "relu", layers)
    assert result.status == "pass", result.summary()


class _ConvNet(nn.Module):
    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8) if norm else nn.Identity()
        self.bn2 = nn.BatchNorm2d(16) if norm else nn.Identity()
        self.fc = nn.Linear(16 * 4 * 4, CLASSES)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.mul_(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("norm", [True, False])
def test_convs_followed_by_batchnorm_are_not_judged_on_scale(norm: bool) -> None:
    torch.manual_seed(0)
    X = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    subject = nndiag.Subject(_ConvNet(norm), (X, torch.arange(32) % CLASSES))
    result = nndiag.diagnose(subject, ["init_scale"])["init_scale"]
    if norm:
        assert result.status == "pass", result.summary()
        assert result.metrics["normalized_left_out"] == 2 and result.metrics["judged"] == 0
        assert all("scale-invariant" in row["not_judged"] for row in result.evidence["layers"])
    else:  # the same 0.01x weights with nothing to re-set the scale
        assert result.status == "fail" and result.metrics["cause"] == "too_small"
        assert result.metrics["first_bad_layer"] in ("conv1", "conv2")


def test_weights_are_units_by_fan_in_and_read_only(backend: str) -> None:
    layers = _layers(_he, 3, 64, 0)
    subject = BACKENDS[backend]("relu", layers, 0)
    session = subject.backend.session(subject, nndiag.Config())
    found = session.weights()
    assert [m.shape for m in found.values()] == [w.T.shape for w in layers]
    for matrix, w in zip(found.values(), layers):
        np.testing.assert_allclose(matrix, w.T, rtol=1e-6)
        assert not matrix.flags.writeable


def test_transformer_conv1d_and_conv_weights_have_units_first() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(CLASSES))
    X = torch.randn(4, 3, 6, 6)
    model(X)
    subject = nndiag.Subject(model, (X, torch.arange(4)))
    found = subject.backend.session(subject, nndiag.Config()).weights()
    assert found["0"].shape == (8, 27) and found["3"].shape == (CLASSES, 8 * 16)


def test_the_plot_draws_from_real_evidence() -> None:
    from nndiag.report import plots

    result = _run("torch", "tanh", _layers(lambda fan_in: 0.01, 5, 100, 0))
    (plot,) = plots.plots_for(result)
    assert plot.uri and plot.note is None and "He/Xavier" in plot.alt


def test_jax_layers_normalized_by_an_rsqrt_are_not_judged_on_scale() -> None:
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp

    from tests.backends import jax_models

    def layer_norm(x: jax.Array) -> jax.Array:
        centered = x - x.mean(-1, keepdims=True)
        return centered * jax.lax.rsqrt((centered**2).mean(-1, keepdims=True) + 1e-5)

    def apply(params: jax_models.Params, x: jax.Array) -> jax.Array:
        *hidden, last = params["layers"]
        for layer in hidden:
            x = jax.nn.relu(layer_norm(x @ layer["W"]))
        return x @ last["W"]

    layers = _layers(lambda fan_in: 0.001, 4, 64, 0)
    params = {"layers": [{"W": jnp.asarray(w, jnp.float32)} for w in layers]}
    subject = nndiag.Subject((apply, params), jax_models.classification(0))
    result = nndiag.diagnose(subject, ["init_scale"])["init_scale"]
    assert result.status == "pass", result.summary()
    assert result.metrics["normalized_left_out"] == 3 and result.metrics["judged"] == 0


class _HeadFirst(nn.Module):
    """A tanh MLP that declares its head before its body: the head runs last, so it is the
    output layer whatever the declaration order."""

    def __init__(self, small: float) -> None:
        super().__init__()
        self.head = nn.Linear(100, CLASSES)
        self.body = nn.ModuleList(nn.Linear(IN if i == 0 else 100, 100) for i in range(3))
        with torch.no_grad():
            for i, layer in enumerate(self.body):
                nn.init.normal_(layer.weight, std=1 / math.sqrt(layer.in_features))
                if i > 0:
                    layer.weight.mul_(small)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.body:
            x = torch.tanh(layer(x))
        return self.head(x)


@pytest.mark.parametrize("small", [1.0, 0.2])
def test_the_output_layer_is_the_one_that_runs_last(small: float) -> None:
    torch.manual_seed(0)
    subject = nndiag.Subject(_HeadFirst(small), torch_models._classification(0))
    result = nndiag.diagnose(subject, ["init_scale"])["init_scale"]
    assert result.metrics["output_layer"] == "head"
    if small == 1.0:
        assert result.status == "pass", result.summary()
    else:  # body.1 and body.2 at 0.2x Xavier: 0.04x over two layers
        assert result.status == "fail" and result.metrics["cause"] == "too_small"
        assert "body.1" in result.message and "body.2" in result.message


class _NormalizedMiddle(nn.Module):
    """Four ReLU layers at 0.25x He with a batch norm after the second: two runs of one
    off layer each (warn), not one run of three compounding to 0.016x (fail)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(IN if i == 0 else 64, 64) for i in range(4))
        self.norm = nn.BatchNorm1d(64)
        self.out = nn.Linear(64, CLASSES)
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                scale = 1.0 if i == 3 else 0.25
                nn.init.normal_(layer.weight, std=scale * _he(layer.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            x = torch.relu(self.norm(x) if i == 1 else x)
        return self.out(x)


def test_a_normalization_ends_a_run_of_off_layers() -> None:
    torch.manual_seed(0)
    subject = nndiag.Subject(_NormalizedMiddle(), torch_models._classification(0))
    result = nndiag.diagnose(subject, ["init_scale"])["init_scale"]
    assert result.status == "warn", result.summary()
    statuses = {row["name"]: row["status"] for row in result.evidence["layers"]}
    assert statuses == {
        "layers.0": "warn",
        "layers.1": "pass",
        "layers.2": "warn",
        "layers.3": "pass",
    }, statuses
