"""Misuse gets a typed nndiag error naming the argument and the fix, never a deep traceback."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import nndiag
from nndiag.errors import InvalidSetting, InvalidSubject, ModelError, NndiagError


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


X, Y = torch.randn(16, 4), torch.arange(16) % 3


class Raises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("shapes do not match")


class NoParameters(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _frozen() -> nn.Module:
    model = _mlp()
    model.requires_grad_(False)
    return model


def _nan_data() -> tuple[torch.Tensor, torch.Tensor]:
    x = X.clone()
    x[3, 1] = float("nan")
    return x, Y


class _Unreadable(torch.utils.data.Dataset[Any]):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> Any:
        raise OSError("disk gone")


class _CachedWeights(nn.Module):
    """Reads its first layer through a list built at construction."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)
        self.cached = [self.fc1.weight, self.fc1.bias]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(x @ self.cached[0].t() + self.cached[1]))


def _meta() -> nn.Module:
    with torch.device("meta"):
        return _mlp()


def _frozen_after_subject() -> Any:
    model = _mlp()
    subject = nndiag.Subject(model, (X, Y))
    model.requires_grad_(False)
    return nndiag.diagnose(subject)


# (case, make the subject and run it, argument named, words the message must contain)
CASES: list[tuple[str, Callable[[], Any], str, str]] = [
    ("no data", lambda: nndiag.Subject(_mlp(), None), "data", "got None"),
    ("empty iterable", lambda: nndiag.Subject(_mlp(), []), "data", "no batch"),
    ("empty batch", lambda: nndiag.Subject(_mlp(), (X[:0], Y[:0])), "data", "empty"),
    ("not a pair", lambda: nndiag.Subject(_mlp(), [X]), "data", "pair (X, y)"),
    (
        "length mismatch",
        lambda: nndiag.Subject(_mlp(), (X, Y[:10])),
        "data",
        "16 samples but y has 10",
    ),
    ("NaN in the data", lambda: nndiag.Subject(_mlp(), _nan_data()), "data", "NaN"),
    ("not a model", lambda: nndiag.Subject("resnet", (X, Y)), "model", "no nndiag backend"),
    ("no parameters", lambda: nndiag.Subject(NoParameters(), (X, Y)), "model", "no parameters"),
    ("all frozen", lambda: nndiag.Subject(_frozen(), (X, Y)), "model", "requires_grad"),
    ("loss not callable", lambda: nndiag.Subject(_mlp(), (X, Y), loss="ce"), "loss", "callable"),
    (
        "knob not an attribute",
        lambda: nndiag.Subject(_mlp(), (X, Y), regularization="l2"),
        "regularization",
        "'l2'",
    ),
    (
        "knob misspelt",
        lambda: nndiag.Subject(_with_l2(), (X, Y), regularization="L2"),
        "regularization",
        "has no attribute 'L2' (did you mean 'l2'?)",
    ),
    (
        "knob not a number",
        lambda: nndiag.Subject(_with_l2(), (X, Y), regularization="net"),
        "regularization",
        "model attribute 'net' is",
    ),
    (
        "bad optimizer",
        lambda: nndiag.Subject(_mlp(), (X, Y), optimizer=0.1),
        "optimizer",
        "callable",
    ),
    ("empty name", lambda: nndiag.Subject(_mlp(), (X, Y), name=""), "name", "non-empty"),
    (
        "labels out of range",
        lambda: nndiag.diagnose(nndiag.Subject(_mlp(), (X, Y + 5))),
        "data",
        "labels span 5..7 but the model outputs 3",
    ),
    (
        "negative labels",
        lambda: nndiag.diagnose(nndiag.Subject(_mlp(), (X, Y - 1))),
        "data",
        "labels span -1..1",
    ),
    (
        "forward raises",
        lambda: nndiag.diagnose(nndiag.Subject(Raises(), (X, Y))),
        "model",
        "model(X) raised RuntimeError: shapes do not match",
    ),
    (
        "non-scalar loss",
        lambda: nndiag.diagnose(
            nndiag.Subject(_mlp(), (X, Y), loss=nn.CrossEntropyLoss(reduction="none"))
        ),
        "loss",
        "not a scalar",
    ),
    (
        "loss raises",
        lambda: nndiag.diagnose(nndiag.Subject(_mlp(), (X, Y), loss=nn.MSELoss())),
        "loss",
        "loss(output, y) raised",
    ),
    ("not a subject", lambda: nndiag.diagnose(_mlp()), "subject", "nndiag.Subject"),
    (
        "lazy module",
        lambda: nndiag.Subject(nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 3)), (X, Y)),
        "model",
        "uninitialized lazy parameters",
    ),
    ("meta device", lambda: nndiag.Subject(_meta(), (X, Y)), "model", "meta device"),
    (
        "TorchScript",
        lambda: nndiag.Subject(torch.jit.script(_mlp()), (X, Y)),
        "model",
        "TorchScript module",
    ),
    ("frozen after the Subject", _frozen_after_subject, "model", "frozen after"),
    (
        "weights read through a cached list",
        lambda: nndiag.diagnose(nndiag.Subject(_CachedWeights(), (X, Y))),
        "model",
        "forward reads fc1.bias, fc1.weight through a reference",
    ),
    (
        "batches of different widths",
        lambda: nndiag.Subject(_mlp(), [(X, Y), (torch.randn(16, 5), Y)]),
        "data (batch 1)",
        "X of shape (5,), batch 0's have (4,)",
    ),
    (
        "float labels in one batch",
        lambda: nndiag.Subject(_mlp(), [(X, Y), (X, Y.float())]),
        "data (batch 1)",
        "y holds float values",
    ),
    (
        "a Dataset for a DataLoader",
        lambda: nndiag.Subject(_mlp(), torch.utils.data.TensorDataset(X, Y)),
        "data",
        "a Dataset where a DataLoader was meant",
    ),
    (
        "a loader that raises",
        lambda: nndiag.Subject(_mlp(), torch.utils.data.DataLoader(_Unreadable(), batch_size=4)),
        "data (batch 0)",
        "reading it raised OSError: disk gone",
    ),
    (
        "float class ids",
        lambda: nndiag.diagnose(nndiag.Subject(_mlp(), (X, Y.float()))),
        "data",
        "class ids 0..2), but the model outputs 3 scores",
    ),
    (
        "float class ids, N == C",
        lambda: nndiag.diagnose(nndiag.Subject(_mlp(), (X[:3], Y[:3].float()))),
        "data",
        "look like class ids",
    ),
    (
        "one-hot targets",
        lambda: nndiag.diagnose(nndiag.Subject(_mlp(), (X, nn.functional.one_hot(Y, 3).float()))),
        "data",
        "one-hot rows",
    ),
    (
        "one-hot targets, more rows than the probe's",
        lambda: nndiag.diagnose(
            nndiag.Subject(
                _mlp(), (torch.randn(128, 4), nn.functional.one_hot(torch.arange(128) % 3).float())
            )
        ),
        "data",
        "one-hot rows",
    ),
]


