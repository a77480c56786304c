"""nndiag.properties: the assert_* helpers and the plugin's Hypothesis property checks."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

import nndiag
from nndiag.config import Config
from nndiag.properties import (
    assert_batch_independent,
    assert_finite_outputs,
    assert_gradients_match,
    assert_initial_loss_near_expected,
)
from tests.models import (
    cnn_batchnorm,
    default_relu_mlp,
    huge_last_layer,
    tiny_transformer,
    wrong_backward,
)


class BatchMean(nn.Module):
    """Bug: subtracts the batch mean."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x - x.mean(0))


class LogInput(nn.Module):
    """Bug: log of the inputs, -inf at 0 and NaN below."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.log(x))


class TokenMixer(nn.Module):
    """Bug, on integer inputs: adds the batch's mean embedding to every row."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens).mean(1)
        return self.head(h + h.mean(0))


class RaisesOnOneRow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == 1:
            raise ValueError("needs 2 rows")
        return self.fc(x)


def _data(subject: nndiag.Subject) -> tuple[torch.Tensor, torch.Tensor]:
    return subject.batches[0].X, subject.batches[0].y


def _state(model: nn.Module) -> tuple:
    return (
        copy.deepcopy(model.state_dict()),
        [m.training for m in model.modules()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        torch.random.get_rng_state(),
    )


def _unchanged(model: nn.Module, before: tuple) -> bool:
    state, modes, grads, rng = _state(model)
    return (
        all(torch.equal(state[k], v) for k, v in before[0].items())
        and modes == before[1]
        and all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads, before[2]))
        and torch.equal(rng, before[3])
    )


def test_a_healthy_model_passes_every_assertion_and_is_left_as_it_was() -> None:
    subject = default_relu_mlp()
    model = subject.model
    X, y = _data(subject)
    model.train()
    before = _state(model)
    assert_batch_independent(model, X[:8])
    assert_finite_outputs(model, X)
    assert_gradients_match(model, X[:16], y[:16])
    assert_initial_loss_near_expected(model, X, y)
    assert _unchanged(model, before)


def test_batch_mixing_is_found_and_summarized() -> None:
    torch.manual_seed(0)
    with pytest.raises(AssertionError) as error:
        assert_batch_independent(BatchMean(), torch.randn(4, 32))
    message = str(error.value)
    assert message.startswith("Output row 0 depends on input row 1:")
    assert "Batch of 4 rows, checked in eval mode." in message and "x.mean(0)" in message
    assert "tensor(" not in message


def test_batchnorm_is_checked_in_eval_mode_and_its_statistics_kept() -> None:
    model = cnn_batchnorm().model.train()
    X = _data(cnn_batchnorm())[0][:6]
    before = _state(model)
    assert_batch_independent(model, X)  # training-mode BatchNorm would mix the rows
    assert _unchanged(model, before)

    torch.manual_seed(0)
    batch_stats = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(AssertionError, match="where BatchNorm uses its running statistics"):
        assert_batch_independent(batch_stats, torch.randn(3, 4))


def test_integer_inputs_are_checked_by_perturbation() -> None:
    subject = tiny_transformer()
    tokens = _data(subject)[0][:5]
    assert_batch_independent(subject.model, tokens)
    torch.manual_seed(0)
    with pytest.raises(
        AssertionError,
        match=r"Output row 0 changed by up to .* when only other "
        r"rows of the batch were changed",
    ):
        assert_batch_independent(TokenMixer(), tokens)


def test_non_finite_outputs_name_the_first_module() -> None:
    torch.manual_seed(0)
    X = torch.rand(4, 32)
    X[2, 0] = 0.0
    with pytest.raises(AssertionError) as error:
        assert_finite_outputs(LogInput(), X)
    assert str(error.value).startswith(
        "10 of 40 output values are not finite (0 NaN, 10 "
        "infinite), in row(s) 2; the first module whose output "
        "is not finite is 'fc'."
    )


def test_wrong_gradients_and_overconfident_init_fail() -> None:
    subject = wrong_backward()
    X, y = _data(subject)
    with pytest.raises(AssertionError, match=r"WrongBackward::gradient_check fail: .*disagree"):
        assert_gradients_match(subject.model, X[:16], y[:16])
    subject = huge_last_layer()
    X, y = _data(subject)
    with pytest.raises(AssertionError, match=r"initial_loss fail: Loss at init .* too high"):
        assert_initial_loss_near_expected(subject.model, X, y)


def test_initial_loss_tolerance_is_adjustable() -> None:
    subject = huge_last_layer()
    X, y = _data(subject)
    with pytest.raises(AssertionError, match="too high"):
        assert_initial_loss_near_expected(subject.model, X, y, tolerance=1.0)
    assert_initial_loss_near_expected(subject.model, X, y, tolerance=1e6)


def test_misuse_raises_misuse_errors() -> None:
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        assert_finite_outputs(lambda x: x, torch.zeros(2, 3))
    with pytest.raises(nndiag.errors.InvalidSubject, match="labels span"):
        assert_gradients_match(default_relu_mlp().model, torch.zeros(2, 32), torch.tensor([0, 50]))


def _comparable(result: nndiag.CheckResult) -> dict:
    return {k: v for k, v in result.to_dict().items() if k != "cost"}


def _run(subject: nndiag.Subject, check: str, config: Config | None = None):
    return nndiag.diagnose(subject, [check], config)[check]


def test_a_batch_leak_shrinks_to_a_minimal_counterexample_reproducibly() -> None:
    torch.manual_seed(0)
    subject = nndiag.Subject(BatchMean(), _data(default_relu_mlp()))
    first = _run(subject, "batch_independence", Config(seed=3))
    assert first.status == "fail"
    assert first.metrics["minimal_batch"] == 2
    assert first.evidence["counterexample"].endswith("as a batch of 2")
    assert "Minimal counterexample: rows [" in first.message and first.hint
    again = _run(subject, "batch_independence", Config(seed=3))
    assert _comparable(again) == _comparable(first)


def test_a_nan_is_named_at_its_producer() -> None:
    logs = nndiag.Subject(LogInput(), (torch.rand(32, 32) + 0.1, torch.zeros(32).long()))
    assert _run(logs, "numerics").status == "pass"  # log is finite on (0.1, 1.1)
    wide = nndiag.Subject(LogInput(), (torch.rand(32, 32) - 0.5, torch.zeros(32).long()))
    result = _run(wide, "numerics")
    assert result.status == "fail", result.message
    assert (result.metrics["op"], result.metrics["stage"]) == ("log", "forward")


def test_a_model_raising_in_a_check_is_an_error_naming_the_call() -> None:
    subject = nndiag.Subject(RaisesOnOneRow(), _data(default_relu_mlp()))
    result = _run(subject, "batch_independence", Config(independence_rows=1))
    assert result.status == "skip"  # one row: nothing to leak, and the model is not called
    assert _run(subject, "numerics", Config(numerics_rows=1)).status == "error"


@pytest.mark.parametrize("seed", range(5))
def test_healthy_models_pass_the_property_checks_for_any_seed(seed: int) -> None:
    for make in (default_relu_mlp, cnn_batchnorm, tiny_transformer):
        subject = make(seed)
        model = subject.model
        before = _state(model)
        for check in ("batch_independence", "numerics"):
            result = _run(subject, check, Config(seed=seed))
            assert result.status == "pass", result.summary()
            assert dataclasses.asdict(result.cost)["forward"] >= 1
        assert _unchanged(model, before)
