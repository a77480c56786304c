"""input_stats on every backend: healthy data passes; raw pixels, un-normalized images, a
constant feature, scaled features and imbalanced labels warn with their cause; token ids
are not judged."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import nndiag
from tests.backends import numpy_models

CLASSES = 10
# ImageNet's per-channel statistics of ToTensor output (torchvision's Normalize defaults)
MEANS, STDS = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _torch(X: np.ndarray, y: np.ndarray) -> nndiag.Subject:
    torch.manual_seed(0)
    features = int(np.prod(X.shape[1:]))
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, CLASSES))
    return nndiag.Subject(model, (torch.from_numpy(X), torch.from_numpy(y)))


def _numpy(X: np.ndarray, y: np.ndarray) -> nndiag.Subject:
    features = int(np.prod(X.shape[1:]))
    model = numpy_models.FullyConnectedNet([features, 32, CLASSES], seed=0)
    return nndiag.Subject(model, (X.astype(np.float64), y))


def _jax(X: np.ndarray, y: np.ndarray) -> nndiag.Subject:
    pytest.importorskip("jax")
    import jax

    from tests.backends import jax_models

    features = int(np.prod(X.shape[1:]))
    body = jax_models.mlp(jax.nn.relu)

    def apply(params: jax_models.Params, x: jax.Array) -> jax.Array:
        return body(params, x.reshape(len(x), -1))

    params = jax_models.init_mlp(0, 2, jax_models.he, width=32, features=features)
    return nndiag.Subject((apply, params), (X, y))


BACKENDS: dict[str, Callable[[np.ndarray, np.ndarray], nndiag.Subject]] = {
    "torch": _torch,
    "numpy": _numpy,
    "jax": _jax,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(100 + seed).integers(0, CLASSES, n)


def _images(backend: str, n: int = 64, seed: int = 0) -> np.ndarray:
    """(N, 3, 8, 8) standard normal images; channels last for JAX, as its users hold them."""
    X = np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)
    return np.ascontiguousarray(X.transpose(0, 2, 3, 1)) if backend == "jax" else X


def _run(backend: str, X: np.ndarray, y: np.ndarray) -> nndiag.CheckResult:
    return nndiag.diagnose(BACKENDS[backend](X, y), ["input_stats"])["input_stats"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_standardized_tabular_data_and_images_pass(backend: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((128, 32)).astype(np.float32)
    result = _run(backend, X, _labels(128, seed))
    assert result.status == "pass", result.summary()
    assert result.metrics["layout"] == "tabular" and result.metrics["features"] == 32
    images = _run(backend, _images(backend, seed=seed), _labels(64, seed))
    assert images.status == "pass", images.summary()
    assert images.metrics["layout"] == "image" and images.metrics["channels"] == 3


def test_raw_pixels_warn_with_the_fix(backend: str) -> None:
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, _images(backend).shape).astype(np.float32)
    result = _run(backend, X, _labels(64))
    assert result.status == "warn", result.summary()
    assert result.metrics["cause"] == "raw_pixels"
    assert "raw pixel values" in result.message and "X / 255" in result.hint
    assert result.metrics["channels"] == 3  # channels-last for JAX is read as channels


def test_unnormalized_images_warn_naming_the_measured_channel_means(backend: str) -> None:
    rng = np.random.default_rng(0)
    X = (
        rng.standard_normal((64, 3, 8, 8)) * np.array(STDS)[:, None, None]
        + np.array(MEANS)[:, None, None]
    )
    X = X.astype(np.float32)
    if backend == "jax":
        X = np.ascontiguousarray(X.transpose(0, 2, 3, 1))
    result = _run(backend, X, _labels(64))
    assert result.status == "warn", result.summary()
    assert result.metrics["cause"] == "not_centered"
    axes = (0, 1, 2) if backend == "jax" else (0, 2, 3)
    for mean in X.mean(axis=axes, dtype=np.float64):
        assert f"{mean:.3g}" in result.message and f"{mean:.3g}" in result.hint
    means = [c["mean"] for c in result.evidence["channels"]]
    assert means == pytest.approx(list(MEANS), abs=0.05)
    fix = {"torch": "transforms.Normalize(mean=", "numpy": "X -= X.mean(axis=0)", "jax": "jnp."}
    assert fix[backend] in result.hint


def test_a_constant_feature_warns_naming_it(backend: str) -> None:
    X = np.random.default_rng(0).standard_normal((128, 32)).astype(np.float32)
    X[:, 5] = 3.0
    result = _run(backend, X, _labels(128))
    assert result.status == "warn", result.summary()
    assert result.metrics["causes"] == ["constant"] and result.metrics["constant"] == 1
    assert "feature 5" in result.message


@pytest.mark.parametrize(("scale", "cause"), [(50.0, "scale"), (0.01, "scale"), (1.0, None)])
def test_features_far_from_unit_scale_warn(backend: str, scale: float, cause: str | None) -> None:
    X = (np.random.default_rng(0).standard_normal((128, 32)) * scale).astype(np.float32)
    result = _run(backend, X, _labels(128))
    assert result.metrics.get("cause") == cause, result.summary()
    assert result.status == ("warn" if cause else "pass")


def test_imbalanced_labels_warn_naming_the_class(backend: str) -> None:
    rng = np.random.default_rng(0)
    y = np.where(rng.random(200) < 0.9, 3, rng.integers(0, CLASSES, 200))
    X = rng.standard_normal((200, 32)).astype(np.float32)
    result = _run(backend, X, y)
    assert result.status == "warn", result.summary()
    assert result.metrics["cause"] == "imbalance" and result.metrics["largest_class"] == 3
    assert result.metrics["largest_class_share"] > 0.85
    assert "class 3 holds" in result.message


def test_a_small_batch_is_not_called_imbalanced(backend: str) -> None:
    # 5 of 16 labels in one class of 10: C * P(Binomial(16, 0.1) >= 5) = 0.17, chance.
    y = np.array([0] * 5 + list(range(1, 10)) + [1, 2])
    X = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    result = _run(backend, X, y)
    assert result.status == "pass", result.summary()
    assert result.metrics["label_p_uniform"] == pytest.approx(0.17, abs=0.01)


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def test_token_ids_are_not_judged() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (32, 8), generator=g)
    per_token = torch.randint(0, CLASSES, (32, 8), generator=g)

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out.reshape(-1, CLASSES), y.reshape(-1))

    subject = nndiag.Subject(_Tokens(), (ids, per_token), loss=loss)
    result = nndiag.diagnose(subject, ["input_stats"])["input_stats"]
    assert result.status == "skip" and "token ids" in result.message


def test_images_with_constant_border_pixels_are_not_constant_channels() -> None:
    # MNIST-like: a zero border around a standardized centre; only whole channels count.
    X = np.zeros((64, 1, 12, 12), dtype=np.float32)
    X[:, :, 2:10, 2:10] = np.random.default_rng(0).standard_normal((64, 1, 8, 8))
    result = _run("torch", X, _labels(64))
    assert result.status == "pass", result.summary()


def test_sequences_are_judged_per_feature() -> None:
    X = np.random.default_rng(0).standard_normal((64, 10, 6)).astype(np.float32)
    X[..., 2] += 5.0
    result = _run("torch", X, _labels(64))
    assert result.metrics["layout"] == "sequence" and result.metrics["features"] == 6
    assert result.metrics["cause"] == "not_centered" and "feature 2" in result.message


def test_the_plot_draws_from_real_evidence() -> None:
    from nndiag.report import plots

    rng = np.random.default_rng(0)
    result = _run("torch", rng.integers(0, 256, (64, 3, 8, 8)).astype(np.float32), _labels(64))
    (plot,) = plots.plots_for(result)
    assert plot.uri and plot.note is None and "per channel" in plot.alt
