"""The numpy backend (CS231n assignment protocol): same checks, same verdicts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import nndiag
from nndiag.errors import InvalidSubject
from tests.backends import numpy_models as M


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(M.HEALTHY))
def test_healthy_numpy_models_pass(name: str, seed: int) -> None:
    report = nndiag.diagnose(nndiag.Subject(M.HEALTHY[name](seed), M.data(seed)))
    bad = [r.summary() for r in report if r.status not in ("pass", "skip")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(M.BROKEN))
def test_broken_numpy_models_fail_their_check(name: str, seed: int) -> None:
    build, check = M.BROKEN[name]
    result = nndiag.diagnose(nndiag.Subject(build(seed), M.data(seed)), [check])[check]
    assert result.status == "fail", result.summary()


def _snapshot(model: M.FullyConnectedNet) -> dict[str, Any]:
    return {
        "ids": {k: id(v) for k, v in model.params.items()},
        "values": {k: v.copy() for k, v in model.params.items()},
        "dtypes": {k: v.dtype for k, v in model.params.items()},
        "reg": model.reg,
        "dropout": dict(model.dropout_param or {}),
        "rng": np.random.get_state()[1].copy(),
    }


def test_model_params_state_and_rng_are_untouched() -> None:
    model = M.net(0, dtype=np.float32, dropout=0.8, reg=1e-3)
    np.random.seed(42)
    before = _snapshot(model)
    nndiag.diagnose(nndiag.Subject(model, M.data(0)))
    after = _snapshot(model)
    assert before["ids"] == after["ids"] and before["dtypes"] == after["dtypes"]
    for k in before["values"]:
        assert np.array_equal(before["values"][k], after["values"][k]), k
    assert (before["reg"], before["dropout"]) == (after["reg"], after["dropout"])
    assert np.array_equal(before["rng"], after["rng"])


def test_float32_params_are_checked_on_a_float64_copy_and_said_so() -> None:
    model = M.net(0, dtype=np.float32)
    result = nndiag.diagnose(nndiag.Subject(model, M.data(0)), ["gradient_check"])
    assert result["gradient_check"].status == "pass"
    assert "float32: checked on a float64 copy" in result["gradient_check"].message


def test_missing_gradient_is_named_not_crashed() -> None:
    model = M.net(0, bugs=frozenset({"missing_grad"}))
    report = nndiag.diagnose(nndiag.Subject(model, M.data(0)), ["gradient_check", "overfit_small"])
    assert report["gradient_check"].metrics["worst_tensor"] == "b1"
    assert "b1" in report["gradient_check"].hint
    assert "b1" in report["overfit_small"].message


def test_unfinished_model_gets_error_results_naming_the_call() -> None:
    model = M.net(0, bugs=frozenset({"unfinished"}))
    report = nndiag.diagnose(nndiag.Subject(model, M.data(0)))
    errors = {r.check: r for r in report if r.status == "error"}
    assert {"initial_loss", "overfit_small", "gradient_check"} <= set(errors)
    assert "model.loss(X, y) raised NotImplementedError" in errors["initial_loss"].message
    assert report["dead_neurons"].status == "pass"  # activations() still works


def test_loss_returning_none_is_an_error_result() -> None:
    class NoneLoss(M.FullyConnectedNet):
        def loss(self, X: np.ndarray, y: np.ndarray | None = None) -> Any:
            return super().loss(X) if y is None else None

    report = nndiag.diagnose(nndiag.Subject(NoneLoss([32, 16, 10]), M.data(0)), ["initial_loss"])
    assert report["initial_loss"].status == "error"
    assert "not (loss, grads)" in report["initial_loss"].message


def test_without_activations_method_the_activation_checks_skip() -> None:
    class Plain(M.FullyConnectedNet):
        activations = None  # type: ignore[assignment]

    report = nndiag.diagnose(
        nndiag.Subject(Plain([32, 16, 10]), M.data(0)), ["activation_stats", "dead_neurons"]
    )
    assert {r.status for r in report} == {"skip"}


def test_bad_numpy_data_is_refused() -> None:
    X, y = M.data(0)
    with pytest.raises(InvalidSubject, match="16 samples|but y has"):
        nndiag.Subject(M.net(0), (X, y[:16]))
    with pytest.raises(InvalidSubject, match="labels span"):
        nndiag.diagnose(nndiag.Subject(M.net(0), (X, y + 10)))


def test_parity_with_torch_on_the_same_weights() -> None:
    torch = pytest.importorskip("torch")
    model = M.net(0, reg=0.0)
    X, y = M.data(0)
    layers: list[Any] = []
    for i in range(1, model.layers + 1):
        W, b = model.params[f"W{i}"], model.params[f"b{i}"]
        linear = torch.nn.Linear(*W.shape).double()
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W.T.copy()))
            linear.bias.copy_(torch.from_numpy(b))
        layers += [linear, torch.nn.ReLU()]
    twin = torch.nn.Sequential(*layers[:-1])
    checks = ["initial_loss", "gradient_check", "activation_stats", "dead_neurons"]
    ours = nndiag.diagnose(nndiag.Subject(model, (X, y)), checks)
    theirs = nndiag.diagnose(
        nndiag.Subject(twin, (torch.from_numpy(X), torch.from_numpy(y))), checks
    )
    assert [r.status for r in ours] == [r.status for r in theirs]
    assert ours["initial_loss"].metrics["measured"] == pytest.approx(
        theirs["initial_loss"].metrics["measured"], abs=1e-9
    )
    assert ours["initial_loss"].metrics["expected"] == pytest.approx(
        theirs["initial_loss"].metrics["expected"], abs=1e-9
    )
    for a, b in zip(
        ours["activation_stats"].evidence["layers"], theirs["activation_stats"].evidence["layers"]
    ):
        assert a["std"] == pytest.approx(b["std"], rel=1e-5)
        assert a["weight_std"] == pytest.approx(b["weight_std"], rel=1e-5)
    assert [r["dead"] for r in ours["dead_neurons"].evidence["layers"]] == [
        r["dead"] for r in theirs["dead_neurons"].evidence["layers"]
    ]


def test_batchnorm_state_on_the_model_is_restored_in_place() -> None:
    class WithBatchnorm(M.FullyConnectedNet):
        """Keeps assignment-style running statistics in ``bn_params`` dicts."""

        def __init__(self) -> None:
            super().__init__([32, 64, 64, 10])
            self.bn_params = [{"mode": "train", "running_mean": np.zeros(32)}]

        def loss(self, X: np.ndarray, y: np.ndarray | None = None) -> Any:
            bn = self.bn_params[0]
            bn["mode"] = "test" if y is None else "train"
            if y is not None:
                bn["running_mean"] = 0.9 * bn["running_mean"] + 0.1 * X.mean(axis=0)
            return super().loss(X, y)

    model = WithBatchnorm()
    bn_list, bn = model.bn_params, model.bn_params[0]
    report = nndiag.diagnose(nndiag.Subject(model, M.data(0)))
    assert report.passed, [r.summary() for r in report if not r.ok]
    assert model.bn_params is bn_list and model.bn_params[0] is bn
    assert bn["mode"] == "train" and not bn["running_mean"].any()


def test_a_callable_knob_on_a_numpy_model_is_undone() -> None:
    model = M.net(0, reg=1e-3)
    model.lam = 0.5

    def knob(m: Any, strength: float) -> None:
        m.lam = strength
        m.reg = strength

    nndiag.diagnose(nndiag.Subject(model, M.data(0), regularization=knob), ["regularization_loss"])
    assert (model.lam, model.reg) == (0.5, 1e-3)


def test_batch_independence_and_numerics_on_numpy_models() -> None:
    report = nndiag.diagnose(
        nndiag.Subject(M.net(0), M.data(0)), ["batch_independence", "numerics"]
    )
    assert [r.status for r in report] == ["pass", "pass"], [r.message for r in report]

    class Mixer:  # scores of row i read the batch mean: a batch-mixing bug
        def __init__(self) -> None:
            self.params = {"W": np.random.default_rng(0).normal(size=(M.data(0)[0].shape[1], 3))}

        def loss(self, X, y=None):
            scores = (X - X.mean(axis=0)) @ self.params["W"]
            if y is None:
                return scores
            return float(np.mean(scores**2)), {"W": np.zeros_like(self.params["W"])}

    X, _ = M.data(0)
    y = np.arange(len(X)) % 3
    result = nndiag.diagnose(nndiag.Subject(Mixer(), (X, y)), ["batch_independence"])[
        "batch_independence"
    ]
    assert result.status == "fail" and result.metrics["method"] == "perturbation"


def test_arrays_are_the_data_as_is() -> None:
    X, y = M.data(0)
    subject = nndiag.Subject(M.net(0), (X, y))
    session = subject.backend.session(subject, nndiag.Config())
    got_X, got_y = session.arrays(session.rows(len(y)))
    assert isinstance(got_X, np.ndarray) and isinstance(got_y, np.ndarray)
    assert got_X.dtype == X.dtype and got_y.dtype == y.dtype
    assert np.array_equal(got_X, X) and np.array_equal(got_y, y)


def test_integer_params_are_refused_with_the_fix() -> None:
    model = M.net(0)
    model.params["W2"] = np.round(model.params["W2"] * 100).astype(np.int64)
    with pytest.raises(InvalidSubject, match=r"params\['W2'\] has dtype int64") as info:
        nndiag.Subject(model, M.data(0))
    assert "astype(np.float64)" in str(info.value)


def test_a_gradient_of_the_wrong_shape_is_named() -> None:
    model = M.net(0)
    loss = model.loss

    def transposed(X: np.ndarray, y: np.ndarray | None = None) -> Any:
        if y is None:
            return loss(X)
        value, grads = loss(X, y)
        return value, {**grads, "W1": grads["W1"].T}

    model.loss = transposed  # type: ignore[method-assign]
    report = nndiag.diagnose(nndiag.Subject(model, M.data(0)), ["gradient_check"])
    result = report["gradient_check"]
    assert result.status == "error"
    assert "grads['W1'] of shape (64, 32) for params['W1'] of shape (32, 64)" in result.message