def _with_l2() -> torch.nn.Module:
    model = torch.nn.Module()
    model.net = _mlp()
    model.l2 = 1e-3  # the strength a loss would read
    return model


@pytest.mark.parametrize("case, run, argument, words", CASES, ids=[c[0] for c in CASES])
def test_misuse_names_argument_and_fix(
    case: str, run: Callable[[], Any], argument: str, words: str
) -> None:
    with pytest.raises(InvalidSubject) as info:
        run()
    error = info.value
    assert isinstance(error, NndiagError) and isinstance(error, ValueError)
    assert error.argument == argument
    assert words in str(error)
    assert error.fix and "Fix:" in str(error)


def test_model_errors_say_which_call() -> None:
    with pytest.raises(ModelError) as info:
        nndiag.diagnose(nndiag.Subject(Raises(), (X, Y)))
    assert info.value.call == "model(X)" and info.value.check == "validation"


def test_numpy_arrays_are_accepted_for_a_torch_model() -> None:
    subject = nndiag.Subject(_mlp(), (X.numpy(), Y.numpy()))
    assert isinstance(subject.batches[0].X, torch.Tensor)


def test_unknown_check_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known checks: initial_loss"):
        nndiag.diagnose(nndiag.Subject(_mlp(), (X, Y)), checks=["overfit"])


