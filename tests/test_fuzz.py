"""Generated architectures through every default check: no exception escapes, no check
ends as an internal nndiag error, and the model, its gradients, its modes and the global
RNGs are bit-identical afterwards."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import nndiag
from nndiag.strategies import architectures

FAST = nndiag.Config(overfit_steps=40, independence_rows=4, max_samples=64)


@st.composite
def odd_models(draw: st.DrawFn) -> nn.Module:
    """An MLP with the odd parts users' models have: dropout, a frozen or eval-mode
    layer, tied weights, gradients left over from the user's own step."""
    model = draw(
        architectures(in_features=6, out_features=3, normalization=(None, "layer", "batch"))
    )
    layers = [m for m in model if isinstance(m, nn.Linear)]
    if draw(st.booleans()):
        model.insert(1, nn.Dropout(draw(st.sampled_from([0.1, 0.5]))))
    if len(layers) > 1 and draw(st.booleans()):
        layers[0].requires_grad_(False)
    if draw(st.booleans()):
        model[0].eval()
    square = [m for m in layers[:-1] if m.in_features == m.out_features]
    if len(square) > 1 and draw(st.booleans()):
        square[1].weight = square[0].weight  # tied
    if draw(st.booleans()):
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.full_like(p, 0.25)
    return model


def _state(model: nn.Module) -> list[Any]:
    tensors = [t.clone() for t in model.state_dict(keep_vars=True).values()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    flags = [
        (m.training, [p.requires_grad for p in m.parameters(recurse=False)])
        for m in model.modules()
    ]
    return [tensors, grads, flags]


def _same(a: list[Any], b: list[Any]) -> bool:
    def equal(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)
        return bool(x == y)

    tensors = all(equal(x, y) for x, y in zip(a[0], b[0], strict=True))
    grads = all(equal(x, y) for x, y in zip(a[1], b[1], strict=True))
    return tensors and grads and a[2] == b[2]


@settings(
    max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(model=odd_models(), seed=st.integers(0, 2**16))
def test_generated_models_get_verdicts_and_are_left_as_they_were(
    model: nn.Module, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(24, 6, generator=g), torch.randint(0, 3, (24,), generator=g)
    before = _state(model)
    rngs = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    report = nndiag.diagnose(nndiag.Subject(model, (X, y)), config=FAST)
    internal = [r.summary() for r in report if "internal nndiag error" in r.message]
    assert not internal, internal
    assert _same(before, _state(model))
    assert torch.equal(rngs[0], torch.get_rng_state())
    assert np.array_equal(rngs[1], np.random.get_state()[1]) and rngs[2] == random.getstate()
