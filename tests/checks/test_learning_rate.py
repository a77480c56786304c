"""learning_rate: the range test's verdict on the configured rate, on torch, numpy and JAX.

Healthy models at their configured rate pass; a rate 100x too high diverges, 1e-7 barely
moves the loss while larger rates work, and a high Adam rate on a ReLU net kills units
while the loss still falls; each with the cause in the metrics."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import nndiag
from tests import models
from tests.backends import jax_models, numpy_models
from tests.models import _classification, _he, _mlp

CHECK = "learning_rate"


def _run(subject: nndiag.Subject, **options: Any) -> nndiag.CheckResult:
    config = nndiag.Config(**options)
    return nndiag.diagnose(subject, [CHECK], config)[CHECK]


def _same_start(result: nndiag.CheckResult) -> None:
    """Every rate of the range starts from the same initial weights: the same first loss."""
    starts = result.evidence["start"]
    assert len(starts) == 7 and max(starts) == pytest.approx(min(starts), rel=1e-6), starts


def _assert_diverges(result: nndiag.CheckResult) -> None:
    assert result.status == "fail", result.summary()
    assert result.metrics["cause"] == "diverged"
    assert "too high" in result.hint
    assert result.metrics["works_high"] is not None
    assert result.metrics["works_high"] < result.metrics["configured_lr"]
    assert result.metrics["remeasured_steps"] == 20  # re-measured before it is reported
    assert "diverges" in result.message


def _assert_too_low(result: nndiag.CheckResult) -> None:
    assert result.status == "warn", result.summary()
    assert result.metrics["cause"] == "too_low"
    assert abs(result.metrics["configured_fall"]) < 1e-3
    assert result.metrics["best_lr"] > result.metrics["configured_lr"]
    assert "too low" in result.hint and "raise it" in result.hint


def _assert_units_died(result: nndiag.CheckResult) -> None:
    assert result.status == "fail", result.summary()
    assert result.metrics["cause"] == "units_died"
    assert result.metrics["died_fraction"] >= 0.2
    assert result.metrics["configured_outcome"] != "diverged"  # the loss alone looks fine
    assert result.metrics["remeasured_died_fraction"] >= 0.2
    assert (
        sum(layer["died"] for layer in result.evidence["layers"]) == (result.metrics["died_units"])
    )
    assert "too high" in result.hint


# -- torch -----------------------------------------------------------------------------------
def _torch(optimizer: Any, seed: int = 0, depth: int = 3) -> nndiag.Subject:
    torch.manual_seed(seed)
    return nndiag.Subject(_mlp(depth, nn.ReLU, _he), _classification(seed), optimizer=optimizer)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", list(models.HEALTHY))
def test_torch_healthy_models_pass(name: str, seed: int) -> None:
    result = _run(models.HEALTHY[name](seed), seed=seed)
    assert result.status == "pass", result.summary()
    _same_start(result)
    low, high = result.metrics["works_low"], result.metrics["works_high"]
    assert low <= result.metrics["configured_lr"] <= high
    assert f"{low:.3g}" in result.message and f"{high:.3g}" in result.message
    assert result.cost.backward == 7 * 6  # 7 rates x (5 updates + the step that reads)


def test_torch_rate_100x_too_high_diverges() -> None:
    # SGD fits 20 samples at 0.1 (REFERENCE: 18-26 steps); 100x that explodes.
    result = _run(_torch(lambda p: torch.optim.SGD(p, lr=10.0)))
    _assert_diverges(result)
    assert result.metrics["configured_lr"] == 10.0


def test_torch_rate_1e7_is_too_low() -> None:
    result = _run(_torch(lambda p: torch.optim.SGD(p, lr=1e-7)))
    _assert_too_low(result)
    assert result.metrics["configured_lr"] == pytest.approx(1e-7)


def test_torch_high_adam_rate_kills_units_while_the_loss_falls() -> None:
    result = _run(_torch(lambda p: torch.optim.Adam(p, lr=0.1), depth=5))
    _assert_units_died(result)


def test_torch_rate_of_an_optimizer_instance_is_read_and_it_is_never_stepped() -> None:
    subject = _torch(None)
    optimizer = torch.optim.SGD(subject.model.parameters(), lr=0.05, momentum=0.9)
    subject = _torch(optimizer)
    result = _run(subject)
    assert result.metrics["configured_lr"] == 0.05 and "SGD" in result.metrics["optimizer"]
    assert result.status == "pass", result.summary()
    assert not optimizer.state and optimizer.param_groups[0]["lr"] == 0.05


def test_torch_a_loss_no_rate_moves_is_not_called_a_rate_problem() -> None:
    class Cut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).detach()  # nothing reaches the weights

    torch.manual_seed(0)
    result = _run(nndiag.Subject(Cut(), _classification(0)))
    assert result.status == "warn" and result.metrics["cause"] == "flat_everywhere"
    assert ".detach()" in result.hint


def test_torch_regularization_is_off_and_the_knob_restored() -> None:
    subject = models.l2_mlp(0)
    subject.model.l2 = 10.0  # a strength that would dominate the loss
    result = _run(subject)
    assert result.status == "pass", result.summary()
    assert result.metrics["configured_start"] < 3.0 and subject.model.l2 == 10.0


def test_a_custom_range_and_thresholds_are_used() -> None:
    result = _run(_torch(None), lr_factors=(0.1, 10.0), lr_steps=2)
    assert result.evidence["lrs"] == pytest.approx([1e-4, 1e-3, 1e-2])
    assert all(len(curve) == 3 for curve in result.evidence["curves"])


@pytest.mark.parametrize(
    ("option", "value"),
    [("lr_factors", ()), ("lr_factors", (0.0, 1.0)), ("lr_flat_fall", 2.0), ("lr_steps", 0)],
)
def test_bad_settings_are_typed_errors(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        nndiag.Config(**{option: value})


# -- numpy -----------------------------------------------------------------------------------
def _sgd(w: np.ndarray, dw: np.ndarray, config: dict[str, Any] | None = None) -> Any:
    """CS231n's ``optim.sgd``."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    return w - config["learning_rate"] * dw, config


