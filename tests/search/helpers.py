"""Factories for the search tests: tiny CS231n-protocol numpy models and data, importable
by worker processes (a spawned worker imports the factory by name)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import nndiag

DIM, SAMPLES, HELD = 8, 96, 64
STEPS = 20


def regression_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linear targets of ill-conditioned features: plain gradient descent for STEPS steps
    has one best learning rate (slower is unconverged, faster oscillates or diverges)."""
    rng = np.random.default_rng(seed)
    scales = np.logspace(0, 1, DIM)  # feature scales 1..10: curvatures 1..100
    X = rng.standard_normal((SAMPLES + HELD, DIM)) * scales
    w = rng.standard_normal(DIM)
    y = X @ w + 0.1 * rng.standard_normal(SAMPLES + HELD)
    return X[:SAMPLES], y[:SAMPLES], X[SAMPLES:], y[SAMPLES:]


class Linear:
    """``scores = X @ W + b`` with the mean squared error ``mean((s - y)**2) / 2``."""

    def __init__(self) -> None:
        self.params = {"W": np.zeros((DIM, 1)), "b": np.zeros(1)}
        self.reg = 0.0

    def loss(self, X: np.ndarray, y: np.ndarray | None = None) -> Any:
        scores = X @ self.params["W"] + self.params["b"]
        if y is None:
            return scores
        diff = scores[:, 0] - y
        loss = 0.5 * float(np.mean(diff**2)) + 0.5 * self.reg * float(np.sum(self.params["W"] ** 2))
        dscores = (diff / len(y))[:, None]
        grads = {
            "W": X.T @ dscores + self.reg * self.params["W"],
            "b": dscores.sum(axis=0),
        }
        return loss, grads


def sgd(w: np.ndarray, dw: np.ndarray, config: dict[str, Any]) -> tuple[np.ndarray, dict]:
    """The assignments' plain SGD update rule."""
    return w - config["learning_rate"] * dw, config


def regression(params: dict[str, Any]) -> nndiag.Subject:
    X, y, _, _ = regression_data()
    return nndiag.Subject(Linear(), (X, y), optimizer=sgd, regularization="reg")


def random_init(params: dict[str, Any]) -> nndiag.Subject:
    """As most factories are written: the weights drawn from numpy's global generator."""
    X, y, _, _ = regression_data()
    model = Linear()
    model.params["W"] = np.random.randn(DIM, 1) * 0.3
    return nndiag.Subject(model, (X, y), optimizer=sgd, regularization="reg")


def validation_data() -> tuple[np.ndarray, np.ndarray]:
    _, _, Xv, yv = regression_data()
    return Xv, yv


def grid_loss(lr: float, steps: int = STEPS) -> float:
    """Validation loss after ``steps`` full-batch SGD steps at ``lr``, computed directly
    (no nndiag): the reference the search is compared with."""
    X, y, Xv, yv = regression_data()
    W, b = np.zeros(DIM), 0.0
    for _ in range(steps):
        diff = X @ W + b - y
        if not np.all(np.isfinite(diff)) or np.mean(diff**2) > 1e30:
            return float("inf")
        W, b = W - lr * X.T @ diff / len(y), b - lr * diff.mean()
    out = 0.5 * float(np.mean((Xv @ W + b - yv) ** 2))
    return out if np.isfinite(out) else float("inf")


class Softmax:
    """A linear softmax classifier (the assignments' loss) on two Gaussian blobs."""

    def __init__(self, fail: bool = False) -> None:
        self.params = {"W": np.zeros((DIM, 2)), "b": np.zeros(2)}
        self.reg = 0.0
        self.fail = fail

    def loss(self, X: np.ndarray, y: np.ndarray | None = None) -> Any:
        if self.fail and y is not None:
            raise ValueError("the model broke")
        scores = X @ self.params["W"] + self.params["b"]
        if y is None:
            return scores
        shifted = scores - scores.max(axis=1, keepdims=True)
        p = np.exp(shifted)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-300)))
        loss += 0.5 * self.reg * float(np.sum(self.params["W"] ** 2))
        dscores = p.copy()
        dscores[np.arange(len(y)), y] -= 1
        dscores /= len(y)
        return loss, {"W": X.T @ dscores + self.reg * self.params["W"], "b": dscores.sum(0)}


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, SAMPLES)
    X = rng.standard_normal((SAMPLES, DIM)) + 1.5 * (2 * y[:, None] - 1)
    return X, y


def classifier(params: dict[str, Any]) -> nndiag.Subject:
    """Fails for learning rates above 0.5 (the model raises): the search goes on."""
    return nndiag.Subject(
        Softmax(fail=params["lr"] > 0.5), blobs(), optimizer=sgd, regularization="reg"
    )


def stopping(params: dict[str, Any]) -> nndiag.Subject:
    """Like ``regression``, but the trial of the NNDIAG_TEST_STOP-th call tells the parent
    it has started (one line on stdout) and waits on stdin: the parent kills it there."""
    marker = os.environ.get("NNDIAG_TEST_STOP_FILE")
    if marker:
        with open(marker, "a") as handle:
            handle.write("x")
        calls = os.path.getsize(marker)
        if calls == int(os.environ.get("NNDIAG_TEST_STOP", "0")):
            import sys

            print("started", flush=True)
            sys.stdin.read()
    return regression(params)
