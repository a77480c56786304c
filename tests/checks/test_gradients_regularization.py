"""gradient_check at regularization > 0: the assignments' notebook checks gradients at reg
= 0 and at reg = 3.14; a penalty whose gradient does not match its loss term passes at 0."""

from __future__ import annotations

import pytest

import nndiag
from tests.backends import numpy_models as M


def _check(**kwargs: object) -> nndiag.CheckResult:
    subject = nndiag.Subject(M.net(0, **kwargs), M.data(0))
    return nndiag.diagnose(subject, ["gradient_check"])["gradient_check"]


@pytest.mark.parametrize("bug", ["reg_grad_doubled", "reg_loss_skips_last"])
def test_penalty_gradient_bugs_fail_only_at_positive_strength(bug: str) -> None:
    result = _check(bugs=frozenset({bug}))
    assert result.status == "fail", result.summary()
    assert "wrong at strength" in result.message and result.metrics["failed_strength"] > 0
    assert "penalty's gradient does not match" in result.hint


@pytest.mark.parametrize("seed", range(4))
def test_a_gradient_that_ignores_the_penalty_fails_and_says_so(seed: int) -> None:
    # The loss adds 0.5 * reg * sum(W**2), the grads never add reg * W. The strength the
    # check uses is sized from the loss: sized from the gradient it was 0 and skipped.
    subject = nndiag.Subject(M.net(seed, bugs=frozenset({"reg_grad_missing"})), M.data(seed))
    result = nndiag.diagnose(subject, ["gradient_check"])["gradient_check"]
    assert result.status == "fail", result.summary()
    assert result.metrics["penalty_ignored"] is True
    assert "ignores the penalty term" in result.message and "reg * W" in (result.hint or "")


@pytest.mark.parametrize("seed", range(3))
def test_a_right_penalty_passes_at_both_strengths(seed: int) -> None:
    subject = nndiag.Subject(M.net(seed, reg=1e-3), M.data(seed))
    result = nndiag.diagnose(subject, ["gradient_check"])["gradient_check"]
    assert result.status == "pass", result.summary()
    assert result.metrics["checked_strength"] > 0
    assert "Checked again at regularization strength" in result.message


def test_the_models_own_strength_is_restored() -> None:
    model = M.net(0, reg=0.25)
    nndiag.diagnose(nndiag.Subject(model, M.data(0)), ["gradient_check"])
    assert model.reg == 0.25