def _adam(w: np.ndarray, dw: np.ndarray, config: dict[str, Any] | None = None) -> Any:
    """CS231n's ``optim.adam``."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-3)
    m = config.setdefault("m", np.zeros_like(w))
    v = config.setdefault("v", np.zeros_like(w))
    config["t"] = t = config.get("t", 0) + 1
    config["m"] = m = 0.9 * m + 0.1 * dw
    config["v"] = v = 0.999 * v + 0.001 * dw * dw
    step = m / (1 - 0.9**t) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return w - config["learning_rate"] * step, config


def _numpy(optimizer: Any, seed: int = 0, **kwargs: Any) -> nndiag.Subject:
    return nndiag.Subject(
        numpy_models.net(seed, **kwargs), numpy_models.data(seed), optimizer=optimizer
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", list(numpy_models.HEALTHY))
def test_numpy_healthy_models_pass(name: str, seed: int) -> None:
    model = numpy_models.HEALTHY[name](seed)
    result = _run(nndiag.Subject(model, numpy_models.data(seed)), seed=seed)
    assert result.status == "pass", result.summary()
    _same_start(result)


def test_numpy_rate_of_the_optim_config_is_the_configured_one() -> None:
    result = _run(_numpy((_sgd, {"learning_rate": 0.1, "momentum": 0.9})))
    assert result.metrics["configured_lr"] == 0.1 and "_sgd" in result.metrics["optimizer"]
    assert result.status == "pass", result.summary()


def test_numpy_rate_100x_too_high_diverges() -> None:
    _assert_diverges(_run(_numpy((_sgd, {"learning_rate": 10.0}))))


def test_numpy_rate_1e7_is_too_low() -> None:
    _assert_too_low(_run(_numpy((_sgd, {"learning_rate": 1e-7}))))


def test_numpy_high_adam_rate_kills_units_while_the_loss_falls() -> None:
    subject = _numpy((_adam, {"learning_rate": 0.1}), dims=[32, 64, 64, 64, 64, 10])
    _assert_units_died(_run(subject))


def test_numpy_a_bad_optim_config_names_the_argument() -> None:
    with pytest.raises(nndiag.errors.InvalidSubject, match="optimizer"):
        _numpy((_sgd, {"learning_rate": -1.0}))


# -- JAX -------------------------------------------------------------------------------------
class _Injected(NamedTuple):
    """The state of ``optax.inject_hyperparams``: its rate can be read and replaced."""

    hyperparams: dict[str, jax.Array]
    m: Any
    v: Any
    count: jax.Array


class _Optax(NamedTuple):
    init: Any
    update: Any


def _injected(kind: str, lr: float) -> _Optax:
    """An optax-shaped SGD or Adam built as ``optax.inject_hyperparams`` builds them."""

    def init(params: Any) -> _Injected:
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        rate = {"learning_rate": jnp.asarray(lr, dtype=jnp.float32)}
        return _Injected(rate, zeros, zeros, jnp.zeros((), jnp.int32))

    def update(grads: Any, state: _Injected, params: Any = None) -> Any:
        rate = state.hyperparams["learning_rate"]
        if kind == "sgd":
            return jax.tree_util.tree_map(lambda g: -rate * g, grads), state
        t = state.count + 1
        m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, state.m, grads)
        v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, state.v, grads)
        updates = jax.tree_util.tree_map(
            lambda m, v: -rate * (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8),
            m,
            v,
        )
        return updates, _Injected(state.hyperparams, m, v, t)

    return _Optax(init, update)


def _jax(optimizer: Any, depth: int = 3, seed: int = 0) -> nndiag.Subject:
    model = (jax_models.mlp(jax.nn.relu), jax_models.init_mlp(seed, depth, jax_models.he))
    return nndiag.Subject(model, jax_models.classification(seed), optimizer=optimizer)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(jax_models.HEALTHY))
def test_jax_healthy_models_pass(name: str, seed: int) -> None:
    result = _run(jax_models.HEALTHY[name](seed), seed=seed)
    assert result.status == "pass", result.summary()
    _same_start(result)


def test_jax_rate_of_an_injected_optimizer_is_read() -> None:
    result = _run(_jax(_injected("adam", 1e-3)))
    assert result.metrics["configured_lr"] == pytest.approx(1e-3)
    assert result.status == "pass", result.summary()


def test_jax_rate_100x_too_high_diverges() -> None:
    _assert_diverges(_run(_jax(_injected("sgd", 10.0))))


def test_jax_rate_1e7_is_too_low() -> None:
    _assert_too_low(_run(_jax(_injected("sgd", 1e-7))))


def test_jax_high_adam_rate_kills_units_while_the_loss_falls() -> None:
    _assert_units_died(_run(_jax(_injected("adam", 0.1), depth=5)))


def test_jax_an_optimizer_whose_rate_cannot_be_set_is_skipped_with_the_fix() -> None:
    def update(grads: Any, state: Any, params: Any = None) -> Any:
        return jax.tree_util.tree_map(lambda g: -0.1 * g, grads), state

    result = _run(_jax(_Optax(lambda params: (), update)))
    assert result.status == "skip" and "inject_hyperparams" in result.hint


# -- report ----------------------------------------------------------------------------------
def test_real_evidence_draws_both_plots_and_renders_in_the_page() -> None:
    from nndiag.report import plots, render_html

    died = _run(_torch(lambda p: torch.optim.Adam(p, lr=0.1), depth=5))
    diverged = _run(_torch(lambda p: torch.optim.SGD(p, lr=10.0)))
    for result in (died, diverged):
        drawn = plots.plots_for(result)
        assert len(drawn) == 2 and all(p.uri and not p.note for p in drawn), drawn
    html = render_html(nndiag.Report([died, diverged]))
    assert html.count("loss after a short run against the learning rate") >= 2
    assert "dead before" in html and "units_died" in html


def test_a_spike_that_recovers_in_the_re_measurement_is_not_divergence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nndiag.checks import learning_rate as module

    real = module._train

    def spiking(session: Any, batch: Any, lr: Any, steps: int, config: Any, rows: Any = None):
        run, rate = real(session, batch, lr, steps, config, rows)
        if lr is None:  # the configured rate: above 3x its start after 5 updates ...
            start = run.losses[0]
            curve = [start, 40 * start, 9 * start, 5 * start, 4 * start, 3.5 * start]
            if steps == config.lr_confirm_steps:  # ... and back under it 20 updates on
                curve += [start * 0.9**k for k in range(steps + 1 - len(curve))]
            run.losses = curve
            run.outcome = module._judge(run, config)
        return run, rate

    monkeypatch.setattr(module, "_train", spiking)
    result = _run(_torch(None))
    assert result.status == "pass", result.summary()
    assert result.metrics["configured_outcome"] == "diverged"
    assert result.metrics["remeasured_final"] < result.metrics["configured_start"]
    assert "transient, not divergence" in result.message
