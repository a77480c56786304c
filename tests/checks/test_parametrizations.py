"""Spectral and weight norm: silent on healthy models, and their buffers left as they were.

The hook-based ``torch.nn.utils.spectral_norm`` refines its singular vectors only in
training mode; from a fresh init its eval-mode estimate makes the weights many times too
large, so it must train during the checks (and its power-iteration buffers be restored)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import spectral_norm
from torch.nn.utils.parametrizations import spectral_norm as parametrized_spectral_norm
from torch.nn.utils.parametrizations import weight_norm

import nndiag

MAKERS = {
    "spectral_norm": lambda: nn.Sequential(
        spectral_norm(nn.Linear(12, 32)), nn.ReLU(), spectral_norm(nn.Linear(32, 4))
    ),
    "parametrized_spectral_norm": lambda: nn.Sequential(
        parametrized_spectral_norm(nn.Linear(12, 32)),
        nn.ReLU(),
        parametrized_spectral_norm(nn.Linear(32, 4)),
    ),
    "weight_norm": lambda: nn.Sequential(
        weight_norm(nn.Linear(12, 32)), nn.Tanh(), weight_norm(nn.Linear(32, 4))
    ),
}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_normalized_weights_pass_and_keep_their_buffers(kind: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = MAKERS[kind]()
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(64, 12, generator=g), torch.randint(0, 4, (64,), generator=g)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checks = ["initial_loss", "gradient_check", "batch_independence", "numerics"]
    report = nndiag.diagnose(nndiag.Subject(model, (X, y)), checks)
    assert all(r.status in ("pass", "skip") for r in report), [r.summary() for r in report]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
