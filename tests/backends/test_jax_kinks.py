"""The JAX objective's ``sides``: the loss at +h and -h and how many winners of the loss's
non-smooth operations (a ReLU's side, a max's position, an abs's sign) differ between the
two points, counted from the traced loss."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy
lax = jax.lax

import nndiag  # noqa: E402
from nndiag.backends.jax.kinks import crossings, three_points, winners  # noqa: E402
from nndiag.contract import Objective, Session, Sides  # noqa: E402
from tests.backends import jax_models as M  # noqa: E402

N = 16  # rows of the hand-built regressions


@contextmanager
def _objective(subject: nndiag.Subject, rows: int = 64) -> Iterator[tuple[Session, Objective]]:
    session: Session = subject.backend.session(subject, nndiag.Config())
    with session.isolated("kinks"), session.objective(session.rows(rows)) as objective:
        yield session, objective


def _directions(objective: Objective, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape) for name, shape in objective.shapes.items()}


def _regression(
    apply: Callable[[Any, Any], Any], params: Any, X: np.ndarray, y: np.ndarray | None = None
) -> nndiag.Subject:
    y = np.zeros((len(X), 1)) if y is None else y
    return nndiag.Subject((apply, params), (X, y.astype(np.float32)))


# -- ReLU MLPs ---------------------------------------------------------------------------
def test_a_tiny_step_crosses_nothing_and_matches_value_at_both_points() -> None:
    with _objective(M.he_relu_mlp(0)) as (session, objective):
        shifts = _directions(objective)
        before = session.passes()
        sides = objective.sides(shifts, 1e-9)
        after = session.passes()
        up, down = objective.value(shifts, 1e-9), objective.value(shifts, -1e-9)
    assert isinstance(sides, Sides)
    assert sides.crossings == 0
    assert sides.up == pytest.approx(up, rel=1e-13, abs=0)
    assert sides.down == pytest.approx(down, rel=1e-13, abs=0)
    assert sides.up != sides.down  # the step did move the loss
    assert (after[0] - before[0], after[1] - before[1]) == (2, 0)


def _relu_flips(params: Any, X: Any, shifts: dict[str, np.ndarray], h: float) -> int:
    """The hidden units of ``M.mlp(relu)`` whose pre-activation changes sign between the
    two points, counted directly (float64, the objective's dtype)."""
    flat, tree = jax.tree_util.tree_flatten_with_path(params)
    sides = []
    for scale in (h, -h):
        leaves = []
        for path, leaf in flat:
            name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            leaf = np.asarray(leaf, dtype=np.float64)
            leaves.append(leaf + scale * shifts[name] if name in shifts else leaf)
        moved = jax.tree_util.tree_unflatten(tree, leaves)
        x, positive = np.asarray(X, dtype=np.float64), []
        for layer in moved["layers"][:-1]:
            z = x @ layer["W"] + layer["b"]
            positive.append(z > 0)
            x = np.maximum(z, 0.0)
        sides.append(positive)
    return sum(int((a != b).sum()) for a, b in zip(*sides))


def test_crossings_count_exactly_the_relu_units_that_change_side() -> None:
    subject = M.he_relu_mlp(0)
    X = subject.batches[0].X[:64]
    with _objective(subject) as (_, objective):
        shifts = _directions(objective)
        found = {h: objective.sides(shifts, h).crossings for h in (1e-9, 1e-4, 1e-3, 1e-2)}
    expected = {h: _relu_flips(subject.model[1], X, shifts, h) for h in found}
    assert found == expected
    assert expected[1e-9] == 0 and 0 < expected[1e-3] < expected[1e-2]  # the sweep meant it


def _one_unit(params: dict[str, Any], x: Any) -> Any:
    return jax.nn.relu(x @ params["W1"] + params["b1"]) @ params["W2"]


def test_pushing_a_bias_across_zero_flips_that_unit_on_every_row() -> None:
    """W1 = 0: each unit's pre-activation is its bias, on every row. A step of 0.1 along
    b1[0] = 0.05 puts it at 0.15 and -0.05; the other units stay where they are."""
    params = {
        "W1": jnp.zeros((3, 4)),
        "b1": jnp.asarray([0.05, -0.5, 0.5, 1.0]),
        "W2": jnp.ones((4, 1)),
    }
    X = np.random.default_rng(0).standard_normal((N, 3)).astype(np.float32)
    with _objective(_regression(_one_unit, params, X), rows=N) as (_, objective):
        push = {"b1": np.asarray([1.0, 0.0, 0.0, 0.0])}
        across, short = objective.sides(push, 0.1), objective.sides(push, 0.01)
        everything = objective.sides({"b1": np.ones(4)}, 0.6)  # -0.5 and 0.5 cross too
    assert across.crossings == N
    assert short.crossings == 0
    assert everything.crossings == 3 * N
    # The loss itself: mean((sum of relu(b1)) - 0)^2 at each point.
    assert across.up == pytest.approx((0.15 + 0.5 + 1.0) ** 2, rel=1e-6)  # float32 b1
    assert across.down == pytest.approx((0.5 + 1.0) ** 2, rel=1e-6)


# -- smooth models -----------------------------------------------------------------------
def test_a_tanh_classifier_crosses_nothing_even_at_a_large_step() -> None:
    """Cross-entropy's log-softmax subtracts the row's max behind a stop_gradient: the
    max moving to another class leaves the loss smooth, so it is no crossing."""
    with _objective(M.xavier_tanh_mlp(0)) as (_, objective):
        shifts = _directions(objective)
        big = objective.sides(shifts, 0.5)
        logits = _tanh_logits(M.xavier_tanh_mlp(0), objective, shifts, 0.5)
    assert big.crossings == 0
    assert abs(big.up - big.down) > 1e-2  # a real step, not a no-op
    # ... and the step does move some row's largest logit to another class.
    assert (logits[0].argmax(1) != logits[1].argmax(1)).any()


def _tanh_logits(
    subject: nndiag.Subject, objective: Objective, shifts: dict[str, np.ndarray], h: float
) -> list[np.ndarray]:
    apply, params = subject.model
    X = jnp.asarray(subject.batches[0].X[:64], dtype=jnp.float64)
    flat, tree = jax.tree_util.tree_flatten(params)
    names = objective.names
    found = []
    for scale in (h, -h):
        leaves = [
            jnp.asarray(leaf, jnp.float64) + scale * shifts[name] for name, leaf in zip(names, flat)
        ]
        found.append(np.asarray(apply(jax.tree_util.tree_unflatten(tree, leaves), X)))
    return found


def test_softplus_and_sigmoid_losses_are_smooth_though_logaddexp_takes_a_max() -> None:
    def apply(params: Any, x: Any) -> Any:
        return jax.nn.softplus(x @ params["W"]) + jax.nn.log_sigmoid(x @ params["V"])

    rng = np.random.default_rng(1)
    params = {"W": jnp.asarray(rng.standard_normal((3, 1))), "V": jnp.zeros((3, 1))}
    X = rng.standard_normal((N, 3)).astype(np.float32)
    with _objective(_regression(apply, params, X), rows=N) as (_, objective):
        sides = objective.sides({"W": np.ones((3, 1)), "V": np.ones((3, 1))}, 2.0)
    assert sides.crossings == 0 and sides.up != sides.down


# -- max over an axis, abs ---------------------------------------------------------------
def _row_max(params: dict[str, Any], x: Any) -> Any:
    return jnp.max(x * params["w"], axis=-1, keepdims=True)


def test_a_max_over_an_axis_counts_the_elements_whose_selection_moves() -> None:
    """x = 1 everywhere: the max picks w[0] at w = (+h, 0) and w[1] at (-h, 0); on each
    row two elements change between selected and not."""
    X = np.ones((N, 2), dtype=np.float32)
    params = {"w": jnp.asarray([0.0, 0.0])}
    with _objective(_regression(_row_max, params, X), rows=N) as (_, objective):
        tie = objective.sides({"w": np.asarray([1.0, 0.0])}, 1e-3)
        along = objective.sides({"w": np.asarray([1.0, 1.0])}, 1e-3)  # both move together
    assert tie.crossings == 2 * N
    assert tie.up == pytest.approx(1e-6, rel=1e-9) and tie.down == 0.0
    assert along.crossings == 0


def _distance(params: dict[str, Any], x: Any) -> Any:
    return jnp.abs(x - params["c"])


def test_abs_counts_the_rows_whose_sign_changes() -> None:
    """Rows x = k/N, c halfway between two of them: a step of 1.2/N either way passes
    exactly two rows (k = N/2 and N/2 + 1), a step of 0.2/N none."""
    X = (np.arange(N) / N).reshape(N, 1).astype(np.float32)
    c = 0.5 + 0.5 / N
    with _objective(_regression(_distance, {"c": jnp.asarray([c])}, X), rows=N) as (_, o):
        wide, narrow = o.sides({"c": np.ones(1)}, 1.2 / N), o.sides({"c": np.ones(1)}, 0.2 / N)
    assert wide.crossings == 2
    assert narrow.crossings == 0


# -- the interpreter's other primitives --------------------------------------------------
def _changed(fn: Callable[[Any], Any], a: Any, b: Any) -> int:
    """Crossings of ``fn`` between inputs ``a`` and ``b``, compiled as the session does."""
    compiled = jax.jit(lambda u, d: three_points(fn, u, u, d))
    high, low, count, none, same = compiled(jnp.asarray(a), jnp.asarray(b))
    assert int(none) == 0 and int(same) == int(count)  # base = up: only down differs
    assert float(high) == pytest.approx(float(fn(jnp.asarray(a))))
    assert float(low) == pytest.approx(float(fn(jnp.asarray(b))))
    return int(count)


_A = np.asarray([0.3, -0.2, 1.5, 0.9])
_B = np.asarray([0.3, 0.2, 2.5, 0.25])  # 1 changes sign, 2 passes 2.0, 3 passes 0
_W = np.asarray([1.0, 1.0, 1.0, 2.0])


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (lambda x: jnp.sum(jnp.clip(x, 0.0, 2.0)), 2),  # elements 1 and 2 change pieces
        (lambda x: jnp.sum(jnp.floor(x)), 2),  # floor(-0.2) -> 0, floor(2.5) -> 2
        (lambda x: jnp.sum(jnp.sort(x) * jnp.arange(4.0)), 2),  # 3 and 0 swap places
        (lambda x: jnp.sum(lax.top_k(x, 2)[0]), 1),  # the second largest: 3, then 0
        (lambda x: jnp.sum(jnp.where(x > 0, x, 0.0)), 1),
        (lambda x: jnp.sum(jnp.tanh(x) * x), 0),
        (lambda x: lax.cond(jnp.sum(x) > 3.0, jnp.sum, jnp.prod, x), 2),  # sum>3 and index
        (lambda x: jnp.sum(jax.jit(jax.nn.relu)(x)), 1),
        (lambda x: jnp.sum(jax.checkpoint(jnp.abs)(x)), 1),
        # x * _W is (0.3, -0.2 | 1.5, 1.8) then (0.3, 0.2 | 2.5, 0.5): the second window's
        # maximum moves from element 3 to 2 (a max pool), and so does the argmax.
        (lambda x: jnp.sum(lax.reduce_window(x * _W, -jnp.inf, lax.max, (2,), (2,), "VALID")), 2),
        (lambda x: jnp.argmax(x * _W) * 1.0 + jnp.sum(x), 1),
    ],
)
def test_non_smooth_primitives_are_seen_through_calls_and_control_flow(
    fn: Callable[[Any], Any], expected: int
) -> None:
    assert _changed(fn, _A, _B) == expected