def test_config_rejects_unknown_and_mistyped_options() -> None:
    with pytest.raises(ValueError, match="unknown nndiag option 'dead_warning'"):
        nndiag.Config.from_mapping({"dead_warning": 0.1})
    with pytest.raises(TypeError, match="expects int, got '10' \\(type=str\\)"):
        nndiag.Config.from_mapping({"overfit_steps": "10"})
    assert nndiag.Config.from_mapping({"dead-warn": 1, "dead-fail": 1}).dead_warn == 1.0
    with pytest.raises(InvalidSetting, match="did you mean 'dead_warn'"):
        nndiag.Config.from_mapping({"dead_warm": 0.1})
    assert nndiag.Config.from_mapping({"checks": "a, b"}).checks == ("a", "b")


def test_a_bug_inside_a_check_is_an_error_result_not_a_crash(monkeypatch: Any) -> None:
    from nndiag.checks import initial_loss as module

    def broken(*args: Any) -> Any:
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(module, "initial_loss", broken)
    report = nndiag.diagnose(nndiag.Subject(_mlp(), (X, Y)), ["initial_loss", "dead_neurons"])
    assert report["initial_loss"].status == "error"
    assert "internal nndiag error" in report["initial_loss"].message
    assert report["dead_neurons"].status != "error"


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_labels_of_any_integer_dtype_are_class_ids(dtype: torch.dtype) -> None:
    report = nndiag.diagnose(nndiag.Subject(_mlp(), (X, Y.to(dtype))), ["initial_loss"])
    assert report["initial_loss"].status == "pass", report["initial_loss"].summary()
    assert report["initial_loss"].metrics["num_classes"] == 3


def test_a_loss_for_one_hot_targets_is_the_users_call() -> None:
    onehot = nn.functional.one_hot(Y, 3).float()
    subject = nndiag.Subject(_mlp(), (X, onehot), loss=nn.functional.mse_loss)
    assert nndiag.diagnose(subject, ["initial_loss"])["initial_loss"].status != "error"


class _TunedSGD(torch.optim.SGD):
    def __init__(self, params: Any, lr: float, schedule: str) -> None:
        super().__init__(params, lr=lr)
        self.schedule = schedule


def test_an_optimizer_that_cannot_be_rebuilt_asks_for_a_factory() -> None:
    model = _mlp()
    subject = nndiag.Subject(model, (X, Y), optimizer=_TunedSGD(model.parameters(), 0.1, "cos"))
    result = nndiag.diagnose(subject, ["overfit_small"])["overfit_small"]
    assert result.status == "error"
    assert "_TunedSGD cannot be rebuilt" in result.message and "factory" in result.hint


def test_a_huge_array_is_kept_as_a_bounded_view() -> None:
    from nndiag.subject import MAX_ROWS

    big = torch.randn(MAX_ROWS * 3, 4)
    labels = torch.arange(MAX_ROWS * 3) % 3
    subject = nndiag.Subject(_mlp(), (big, labels))
    assert subject.num_samples == MAX_ROWS
    assert subject.batches[0].X.data_ptr() == big.data_ptr()  # a view, not a copy
    assert nndiag.diagnose(subject, ["initial_loss"])["initial_loss"].status == "pass"


