"""CS231n-assignment-style numpy models: ``params`` dict, ``loss(X, y)``, ``reg``."""

from __future__ import annotations

from typing import Any

import numpy as np

CLASSES = 10


class FullyConnectedNet:
    """affine - act - ... - affine - softmax, with L2 ``reg``, optional dropout, as in the
    assignment; ``bugs`` switches on one named defect."""

    def __init__(
        self,
        dims: list[int],
        weight_scale: float | str = "he",
        act: str = "relu",
        reg: float = 0.0,
        dropout: float | None = None,
        dtype: Any = np.float64,
        seed: int = 0,
        bugs: frozenset[str] = frozenset(),
        last_scale: float | None = 1e-2,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.params: dict[str, np.ndarray] = {}
        self.layers = len(dims) - 1
        for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:]), start=1):
            scale = {"he": np.sqrt(2 / fan_in), "xavier": np.sqrt(1 / fan_in)}.get(
                weight_scale, weight_scale
            )  # type: ignore[arg-type]
            if i == len(dims) - 1 and last_scale is not None:
                scale = last_scale  # a small last layer: the assignments' loss of ~ln C
            self.params[f"W{i}"] = (scale * rng.standard_normal((fan_in, fan_out))).astype(dtype)
            self.params[f"b{i}"] = np.zeros(fan_out, dtype=dtype)
        self.act = act
        self.reg = reg
        self.bugs = bugs
        self.dropout_param = {"mode": "train", "p": dropout} if dropout else None
        if "dead" in bugs:
            self.params["b2"][:] = -10.0
        if "huge_last" in bugs:
            self.params[f"W{self.layers}"] *= 100.0

    def _forward(self, X: np.ndarray, train: bool) -> tuple[np.ndarray, list[tuple]]:
        h = X.reshape(len(X), -1)
        caches = []
        for i in range(1, self.layers):
            z = h @ self.params[f"W{i}"] + self.params[f"b{i}"]
            a = np.maximum(z, 0) if self.act == "relu" else np.tanh(z)
            mask = None
            if self.dropout_param and train:
                p = self.dropout_param["p"]
                mask = (np.random.rand(*a.shape) < p) / p
                a = a * mask
            caches.append((h, z, a, mask))
            h = a
        scores = h @ self.params[f"W{self.layers}"] + self.params[f"b{self.layers}"]
        caches.append((h, None, None, None))
        return scores, caches

    def activations(self, X: np.ndarray) -> dict[str, np.ndarray]:
        h, found = X.reshape(len(X), -1), {}
        for i in range(1, self.layers):
            z = h @ self.params[f"W{i}"] + self.params[f"b{i}"]
            h = np.maximum(z, 0) if self.act == "relu" else np.tanh(z)
            found[f"{self.act}{i}"] = h
        return found

    def loss(self, X: np.ndarray, y: np.ndarray | None = None) -> Any:
        if "unfinished" in self.bugs and y is not None:
            raise NotImplementedError("TODO: implement the backward pass")
        if self.dropout_param:
            self.dropout_param["mode"] = "test" if y is None else "train"
        scores, caches = self._forward(X, train=y is not None)
        if "double_softmax" in self.bugs:
            e = np.exp(scores - scores.max(1, keepdims=True))
            scores = e / e.sum(1, keepdims=True)
        if y is None:
            return scores
        shifted = scores - scores.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        n = len(X)
        loss = -np.log(probs[np.arange(n), y]).mean()
        strength = 1e-4 if "ignored_reg" in self.bugs else self.reg
        penalized = self.layers if "reg_loss_skips_last" in self.bugs else self.layers + 1
        loss += 0.5 * strength * sum((self.params[f"W{i}"] ** 2).sum() for i in range(1, penalized))
        grad_strength = 2 * strength if "reg_grad_doubled" in self.bugs else strength
        if "reg_grad_missing" in self.bugs:  # a public solution's slip: no reg * W in grads
            grad_strength = 0.0
        dscores = probs.copy()
        dscores[np.arange(n), y] -= 1
        dscores /= n
        if "double_softmax" in self.bugs:  # backward through the extra softmax
            s = scores
            dscores = s * (dscores - (dscores * s).sum(1, keepdims=True))
        grads: dict[str, np.ndarray] = {}
        d = dscores
        for i in range(self.layers, 0, -1):
            h, _, _, _ = caches[i - 1]
            grads[f"W{i}"] = h.T @ d + grad_strength * self.params[f"W{i}"]
            grads[f"b{i}"] = d.sum(axis=0)
            if i > 1:
                _, z, a, mask = caches[i - 2]
                d = d @ self.params[f"W{i}"].T
                if mask is not None:
                    d = d * mask
                if self.act == "relu":
                    d = d * ((z > 0) + (0.1 * (z <= 0) if "leaky_backward" in self.bugs else 0))
                else:
                    d = d * (1 - np.tanh(z) ** 2)
        if "missing_grad" in self.bugs:
            del grads["b1"]
        return loss, grads


def data(seed: int = 0, n: int = 128, features: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + seed)
    return rng.standard_normal((n, features)), rng.integers(0, CLASSES, n)


def net(seed: int = 0, **kwargs: Any) -> FullyConnectedNet:
    dims = kwargs.pop("dims", [32, 64, 64, CLASSES])
    return FullyConnectedNet(dims, seed=seed, **kwargs)


HEALTHY = {
    "he_relu": lambda s: net(s, reg=1e-3),
    "xavier_tanh": lambda s: net(s, weight_scale="xavier", act="tanh", reg=1e-3),
    "float32_dropout": lambda s: net(s, dtype=np.float32, dropout=0.8, reg=1e-3),
}
BROKEN = {
    "small_init_tanh": (
        lambda s: net(
            s, dims=[32] + [100] * 7 + [CLASSES], weight_scale=0.01, act="tanh", last_scale=None
        ),
        "activation_stats",
    ),
    "large_init_tanh": (
        lambda s: net(
            s, dims=[32] + [100] * 7 + [CLASSES], weight_scale=1.0, act="tanh", last_scale=None
        ),
        "activation_stats",
    ),
    "dead_relu": (lambda s: net(s, bugs=frozenset({"dead"})), "dead_neurons"),
    "double_softmax": (lambda s: net(s, bugs=frozenset({"double_softmax"})), "overfit_small"),
    "wrong_backward": (lambda s: net(s, bugs=frozenset({"leaky_backward"})), "gradient_check"),
    "missing_grad": (lambda s: net(s, bugs=frozenset({"missing_grad"})), "gradient_check"),
    "ignored_reg": (lambda s: net(s, bugs=frozenset({"ignored_reg"})), "regularization_loss"),
    "huge_last_layer": (lambda s: net(s, bugs=frozenset({"huge_last"})), "initial_loss"),
}