def test_a_scan_compares_every_iteration_and_a_while_loop_its_length() -> None:
    def scanned(x: Any) -> Any:
        return lax.scan(lambda c, v: (c + jnp.abs(v), None), 0.0, x)[0]

    def halvings(x: Any) -> Any:  # how many halvings bring sum(x) under 1
        count, _ = lax.while_loop(
            lambda s: s[1] > 1.0, lambda s: (s[0] + 1, s[1] / 2), (0, jnp.sum(x))
        )
        return count * 1.0 + jnp.sum(x)

    assert _changed(scanned, _A, _B) == 1
    # sums 2.5 and 3.25 both take 2 halvings; 4.5 takes 3.
    assert _changed(halvings, _A, _B) == 0
    assert _changed(halvings, _A, _A + np.asarray([0.0, 0.0, 2.0, 0.0])) == 1


def test_winners_of_unused_outputs_and_of_stopped_values_are_not_kept() -> None:
    def fn(x: Any) -> Any:
        jnp.argsort(x)  # traced, unused
        shift = lax.stop_gradient(jnp.max(x))
        return jnp.sum(jnp.exp(x - shift)) * jnp.exp(shift)

    closed = jax.make_jaxpr(fn)(jnp.asarray(_A))
    outs, found = winners(closed, [jnp.asarray(_A)])
    assert found == []
    assert float(outs[0]) == pytest.approx(float(np.exp(_A).sum()))