def test_float_targets_and_integer_arrays_from_numpy() -> None:
    y = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    report = nndiag.diagnose(nndiag.Subject(_mlp(), (X, y)), ["initial_loss"])
    assert report["initial_loss"].status in ("pass", "warn")


@pytest.mark.parametrize(
    "options, words",
    [
        ({"seed": 1.5}, "Config.seed: expects int"),
        ({"seed": 2**64}, "Config.seed: must be below 2**32"),
        ({"overfit_steps": 0}, "Config.overfit_steps: must be >= 1"),
        ({"max_samples": 0}, "Config.max_samples: must be >= 1"),
        ({"gradient_steps": ()}, "non-empty tuple"),
        ({"gradient_steps": (float("inf"),)}, "positive finite numbers"),
        ({"regularization_strengths": ("a",)}, "non-negative finite numbers"),
        ({"checks": (1,)}, "check ids"),
        ({"dead_warn": float("nan")}, "Config.dead_warn: must be a finite number"),
        ({"overfit_flat_ratio": float("inf")}, "must be a finite number"),
        ({"dead_fail": 1.5}, "Config.dead_fail: is a fraction, at most 1"),
        ({"dead_warn": 0.8}, "Config.dead_warn: 0.8 is past dead_fail = 0.7"),
        ({"gradient_warn": 1e-3}, "Config.gradient_warn: 0.001 is past gradient_fail"),
        ({"collapse_fail": 0.2}, "Config.collapse_fail: 0.2 is past collapse_warn"),
        ({"init_scale_warn": 0.5}, "Config.init_scale_warn: is a factor either way, above 1"),
        ({"batchnorm_gap_warn": 2.0}, "Config.batchnorm_gap_warn: is a fraction, at most 1"),
        ({"batchnorm_eval_rtol": -1.0}, "Config.batchnorm_eval_rtol: must be a finite number"),
    ],
)
def test_config_values_are_validated(options: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidSetting, match=re.escape(words)) as info:
        nndiag.Config(**options)
    assert isinstance(info.value, (TypeError, ValueError))


@pytest.mark.parametrize(
    "checks, error, words",
    [
        (5, TypeError, "checks: expected check ids, got 5 (type=int)"),
        (["initial_los"], ValueError, "did you mean 'initial_loss'?"),
    ],
)
def test_diagnose_checks_argument_is_validated(checks: Any, error: type, words: str) -> None:
    subject = nndiag.Subject(_mlp(), (X, Y))
    with pytest.raises(InvalidSetting, match=re.escape(words)) as info:
        nndiag.diagnose(subject, checks)
    assert isinstance(info.value, error)


def test_a_mapping_is_not_a_config() -> None:
    with pytest.raises(InvalidSubject, match="expected an nndiag.Config"):
        nndiag.diagnose(nndiag.Subject(_mlp(), (X, Y)), config={"seed": 1})  # type: ignore


def test_a_batch_with_a_list_target_says_which_part_to_convert() -> None:
    with pytest.raises(InvalidSubject, match="y is .* not a tensor. Fix: convert y with torch"):
        nndiag.Subject(_mlp(), (X, Y.tolist()))
    subject = nndiag.Subject(_mlp(), (X, Y, torch.ones(16)))  # a weights column is ignored
    assert subject.num_samples == 16


@pytest.mark.parametrize("labels", ["tensor", "list"])
@pytest.mark.parametrize("stack", [list, tuple])
def test_per_sample_inputs_are_asked_to_be_stacked(stack: Any, labels: str) -> None:
    samples = stack(torch.randn(4) for _ in range(8))
    y = torch.randint(0, 2, (8,))
    with pytest.raises(InvalidSubject) as raised:
        nndiag.Subject(nn.Linear(4, 2), (samples, y if labels == "tensor" else y.tolist()))
    assert raised.value.argument == "data"
    assert "one per sample" in raised.value.problem and "torch.stack(X)" in raised.value.fix
