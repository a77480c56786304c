"""Small healthy and broken JAX models, each with the data it is diagnosed on.

The JAX counterparts of ``tests/models.py``: every builder takes a seed and returns an
``nndiag.Subject`` of an ``(apply_fn, params)`` pair; the broken ones carry the bug named in
their docstring and nothing else. Weights come from numpy generators, so a test can build
the very same network in torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import nndiag

IN, WIDTH, CLASSES, N = 32, 64, 10, 128
Params = dict[str, list[dict[str, jax.Array]]]


def classification(seed: int, n: int = N, features: int = IN) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + seed)
    X = rng.standard_normal((n, features)).astype(np.float32)
    return X, rng.integers(0, CLASSES, n)


def init_mlp(
    seed: int,
    depth: int,
    std: Callable[[int], float] | None,
    width: int = WIDTH,
    features: int = IN,
    out: int = CLASSES,
    bias: bool = True,
) -> Params:
    """``depth`` dense layers, ``W`` of shape (fan_in, fan_out) applied as ``x @ W``.

    ``std(fan_in)`` gives the weights' normal std; None draws torch's default
    (uniform within 1/sqrt(fan_in), bias too).
    """
    rng = np.random.default_rng(seed)
    sizes = [features] + [width] * (depth - 1) + [out]
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1 / math.sqrt(fan_in)
        if std is None or i == depth - 1:
            W = rng.uniform(-bound, bound, (fan_in, fan_out))
            b = rng.uniform(-bound, bound, fan_out)
        else:
            W = rng.normal(0.0, std(fan_in), (fan_in, fan_out))
            b = np.zeros(fan_out)
        layer = {"W": jnp.asarray(W, dtype=jnp.float32)}
        if bias:
            layer["b"] = jnp.asarray(b, dtype=jnp.float32)
        layers.append(layer)
    return {"layers": layers}


def mlp(act: Callable[[jax.Array], jax.Array]) -> Callable[[Params, jax.Array], jax.Array]:
    """``apply_fn`` of a plain MLP: ``act`` after every layer but the last."""

    def apply(params: Params, x: jax.Array) -> jax.Array:
        *hidden, last = params["layers"]
        for layer in hidden:
            x = act(x @ layer["W"] + layer.get("b", 0.0))
        return x @ last["W"] + last.get("b", 0.0)

    return apply


def he(fan_in: int) -> float:
    return math.sqrt(2 / fan_in)


def xavier(fan_in: int) -> float:
    return 1 / math.sqrt(fan_in)


def gaussian(std: float) -> Callable[[int], float]:
    return lambda fan_in: std


def weights(params: Params) -> list[jax.Array]:
    return [layer["W"] for layer in params["layers"]]


# -- healthy -----------------------------------------------------------------------------
def he_relu_mlp(seed: int = 0) -> nndiag.Subject:
    model = (mlp(jax.nn.relu), init_mlp(seed, 5, he))
    return nndiag.Subject(model, classification(seed), name="jax_he_relu_mlp")


def xavier_tanh_mlp(seed: int = 0) -> nndiag.Subject:
    model = (mlp(jnp.tanh), init_mlp(seed, 5, xavier))
    return nndiag.Subject(model, classification(seed), name="jax_xavier_tanh_mlp")


def regression_mlp(seed: int = 0) -> nndiag.Subject:
    rng = np.random.default_rng(1000 + seed)
    X = rng.standard_normal((N, 8)).astype(np.float32)
    y = np.sin(X[:, :1] * 2) + 0.5 * X[:, 1:2]
    y = ((y - y.mean()) / y.std()).astype(np.float32)
    model = (mlp(jax.nn.relu), init_mlp(seed, 3, None, features=8, out=1))
    return nndiag.Subject(model, (X, y), name="jax_regression_mlp")


def l2_penalty(params: Params) -> jax.Array:
    return 0.5 * 1e-4 * sum(jnp.sum(W**2) for W in weights(params))


def l2_mlp(seed: int = 0) -> nndiag.Subject:
    """Healthy: ``regularization=penalty(params)``, nndiag scales it."""
    model = (mlp(jax.nn.relu), init_mlp(seed, 3, he))
    return nndiag.Subject(model, classification(seed), regularization=l2_penalty, name="jax_l2_mlp")


def holder_subject(
    seed: int = 0, ignore_knob: bool = False, name: str = "jax_holder_mlp"
) -> tuple[nndiag.Subject, dict[str, float]]:
    """The loss reads its strength from a dict the setter writes (the protocol form);
    returns the subject and that dict. The loss sees the outputs, not the parameters, so
    its penalty is on the outputs (activity regularization)."""
    params = init_mlp(seed, 3, he)
    holder = {"l2": 1e-4}
    frozen = holder["l2"]

    def loss(out: jax.Array, y: jax.Array) -> jax.Array:
        strength = frozen if ignore_knob else holder["l2"]
        logp = jax.nn.log_softmax(out)
        penalty = 0.5 * strength * jnp.mean(out**2)
        return -jnp.take_along_axis(logp, y[:, None], 1).mean() + penalty

    def set_l2(model: Any, strength: float) -> None:
        holder["l2"] = strength

    subject = nndiag.Subject(
        (mlp(jax.nn.relu), params),
        classification(seed),
        loss=loss,
        regularization=set_l2,
        name=name,
    )
    return subject, holder


def holder_mlp(seed: int = 0) -> nndiag.Subject:
    return holder_subject(seed)[0]


HEALTHY = {
    f.__name__: f for f in (he_relu_mlp, xavier_tanh_mlp, regression_mlp, l2_mlp, holder_mlp)
}


# -- broken ------------------------------------------------------------------------------
def small_init_tanh(seed: int = 0) -> nndiag.Subject:
    """Lecture demo: W = 0.01 N(0,1) in a deep tanh net; activations collapse."""
    model = (mlp(jnp.tanh), init_mlp(seed, 8, gaussian(0.01), width=100, bias=False))
    return nndiag.Subject(model, classification(seed), name="jax_small_init_tanh")


def large_init_tanh(seed: int = 0) -> nndiag.Subject:
    """Lecture demo: W = 1.0 N(0,1) in a deep tanh net; units saturate at +-1."""
    model = (mlp(jnp.tanh), init_mlp(seed, 8, gaussian(1.0), width=100, bias=False))
    return nndiag.Subject(model, classification(seed), name="jax_large_init_tanh")


def dead_relu(seed: int = 0) -> nndiag.Subject:
    """The second hidden layer's bias is -10: its ReLUs never fire."""
    params = init_mlp(seed, 4, he)
    params["layers"][1]["b"] = jnp.full(WIDTH, -10.0)
    return nndiag.Subject((mlp(jax.nn.relu), params), classification(seed), name="jax_dead_relu")


