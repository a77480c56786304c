"""The monitor's door for a plain loop: its arguments, on_fatal, its report, and that it
changes nothing of the user's (the same training, bit for bit, with and without it)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import nndiag
from nndiag.errors import InvalidSetting, InvalidSubject, TrainingUnhealthy
from nndiag.monitoring import MonitorSettings, TrainingWarning


def _setup(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))
    x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2), x, y


def _loop(model, opt, x, y, steps: int, mon=None, blow_up_at: int | None = None) -> None:
    for step in range(steps):
        i = torch.randint(0, len(x), (32,))
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        if step == blow_up_at:
            loss = loss * float("nan")
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(loss)


def test_training_under_the_monitor_is_bit_identical_and_leaves_no_hook() -> None:
    model, opt, x, y = _setup()
    _loop(model, opt, x, y, 60)
    bare = [p.detach().clone() for p in model.parameters()], torch.get_rng_state()
    model, opt, x, y = _setup()
    with nndiag.monitor(model, opt, every=7) as mon:
        _loop(model, opt, x, y, 60, mon)
    watched = [p.detach().clone() for p in model.parameters()], torch.get_rng_state()
    assert all(torch.equal(a, b) for a, b in zip(bare[0], watched[0]))
    assert torch.equal(bare[1], watched[1])  # no random number drawn
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert len(mon.history.samples) == 9 and mon.report.passed
    # The report says what it watched: every rule judged (a pass) or said why not.
    assert {r.status for r in mon.report.results} <= {"pass", "skip"}


def test_gradients_are_read_whatever_the_loop_order() -> None:
    # zero_grad(set_to_none=True) right after the step: mon.step sees no gradient, the
    # optimizer's step hook did.
    model, opt, x, y = _setup()
    with nndiag.monitor(model, opt, every=5) as mon:
        for _ in range(20):
            loss = nn.functional.cross_entropy(model(x[:32]), y[:32])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            mon.step(loss)
    assert all(s.grad_norm and s.grad_norm > 0 for s in mon.history.samples)
    assert all(len(s.ratios) == 2 for s in mon.history.samples)


@pytest.mark.parametrize("on_fatal", ["warn", "raise", "stop"])
def test_a_fatal_rule_warns_raises_or_asks_to_stop(on_fatal: str) -> None:
    model, opt, x, y = _setup()
    mon = nndiag.monitor(model, opt, name="mlp", on_fatal=on_fatal)  # type: ignore[arg-type]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mon:
            if on_fatal == "raise":
                with pytest.raises(TrainingUnhealthy) as raised:
                    _loop(model, opt, x, y, 30, mon, blow_up_at=12)
                assert raised.value.result.check == "nonfinite"
                assert raised.value.report["nonfinite"].metrics["step"] == 12
            else:
                _loop(model, opt, x, y, 30, mon, blow_up_at=12)
    assert mon.should_stop
    shown = [w for w in caught if issubclass(w.category, TrainingWarning)]
    assert len(shown) == (1 if on_fatal == "warn" else 0)
    if shown:
        assert shown[0].filename == __file__  # points at the loop's mon.step call
        assert "mlp::nonfinite fail: The loss is nan at step 12" in str(shown[0].message)
    assert not model._forward_pre_hooks and not opt._optimizer_step_pre_hooks


def test_the_report_has_one_result_per_rule() -> None:
    model, opt, x, y = _setup()
    with nndiag.monitor(model, opt, name="mlp", every=10) as mon:
        _loop(model, opt, x, y, 30, mon)
    report = mon.report
    assert report.checks == [rule.id for rule in nndiag.monitoring.RULES]
    assert report["generalization_gap"].status == "skip"  # no validation given
    assert report["nonfinite"].status == "pass" and report["nonfinite"].metrics["step"] is None
    assert report.meta["monitor"] == {"steps": 30, "every": 10}
    from nndiag.report import render_html

    html = render_html(report)
    assert "loss_spike" in html and "mlp" in html


def test_bad_arguments_get_typed_errors_naming_them() -> None:
    model, opt, *_ = _setup()
    with pytest.raises(InvalidSetting, match="every"):
        nndiag.monitor(model, opt, every=0)
    with pytest.raises(InvalidSetting, match="on_fatal"):
        nndiag.monitor(model, opt, on_fatal="stpo")  # type: ignore[arg-type]
    with pytest.raises(InvalidSubject, match="model"):
        nndiag.monitor(lambda x: x)
    with pytest.raises(InvalidSubject, match="optimizer"):
        nndiag.monitor(model, "adam")
    with pytest.raises(InvalidSetting, match="spike_factor"):
        MonitorSettings(spike_factor=0.5)
    with nndiag.monitor(model, opt) as mon:
        with pytest.raises(InvalidSubject, match="loss: expects a scalar"):
            mon.step(torch.ones(3))
        with pytest.raises(InvalidSetting, match="validate"):
            mon.validate(1.0)


def test_every_setting_cites_its_source() -> None:
    sources = MonitorSettings.sources()
    assert sources and all(len(text) > 20 for text in sources.values())


def _hooks(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    found = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return found + len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)


def test_a_forward_that_raises_keeps_its_own_exception() -> None:
    model, opt, x, _ = _setup()
    with nndiag.monitor(model, opt, every=1):  # step 0 armed: the recorder runs
        with pytest.raises(RuntimeError, match="mat1 and mat2"):
            model(x[:, :5])
    assert _hooks(model, opt) == 0 and torch._C._len_torch_function_stack() == 0


def test_without_with_step_0_is_sampled_and_a_dropped_monitor_leaves_no_hook() -> None:
    import gc

    model, opt, x, y = _setup()
    mon = nndiag.monitor(model, opt, every=10)
    _loop(model, opt, x, y, 20, mon)
    assert [s.step for s in mon.history.samples] == [0, 10]
    del mon
    gc.collect()
    assert _hooks(model, opt) == 0


@pytest.mark.parametrize("fused", [False, True])
def test_a_step_the_gradient_scaler_skips_is_no_finding(fused: bool) -> None:
    model, _, x, y = _setup()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    with nndiag.monitor(model, opt, every=1, on_fatal="raise") as mon:
        for step in range(6):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[:64]), y[:64])
            scaler.scale(loss * (1e36 if step == 0 else 1.0)).backward()  # overflows once
            scaler.step(opt)
            scaler.update()
            mon.step(loss)
    assert mon.report["nonfinite"].status == "pass"
    assert mon.history.samples[0].grad_norm is None  # the skipped step reads nothing
    grad_norms = [s.grad_norm for s in mon.history.samples[1:]]
    assert all(g is not None and 0 < g < 100 for g in grad_norms)  # unscaled


def test_tensors_another_optimizer_steps_are_not_reported_unheld() -> None:
    torch.manual_seed(0)
    emb, head = nn.Embedding(100, 16, sparse=True), nn.Linear(16, 1)
    model = nn.Sequential(emb, head)
    sparse, dense = (
        torch.optim.SparseAdam(emb.parameters(), 1e-2),
        torch.optim.Adam(head.parameters()),
    )
    with nndiag.monitor(model, dense, every=5) as mon:
        for _ in range(15):
            ids = torch.randint(0, 100, (32,))
            loss = nn.functional.mse_loss(model(ids).squeeze(-1), (ids % 2).float())
            sparse.zero_grad()
            dense.zero_grad()
            loss.backward()
            sparse.step()
            dense.step()
            mon.step(loss)
    assert mon.report["update_ratio"].status == "pass", mon.report["update_ratio"].message


def test_a_warm_up_from_zero_is_not_a_flat_loss() -> None:
    model, _, x, y = _setup()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / 2000)  # 2000-step warm-up
    with nndiag.monitor(model, opt, every=25) as mon:
        for _ in range(300):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[:64]), y[:64])
            loss.backward()
            opt.step()
            sched.step()
            mon.step(loss)
    assert mon.report["loss_flat"].status == "pass", mon.report["loss_flat"].message
    assert mon.history.lrs[0] == 0.0  # the rate step 0 used, before the scheduler moved it


def test_validations_are_one_metric_and_an_accuracy_drop_is_a_gap() -> None:
    model, opt, *_ = _setup()
    with nndiag.monitor(model, opt) as mon:
        for step in range(300):
            mon.step(1.0 / (1 + step))  # a training loss that keeps falling
            if step % 50 == 49:
                mon.validate([0.9, 0.9, 0.85, 0.8, 0.78, 0.76][step // 50], higher_is_better=True)
        with pytest.raises(InvalidSetting, match="higher_is_better"):
            mon.validate(0.5)
    gap = mon.report["generalization_gap"]
    assert gap.status == "warn" and "1 - the accuracy" in gap.message


def test_a_rule_a_short_run_cannot_judge_says_so() -> None:
    model, opt, x, y = _setup()
    with nndiag.monitor(model, opt, every=50) as mon:
        _loop(model, opt, x, y, 60, mon)
    report = mon.report
    assert report["loss_flat"].status == "skip" and "needs 125 steps" in report["loss_flat"].message
    assert report["gradient_norm"].status == "skip"
    assert report["loss_spike"].status == "pass"


def test_a_nan_gradient_under_a_finite_loss_is_fatal() -> None:
    model, opt, x, y = _setup()
    with nndiag.monitor(model, opt, every=1) as mon:
        opt.zero_grad()
        zero = model[0].weight[0, 0] - model[0].weight[0, 0]
        loss = nn.functional.cross_entropy(model(x), y) + torch.sqrt(zero)  # d sqrt at 0: NaN
        loss.backward()
        opt.step()  # the weights turn NaN: they moved
        mon.step(loss)
    assert mon.report["nonfinite"].status == "fail"
    assert "gradient" in mon.report["nonfinite"].message


def test_an_optimizer_of_other_tensors_leaves_every_tensor_unheld() -> None:
    model, _, x, y = _setup()
    stale = torch.optim.SGD(nn.Linear(8, 32).parameters(), lr=0.1)  # built for another model
    with nndiag.monitor(model, stale, every=5) as mon:
        _loop(model, stale, x, y, 10, mon)
    assert mon.report["update_ratio"].status == "fail"
    assert "no parameter group of the optimizer holds them" in mon.report["update_ratio"].message


def test_a_monitor_dropped_mid_step_takes_the_recorders_hooks_along() -> None:
    import gc

    model, opt, x, y = _setup()
    mon = nndiag.monitor(model, opt, every=1)
    model(x)  # a sampled forward ran; its step never reaches mon.step
    del mon
    gc.collect()
    assert _hooks(model, opt) == 0


@pytest.mark.parametrize(
    ("accuracies", "flagged"),
    [
        ([0.95, 0.95, 0.935, 0.935, 0.935], False),  # under two points: noise
        ([95, 95, 93.5, 93.5, 93.5], False),  # the same, as percentages
        ([1.0, 1.0, 0.998, 0.998, 0.998], False),  # a perfect score's noise
        ([0.9, 0.9, 0.8, 0.78, 0.76], True),
        ([90, 90, 80, 78, 76], True),
    ],
)
def test_an_accuracys_gap_is_judged_in_points_of_error(
    accuracies: list[float], flagged: bool
) -> None:
    model, opt, *_ = _setup()
    with nndiag.monitor(model, opt) as mon:
        for step in range(250):
            mon.step(1.0 / (1 + step))
            if step % 50 == 49:
                mon.validate(accuracies[step // 50], higher_is_better=True)
    assert (mon.report["generalization_gap"].status == "warn") == flagged
