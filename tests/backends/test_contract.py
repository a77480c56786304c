"""Every backend's session keeps the same contract: numpy across the seam, one row per
sample, private members only inside ``isolated()``, a measured step per trainable tensor,
and the user's exceptions named by the call that raised them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import nndiag
from nndiag.contract import Batch, Session, Step
from nndiag.errors import ModelError
from tests import models as torch_models
from tests.backends import numpy_models


def _torch_subject() -> tuple[nndiag.Subject, int]:
    subject = torch_models.he_relu_mlp(0)
    trainable = [p for p in subject.model.parameters() if p.requires_grad]
    return subject, len(trainable)


def _numpy_subject() -> tuple[nndiag.Subject, int]:
    model = numpy_models.net(0)
    return nndiag.Subject(model, numpy_models.data(0)), len(model.params)


def _jax_subject() -> tuple[nndiag.Subject, int]:
    jax = pytest.importorskip("jax")
    from tests.backends import jax_models

    subject = jax_models.he_relu_mlp(0)
    return subject, len(jax.tree_util.tree_leaves(subject.model[1]))


SUBJECTS: dict[str, Callable[[], tuple[nndiag.Subject, int]]] = {
    "torch": _torch_subject,
    "numpy": _numpy_subject,
    "jax": _jax_subject,
}


def _open(subject: nndiag.Subject) -> Session:
    session: Session = subject.backend.session(subject, nndiag.Config())
    return session


@pytest.fixture(params=sorted(SUBJECTS))
def opened(request: pytest.FixtureRequest) -> tuple[Session, int]:
    subject, trainable = SUBJECTS[request.param]()
    return _open(subject), trainable


def test_outputs_cross_the_seam_as_numpy_with_one_row_per_sample(
    opened: tuple[Session, int],
) -> None:
    session, _ = opened
    batch = session.rows(16)
    with session.isolated("x"):
        evaluation = session.evaluate(batch, outputs=True)
    assert isinstance(evaluation.outputs, np.ndarray)
    assert evaluation.outputs.shape[0] == 16 == len(batch)
    assert np.isfinite(evaluation.loss)


def test_take_repeats_rows_in_order(opened: tuple[Session, int]) -> None:
    session, _ = opened
    batch = session.rows(8)
    taken = session.take(batch, [0, 0])
    assert len(taken) == 2
    X, y = session.arrays(batch)
    X2, y2 = session.arrays(taken)
    assert X2.shape == (2, *X.shape[1:])
    assert np.array_equal(X2, X[[0, 0]]) and np.array_equal(y2, y[[0, 0]])


def test_arrays_are_numpy_and_match_the_rows(opened: tuple[Session, int]) -> None:
    session, _ = opened
    X, y = session.arrays(session.rows(10))
    assert isinstance(X, np.ndarray) and isinstance(y, np.ndarray)
    assert len(X) == len(y) == 10


def test_private_members_refuse_to_run_outside_isolated(opened: tuple[Session, int]) -> None:
    session, _ = opened
    batch = session.rows(8)
    with pytest.raises(RuntimeError, match="evaluate"):
        session.evaluate(batch)
    with pytest.raises(RuntimeError, match="trainer"), session.trainer(batch, default_lr=1e-3):
        pass
    with pytest.raises(RuntimeError, match="objective"), session.objective(batch):
        pass
    with session.isolated("x"):  # and work inside it
        session.evaluate(batch)


def test_a_measured_step_reports_every_trainable_tensor(opened: tuple[Session, int]) -> None:
    session, trainable = opened
    batch = session.rows(32)
    with session.isolated("x"), session.trainer(batch, default_lr=1e-3) as trainer:
        first = trainer.step(measure=True)
        assert "nndiag's default" in trainer.optimizer
        assert trainer.unchanged() == []
        step = trainer.step(measure=True)  # zero-initialized biases have moved off zero
    assert isinstance(first, Step) and len(first.updates) == len(first.weights) == trainable
    assert all(v > 0 for v in first.updates.values()), first.updates
    assert all(v >= 0 for v in first.weights.values()), first.weights
    assert isinstance(step, Step) and np.isfinite(step.loss)
    assert len(step.updates) == len(step.weights) == trainable
    assert set(step.updates) == set(step.weights)
    assert all(v > 0 for v in step.updates.values()), step.updates
    assert all(v > 0 for v in step.weights.values()), step.weights


def test_steps_on_given_batches_and_evaluates_the_trained_weights(
    opened: tuple[Session, int],
) -> None:
    """Minibatches (``step(batch=...)``) carry the optimizer on, and ``evaluate`` sees the
    trained weights, not the starting ones (the search's training loop)."""
    session, _ = opened
    batch = session.rows(32)
    first, second = session.take(batch, range(16)), session.take(batch, range(16, 32))
    with session.isolated("x"):
        start = session.evaluate(batch, mode="eval", outputs=True)
        with session.trainer(first, lr=1e-2) as trainer:
            before = trainer.evaluate(second)
            losses = [trainer.step(batch=b).loss for b in (second, second, second)]
            after = trainer.evaluate(second)
            fresh = trainer.evaluate(batch)
    assert np.allclose(before.outputs, start.outputs[16:], atol=1e-5)
    assert losses[0] == pytest.approx(before.loss, rel=1e-4)  # the step trains on `second`
    assert after.loss < before.loss
    assert isinstance(fresh.outputs, np.ndarray) and fresh.outputs.shape[0] == 32
    assert not np.allclose(fresh.outputs, start.outputs)


def test_a_restoring_trainer_gives_the_next_one_the_same_start_and_captures_trained_copies(
    opened: tuple[Session, int],
) -> None:
    session, _ = opened
    batch = session.rows(20)
    with session.isolated("x"):
        with session.trainer(batch, lr=0.01, restore=True) as trainer:
            assert trainer.lr == pytest.approx(0.01)
            before = trainer.capture(batch, bins=10)
            first = [trainer.step().loss for _ in range(4)]
            after = trainer.capture(batch, bins=10)
        with session.trainer(batch, default_lr=2e-3, restore=True) as again:
            assert again.lr == pytest.approx(2e-3)
            second = again.step().loss
    assert second == pytest.approx(first[0], rel=1e-6) and first[-1] < first[0]
    assert [x.name for x in before] == [x.name for x in after] and before
    # the capture sees the trained weights: each layer's statistics moved
    assert all(a.mean != b.mean for a, b in zip(before, after))


# -- torch: arrays -------------------------------------------------------------------------
def _torch_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(24, 6, generator=g), torch.randint(0, 3, (24,), generator=g)


def _torch_session(**kwargs: Any) -> Session:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    return _open(nndiag.Subject(model, _torch_data(), **kwargs))


def test_torch_arrays_equal_the_data() -> None:
    session = _torch_session()
    X, y = _torch_data()
    got_X, got_y = session.arrays(session.rows(len(y)))
    assert isinstance(got_X, np.ndarray) and isinstance(got_y, np.ndarray)
    assert got_X.dtype == np.float32 and got_y.dtype == np.int64
    assert np.array_equal(got_X, X.numpy()) and np.array_equal(got_y, y.numpy())


def test_torch_arrays_leave_the_graph_and_widen_bfloat16() -> None:
    session = _torch_session()
    X, y = _torch_data()
    got_X, _ = session.arrays(Batch(X.clone().requires_grad_(True), y))
    assert np.array_equal(got_X, X.numpy())
    got_X, _ = session.arrays(Batch(X.bfloat16(), y))
    assert got_X.dtype == np.float32
    assert np.array_equal(got_X, X.bfloat16().float().numpy())


def test_torch_arrays_give_no_inputs_for_a_dict_of_tensors() -> None:
    session = _torch_session()
    X, y = _torch_data()
    got_X, got_y = session.arrays(Batch({"ids": X.long()}, y))
    assert got_X is None and np.array_equal(got_y, y.numpy())


# -- the user's exceptions name the call ---------------------------------------------------
class _Broken(Exception):
    pass


def _raise(*args: Any) -> Any:
    raise _Broken("boom")


def test_torch_loss_errors_name_the_loss_call() -> None:
    with pytest.raises(ModelError) as info:
        _torch_session(loss=_raise)
    assert info.value.call == "loss(output, y)" and info.value.check == "validation"
    assert isinstance(info.value.original, _Broken) and info.value.__cause__ is info.value.original


def test_torch_optimizer_and_regularization_errors_name_their_call() -> None:
    session = _torch_session(optimizer=_raise, regularization=_raise)
    batch = session.rows(8)
    with pytest.raises(ModelError) as info, session.isolated("x"), session.trainer(batch):
        pass
    assert (info.value.argument, info.value.call, info.value.check) == (
        "optimizer",
        "optimizer(params)",
        "x",
    )
    with pytest.raises(ModelError) as info, session.isolated("y"):
        session.set_regularization(0.5)
    assert info.value.call == "regularization(model, 0.5)" and info.value.check == "y"
    assert isinstance(info.value.original, _Broken)


def test_numpy_optimizer_and_regularization_errors_name_their_call() -> None:
    subject = nndiag.Subject(
        numpy_models.net(0), numpy_models.data(0), optimizer=_raise, regularization=_raise
    )
    session = _open(subject)
    batch = session.rows(8)
    with pytest.raises(ModelError) as info, session.isolated("x"), session.trainer(batch) as t:
        t.step()
    assert info.value.call == "optimizer(w, dw, config)" and info.value.check == "x"
    with pytest.raises(ModelError) as info, session.isolated("x"):
        session.set_regularization(0.5)
    assert info.value.call == "regularization(model, 0.5)"
    assert isinstance(info.value.original, _Broken)


class _BrokenOptax:
    """An optax-shaped optimizer whose ``init`` or ``update`` raises."""

    def __init__(self, fails: str) -> None:
        self.fails = fails

    def init(self, params: Any) -> Any:
        if self.fails == "init":
            raise _Broken("init")
        return ()

    def update(self, grads: Any, state: Any, params: Any = None) -> Any:
        raise _Broken("update")


@pytest.mark.parametrize(
    ("fails", "call"),
    [("init", "optimizer.init(params)"), ("update", "optimizer.update(grads, state, params)")],
)
def test_jax_optimizer_errors_name_their_call(fails: str, call: str) -> None:
    pytest.importorskip("jax")
    from tests.backends import jax_models

    model = (jax_models.mlp(lambda x: x), jax_models.init_mlp(0, 2, jax_models.he))
    subject = nndiag.Subject(model, jax_models.classification(0), optimizer=_BrokenOptax(fails))
    session = _open(subject)
    batch = session.rows(8)
    with pytest.raises(ModelError) as info, session.isolated("x"), session.trainer(batch) as t:
        t.step()
    assert info.value.call == call and info.value.check == "x"
    assert isinstance(info.value.original, _Broken)


def test_jax_penalty_errors_name_the_penalty_call() -> None:
    pytest.importorskip("jax")
    from tests.backends import jax_models

    model = (jax_models.mlp(lambda x: x), jax_models.init_mlp(0, 2, jax_models.he))

    def penalty(params: Any) -> Any:
        raise _Broken("penalty")

    with pytest.raises(ModelError) as info:
        _open(nndiag.Subject(model, jax_models.classification(0), regularization=penalty))
    assert info.value.call == "regularization(params)" and info.value.check == "validation"


def test_a_measured_step_reports_each_gradient_and_nothing_frozen_changes(
    opened: tuple[Session, int],
) -> None:
    session, trainable = opened
    batch = session.rows(32)
    with pytest.raises(RuntimeError, match="ownership"):
        session.ownership()
    with session.isolated("x"):
        assert session.ownership() is None  # nndiag's default optimizer holds every tensor
        with session.trainer(batch, default_lr=1e-3) as trainer:
            step = trainer.step(measure=True)
            assert trainer.frozen_changed() == []
    assert set(step.grads) == set(step.updates) and len(step.grads) == trainable
    assert all(g is not None and g > 0 for g in step.grads.values()), step.grads
    assert trainer.step().grads == {}  # unmeasured: no norms


def test_torch_ownership_of_an_instance_and_of_a_factory() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model[2] = nn.Linear(8, 3)  # replaced after the optimizer was built
    session = _open(nndiag.Subject(model, _torch_data(), optimizer=optimizer))
    with session.isolated("x"):
        owned = session.ownership()
    assert owned is not None and owned.unowned == ("2.weight", "2.bias")
    assert owned.stale == ((3, 8), (3,))
    session = _open(
        nndiag.Subject(
            model, _torch_data(), optimizer=lambda p: torch.optim.SGD(model[0].parameters(), 0.1)
        )
    )
    with session.isolated("x"):
        owned = session.ownership()
    assert owned is not None and owned.unowned == ("2.weight", "2.bias") and owned.stale == ()