def test_crossings_count_a_winner_whose_shape_or_presence_differs_whole() -> None:
    same = [jnp.asarray([True, False]), jnp.asarray([1, 2, 3])]
    assert int(crossings(same, [jnp.asarray([True, True]), jnp.asarray([1, 2, 3])])) == 1
    assert int(crossings(same, [same[0], jnp.asarray([1, 2])])) == 3
    assert int(crossings(same, same[:1])) == 3
    assert int(crossings([jnp.asarray([np.nan, 1.0])], [jnp.asarray([np.nan, 2.0])])) == 1


# -- untraceable losses ------------------------------------------------------------------
def test_a_loss_that_cannot_be_traced_gets_its_sides_and_unknown_crossings() -> None:
    def guarded(params: Any, x: Any) -> Any:
        if float(jnp.abs(x).max()) > 1e6:  # Python control flow on the input's values
            raise ValueError("input out of range")
        return jax.nn.relu(x @ params["W"])

    X = np.random.default_rng(0).standard_normal((N, 3)).astype(np.float32)
    params = {"W": jnp.asarray(np.random.default_rng(1).standard_normal((3, 1)))}
    with _objective(_regression(guarded, params, X), rows=N) as (session, objective):
        shifts = {"W": np.ones((3, 1))}
        before = session.passes()[0]
        first, again = objective.sides(shifts, 0.1), objective.sides(shifts, 0.1)
        spent = session.passes()[0] - before
        up, down = objective.value(shifts, 0.1), objective.value(shifts, -0.1)
    assert first == again == Sides(up, down, None)
    assert spent == 4