def double_softmax(seed: int = 0) -> nndiag.Subject:
    """The model outputs probabilities; cross-entropy applies log-softmax again."""
    body = mlp(jax.nn.relu)

    def apply(params: Params, x: jax.Array) -> jax.Array:
        return jax.nn.softmax(body(params, x))

    return nndiag.Subject(
        (apply, init_mlp(seed, 3, he)), classification(seed), name="jax_double_softmax"
    )


@jax.custom_vjp
def leaky_backward_relu(x: jax.Array) -> jax.Array:
    """ReLU whose backward also lets through 10% of the gradient of negative inputs."""
    return jnp.maximum(x, 0.0)


def _relu_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.maximum(x, 0.0), x


def _relu_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (g * jnp.where(x > 0, 1.0, 0.1).astype(g.dtype),)


leaky_backward_relu.defvjp(_relu_fwd, _relu_bwd)


def wrong_backward(seed: int = 0) -> nndiag.Subject:
    model = (mlp(leaky_backward_relu), init_mlp(seed, 2, None))
    return nndiag.Subject(model, classification(seed), name="jax_wrong_backward")


def stop_gradient(seed: int = 0) -> nndiag.Subject:
    """``jax.lax.stop_gradient`` after the first layer cuts it off the graph."""

    def apply(params: Params, x: jax.Array) -> jax.Array:
        first, last = params["layers"]
        h = jax.lax.stop_gradient(jax.nn.relu(x @ first["W"] + first["b"]))
        return h @ last["W"] + last["b"]

    return nndiag.Subject(
        (apply, init_mlp(seed, 2, None)), classification(seed), name="jax_stop_gradient"
    )


def ignored_knob(seed: int = 0) -> nndiag.Subject:
    """The loss uses a strength frozen at construction; the setter changes nothing."""
    return holder_subject(seed, True, "jax_ignored_knob")[0]


def huge_last_layer(seed: int = 0) -> nndiag.Subject:
    params = init_mlp(seed, 3, he)
    params["layers"][-1]["W"] = params["layers"][-1]["W"] * 100.0
    return nndiag.Subject(
        (mlp(jax.nn.relu), params), classification(seed), name="jax_huge_last_layer"
    )


# bug -> the check that must fail on it
BROKEN = {
    "small_init_tanh": (small_init_tanh, "activation_stats"),
    "large_init_tanh": (large_init_tanh, "activation_stats"),
    "dead_relu": (dead_relu, "dead_neurons"),
    "double_softmax": (double_softmax, "overfit_small"),
    "wrong_backward": (wrong_backward, "gradient_check"),
    "stop_gradient": (stop_gradient, "gradient_check"),
    "ignored_knob": (ignored_knob, "regularization_loss"),
    "huge_last_layer": (huge_last_layer, "initial_loss"),
}
