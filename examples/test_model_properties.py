"""Your own property tests with nndiag's strategies and assertions.

Plain pytest + Hypothesis: these run with or without --nndiag. A failure shrinks to a
small batch, and the assertion's message says what is wrong and what to look at.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from zoo import CLASSES, FEATURES, MLP, blobs, seeded

import nndiag
from nndiag import strategies as nst
from nndiag.properties import (
    assert_batch_independent,
    assert_finite_outputs,
    assert_gradients_match,
    assert_initial_loss_near_expected,
)

MODEL = seeded(MLP)
SUBJECT = nndiag.Subject(MODEL, blobs(), loss=MODEL.loss)


@settings(max_examples=25, deadline=None)
@given(X=nst.batches(SUBJECT, max_size=16))
def test_each_prediction_depends_on_its_own_sample_only(X: torch.Tensor) -> None:
    assert_finite_outputs(MODEL, X)
    assert_batch_independent(MODEL, X)


@settings(max_examples=10, deadline=None)
@given(example=nst.examples(SUBJECT, min_size=1, max_size=16, synthetic_rows=False))
def test_gradients_match_on_real_batches(example: tuple) -> None:
    X, y = example
    assert_gradients_match(MODEL, X, y, loss=MODEL.loss)


def test_loss_at_init_is_near_ln_classes() -> None:
    # A statement about the whole data set: small batches are too noisy for it.
    X, y = blobs()
    assert_initial_loss_near_expected(MODEL, X, y, loss=MODEL.loss)


@settings(max_examples=10, deadline=None)
@given(
    model=nst.architectures(in_features=FEATURES, out_features=CLASSES, max_width=16),
    seed=nst.seeds(),
)
def test_small_mlps_have_exact_gradients(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(8, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (8,), generator=g)
    assert_gradients_match(model, X, y)
