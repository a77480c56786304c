"""The JAX backend's session: one diagnose run of one ``(apply_fn, params)`` subject."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nndiag.backends import PER_SAMPLE_ROWS
from nndiag.backends.base import (
    PROBE_ROWS,
    SessionBase,
    adam_update,
    check_default_targets,
    cut_targets,
    float64_note,
)
from nndiag.backends.jax.capture import JaxprRecorder, is_array, is_float, subjaxpr
from nndiag.backends.jax.compile import jit_or_eager, untraceable
from nndiag.backends.jax.kinks import three_points
from nndiag.backends.jax.numerics import NonFiniteSearch, nonfinite_count
from nndiag.backends.state import NumberSnapshot, holders, rng_guard
from nndiag.contract import (
    Batch,
    Evaluation,
    LayerRecord,
    Mode,
    NonFinite,
    NormLayer,
    Ownership,
    Sides,
    Step,
    Task,
    Vocabulary,
)
from nndiag.errors import InvalidSubject, ModelError, describe

try:  # jax >= 0.4.30 exposes the jaxpr types here; older versions in jax.core
    from jax.extend.core import Var, jaxpr_as_fun
except ImportError:  # pragma: no cover - depends on the installed jax
    from jax.core import Var, jaxpr_as_fun  # type: ignore[no-redef,attr-defined]

__all__ = ["WORDS", "JaxSession", "knob_form"]

WORDS = Vocabulary(
    framework="jax",
    custom_backward="jax.custom_vjp / custom_jvp rules",
    cut_graph="a jax.lax.stop_gradient or a round trip through numpy",
    summed_loss="a sum instead of jnp.mean",
    eval_mode="the model's apply function (JAX has no train/eval mode; pass deterministic "
    "flags yourself)",
    he_init="jax.nn.initializers.he_normal()",
    xavier_init="jax.nn.initializers.glorot_normal()",
    standardize="X = (X - jnp.array({mean})) / jnp.array({std}) (the training set's mean and std)",
    rebalance="weight each sample's loss by 1 / its class frequency, or resample the classes",
    causal_mask="flax.linen.make_causal_mask(tokens) passed as the attention mask, or "
    "jnp.where(jnp.tril(jnp.ones((T, T), bool)), scores, -jnp.inf) before the softmax",
)


def _path_name(path: Sequence[Any]) -> str:
    """``layers/0/W`` from a pytree key path (dict keys, sequence indices, attributes)."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts) or "params"


def _x64() -> AbstractContextManager[Any]:
    """64-bit mode for the calling thread only; the global flag is left alone."""
    state = getattr(jax, "enable_x64", None)
    if callable(state):
        return state(True)
    from jax.experimental import enable_x64  # type: ignore[attr-defined]  # jax < 0.5

    return enable_x64()


def _x64_enabled() -> bool:
    return bool(jax.config.jax_enable_x64)  # type: ignore[attr-defined]


def knob_form(knob: Any) -> str:
    """``penalty`` for ``penalty(params)``, ``setter`` for ``knob(model, strength)``."""
    try:
        signature = inspect.signature(knob)
    except (TypeError, ValueError):
        return "setter"
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in signature.parameters.values())
    if len(required) == 1 and not varargs:
        return "penalty"
    if len(required) == 0 and not varargs and len(positional) < 2:
        return "invalid"
    return "setter"


def _cross_entropy(outputs: jax.Array, y: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(outputs, axis=-1)
    return -jnp.take_along_axis(logp, y[..., None].astype(jnp.int32), axis=-1).mean()


def _mse(outputs: jax.Array, y: jax.Array) -> jax.Array:
    if outputs.shape != y.shape and outputs.size == y.size:
        outputs = outputs.reshape(y.shape)  # (N, 1) outputs for (N,) targets
    return jnp.mean((outputs - y) ** 2)


@jax.jit
def _adam(
    params: list[jax.Array],
    grads: list[jax.Array],
    m: list[jax.Array],
    v: list[jax.Array],
    t: jax.Array,
    lr: jax.Array,
) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array]]:
    """One Adam step on every tensor (the step count and rate are arguments: one program
    for every step)."""
    new, ms, vs = [], [], []
    for p, g, mi, vi in zip(params, grads, m, v):
        w, mi, vi = adam_update(jnp, p, g, mi, vi, t, lr)
        new.append(w.astype(p.dtype))
        ms.append(mi)
        vs.append(vi)
    return new, ms, vs


class JaxSession(SessionBase):
    """One diagnose run of one subject on the JAX backend."""

    words = WORDS

    def __init__(self, subject: Any, config: Any) -> None:
        super().__init__(subject, config)
        self.apply_fn: Callable[..., Any] = subject.model[0]
        self.params: Any = subject.model[1]
        y = self.batches[0].y
        self.loss_fn = subject.loss or (_mse if is_float(y) else _cross_entropy)
        knob = subject.regularization
        self.has_regularization = knob is not None
        self._penalty = knob if knob is not None and knob_form(knob) == "penalty" else None
        self._setter = knob if knob is not None and self._penalty is None else None
        self._strength = 1.0
        self.framework = f"jax {jax.__version__}"
        flat, self._treedef = jax.tree_util.tree_flatten_with_path(self.params)
        self._leaves = [leaf for _, leaf in flat]
        self._leaf_names = [_path_name(path) for path, _ in flat]
        self._trainable = [i for i, leaf in enumerate(self._leaves) if is_float(leaf)]
        self.names = [self._leaf_names[i] for i in self._trainable]
        self._out_dtype: Any = None  # of the model's outputs, learned by the probe
        with self.isolated("validation"):
            self.task = self._probe()

    # -- calls into the user's code ----------------------------------------------------
    def _assemble(self, trainable: Sequence[Any]) -> Any:
        """The params pytree with the trainable leaves replaced, in ``self.names`` order."""
        leaves = list(self._leaves)
        for i, value in zip(self._trainable, trainable):
            leaves[i] = value
        return jax.tree_util.tree_unflatten(self._treedef, leaves)

    def _apply(self, params: Any, X: Any) -> jax.Array:
        """``apply_fn`` with its errors named; callers count the pass."""
        with self.calling("model", "apply_fn(params, X)"):
            out = self.apply_fn(params, X)
        if not is_array(out):
            raise InvalidSubject(
                "model",
                f"apply_fn returned {describe(out)}, not an array",
                "return the logits/predictions array from apply_fn, or wrap "
                "it in a function that does",
            )
        return jnp.asarray(out)

    def _data_loss(self, out: jax.Array, y: jax.Array) -> jax.Array:
        with self.calling("loss", "loss(outputs, y)"):
            loss = self.loss_fn(out, y)
        if not (is_array(loss) or isinstance(loss, (int, float))) or jnp.size(loss) != 1:
            shape = tuple(loss.shape) if is_array(loss) else describe(loss)
            raise InvalidSubject(
                "loss",
                f"returned {shape}, not a scalar",
                "reduce the loss to a scalar (.mean() over the batch)",
            )
        return jnp.reshape(jnp.asarray(loss), ())

    def _strength_arg(self) -> float | None:
        """The penalty's multiplier, passed to compiled code as an argument (one program
        for every strength); None when no penalty enters the loss (a NaN penalty times 0
        would still be NaN)."""
        return None if self._penalty is None or self._strength == 0.0 else self._strength

    def _penalty_term(self, params: Any, strength: Any) -> Any:
        if strength is None or self._penalty is None:
            return 0.0
        with self.calling("regularization", "regularization(params)"):
            value = self._penalty(params)
        scalar = is_array(value) or isinstance(value, (int, float))
        if not scalar or jnp.size(value) != 1:
            raise InvalidSubject(
                "regularization",
                f"penalty(params) returned {describe(value)}, not a scalar",
                "return one number, e.g. 0.5 * sum(jnp.sum(w ** 2) for w in weights)",
            )
        return strength * jnp.reshape(jnp.asarray(value), ())

    def _loss(self, out: jax.Array, y: jax.Array, params: Any, strength: Any) -> jax.Array:
        return self._data_loss(out, y) + self._penalty_term(params, strength)

    def _row_loss(self, out: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.reshape(jnp.asarray(self.loss_fn(out[None], y[None])), ())

    # -- isolation ---------------------------------------------------------------------
    @contextmanager
    def isolated(self, check: str) -> Iterator[None]:
        snapshot = NumberSnapshot(holders(self.loss_fn, self._setter)) if self._setter else None
        x64 = _x64_enabled()
        try:
            with rng_guard(), self.entered():
                yield
        except ModelError as exc:
            exc.check = check
            raise
        finally:
            self._strength = 1.0
            if snapshot is not None:
                snapshot.restore()
            if _x64_enabled() != x64:
                jax.config.update("jax_enable_x64", x64)

    # -- probe and losses --------------------------------------------------------------
    def _probe(self) -> Task:
        batch = self.rows(min(len(self.batches[0]), PROBE_ROWS))
        try:  # the output's shape from a trace: checked before the loss can trip on it
            out = jax.eval_shape(self._apply, self.params, batch.X)
        except Exception as exc:
            if not untraceable(exc):
                raise
            out = self._apply(self.params, batch.X)
        self._out_dtype = out.dtype
        if not out.shape or out.shape[0] != len(batch.y):
            rows = out.shape[0] if out.shape else 0
            raise InvalidSubject(
                "model",
                f"output has {rows} rows for {len(batch.y)} samples",
                "return one output row per input sample",
            )
        if is_float(batch.y):
            if self.subject.loss is None:
                check_default_targets(np.asarray(batch.y), tuple(out.shape))
            self.task = Task("regression")
        elif len(out.shape) < 2 or out.shape[-1] < 2:
            raise InvalidSubject(
                "data",
                "integer labels need class scores of shape (N, C), "
                f"the model outputs {tuple(out.shape)}",
                "output one score per class, or pass float targets",
            )
        else:
            self.task = self.classification(
                int(out.shape[-1]), [np.asarray(b.y) for b in self.batches]
            )
        self.evaluate(batch)  # runs the loss on real outputs: its errors surface here
        return self.task

    _concat = staticmethod(jnp.concatenate)

    def set_regularization(self, strength: float) -> None:
        self.require_isolated("set_regularization")
        if self._setter is None:
            self._strength = float(strength)
            return
        with self.calling("regularization", f"regularization(model, {strength:g})"):
            self._setter(self.model, strength)

    def take(self, batch: Batch, index: Sequence[int]) -> Batch:
        rows = jnp.asarray(np.asarray(list(index), dtype=np.int32))
        return Batch(batch.X[rows], batch.y[rows])

    def arrays(self, batch: Batch) -> tuple[Any, Any]:
        X = np.asarray(batch.X) if is_array(batch.X) else None
        return X, np.asarray(batch.y)

    def sequence(self, batch: Batch) -> Any:
        X = self.arrays(batch)[0]
        return X if X is not None and X.ndim >= 2 else None

    def with_sequence(self, batch: Batch, values: Any) -> Batch:
        new = jnp.asarray(np.asarray(values), dtype=batch.X.dtype)
        return Batch(new, cut_targets(batch.y, batch.X.shape[1], new.shape[1]))

    def evaluate(
        self,
        batch: Batch,
        *,
        mode: Mode = "train",
        outputs: bool = False,
        per_sample: bool = False,
        seed: int | None = None,
    ) -> Evaluation:
        """The loss (with the penalty at the current strength) and, when asked, outputs and
        per-sample losses, in one pass. JAX has no train/eval mode and ``apply_fn`` draws
        no random numbers of nndiag's, so ``mode`` and ``seed`` change nothing. Eager:
        one-off passes share JAX's per-operation compilation cache across models."""
        self.require_isolated("evaluate")
        self.count(forward=1)
        params, strength = self.params, self._strength_arg()
        out = self._apply(params, batch.X)
        penalty = jnp.asarray(self._penalty_term(params, strength))
        loss = float(self._data_loss(out, batch.y) + penalty)
        rows = self._per_sample(out, batch.y, penalty) if per_sample else None
        shown = None
        if outputs:
            shown = np.asarray(out, dtype=np.float64)
            if self.task.kind == "classification" and shown.ndim > 2:
                shown = np.moveaxis(shown, -1, 1)  # classes on axis 1 across the seam
        return Evaluation(loss, shown, rows)

    def _per_sample(self, out: jax.Array, y: jax.Array, penalty: jax.Array) -> Any:
        """Losses of the first rows on their own (plus the penalty), or None when the loss
        cannot take single rows (no noise estimate)."""
        n = min(len(y), PER_SAMPLE_ROWS)
        try:  # one vectorized pass; a loss that vmap cannot take is tried row by row
            return np.asarray(jax.vmap(self._row_loss)(out[:n], y[:n]) + penalty, np.float64)
        except Exception:
            pass
        try:
            rows = [float(self._row_loss(out[i], y[i])) for i in range(n)]
        except Exception:
            return None
        return np.asarray(rows) + float(penalty)

    def loss_of(self, batch: Batch, outputs: Any) -> float:
        """The loss of given outputs, the penalty at the current strength included (as
        :meth:`evaluate`'s loss)."""
        self.require_isolated("loss_of")
        scores = np.asarray(outputs)
        if self.task.kind == "classification" and scores.ndim > 2:
            scores = np.moveaxis(scores, 1, -1)  # back to classes on the last axis
        out = jnp.asarray(scores, dtype=self._out_dtype)
        return float(self._loss(out, batch.y, self.params, self._strength_arg()))

    def input_gradients(self, batch: Batch, row: int, *, mode: Mode = "eval") -> Any:
        self.require_isolated("input_gradients")
        if not is_float(batch.X):
            return None
        n = len(batch)
        self.count(forward=1, backward=1)
        with self.calling("model", "jax.vjp(apply_fn, X)"):
            try:
                out, pullback = jax.vjp(lambda X: self._apply(self.params, X), batch.X)
            except Exception as exc:
                if not untraceable(exc):
                    raise
                return None  # Python control flow on the inputs' values: not differentiable
            if not is_float(out):
                return None
            rng = np.random.default_rng(0)  # the projection: never the user's RNG
            weights = jnp.asarray(rng.standard_normal(out.shape[1:]), dtype=out.dtype)
            (grad,) = pullback(jnp.zeros_like(out).at[row].set(weights))
        return np.abs(np.asarray(grad, dtype=np.float64)).reshape(n, -1).max(axis=1)

    def find_nonfinite(self, batch: Batch, *, mode: Mode = "train") -> NonFinite | None:
        """Forward, loss and (in train mode) backward, each traced and evaluated equation
        by equation for the first one that turns finite values into NaN/Inf; a function
        that cannot be traced is run eagerly and only the stage is named."""
        self.require_isolated("find_nonfinite")
        point = [self._leaves[i] for i in self._trainable]
        strength = self._strength_arg()
        X, y = batch.X, batch.y

        def forward(point: list[Any], X: Any) -> jax.Array:
            return self._apply(self._assemble(point), X)

        def loss(out: jax.Array, y: Any, point: list[Any]) -> jax.Array:
            return self._loss(out, y, self._assemble(point), strength)

        def objective(point: list[Any], X: Any, y: Any) -> jax.Array:
            return loss(forward(point, X), y, point)

        try:
            jax.make_jaxpr(forward)(point, X)
        except Exception as exc:
            if not untraceable(exc):
                raise
            return self._nonfinite_eagerly(forward, loss, objective, point, batch, mode)
        self.count(forward=1)
        closed = jax.make_jaxpr(forward)(point, X)
        with self.calling("model", "apply_fn(params, X)"):
            (out,), found = NonFiniteSearch("forward", "apply_fn").run(closed, [*point, X])
        if found is not None:
            return found
        closed = jax.make_jaxpr(loss)(out, y, point)
        with self.calling("loss", "loss(outputs, y)"):
            (value,), found = NonFiniteSearch("loss", "the loss").run(closed, [out, y, *point])
        if found is not None:
            return NonFinite("loss", "the loss", found.op, found.count, found.total)
        if nonfinite_count(value)[0]:
            return NonFinite("loss", "the loss", getattr(self.loss_fn, "__name__", "loss"))
        if mode != "train":
            return None
        self.count(forward=1, backward=1)
        with self.calling("model", "jax.grad(loss)"):
            closed = jax.make_jaxpr(jax.grad(objective))(point, X, y)
            grads, found = NonFiniteSearch("backward", "apply_fn", gradient=True).run(
                closed, [*point, X, y]
            )
        return found or self._nonfinite_gradient(grads)

    def _nonfinite_gradient(self, grads: Sequence[Any]) -> NonFinite | None:
        """The first trainable tensor whose gradient holds NaN/Inf, when no equation was."""
        for name, grad in zip(self.names, grads):
            bad, total = nonfinite_count(grad)
            if bad:
                return NonFinite("backward", name, "gradient", bad, total)
        return None

    def _nonfinite_eagerly(
        self,
        forward: Callable[..., Any],
        loss: Callable[..., Any],
        objective: Callable[..., Any],
        point: list[Any],
        batch: Batch,
        mode: Mode,
    ) -> NonFinite | None:
        """The stage that first gives NaN/Inf, for a function that cannot be traced."""
        where = "apply_fn (it cannot be traced, so no single operation is named)"
        self.count(forward=1)
        out = forward(point, batch.X)
        bad, total = nonfinite_count(out)
        if bad:
            return NonFinite("forward", where, "apply_fn(params, X)", bad, total)
        if nonfinite_count(loss(out, batch.y, point))[0]:
            return NonFinite("loss", "the loss", getattr(self.loss_fn, "__name__", "loss"))
        if mode != "train":
            return None
        self.count(forward=1, backward=1)
        with self.calling("model", "jax.grad(loss)"):
            grads = jax.grad(objective)(point, batch.X, batch.y)
        return self._nonfinite_gradient(grads)

    # -- gradient check ----------------------------------------------------------------
    @contextmanager
    def objective(self, batch: Batch, *, dtype: str = "float64") -> Iterator[_Objective]:
        self.require_isolated("objective")
        if dtype != "float64":
            raise ValueError(f"the jax objective runs in float64, not {dtype}")
        with _x64():
            yield _Objective(self, batch)

    # -- training ----------------------------------------------------------------------
    @contextmanager
    def trainer(
        self,
        batch: Batch,
        *,
        lr: float | None = None,
        default_lr: float = 1e-3,
        restore: bool = False,
    ) -> Iterator[_Trainer]:
        """Every trainer steps copies of its own (``restore`` has nothing to put back)."""
        self.require_isolated("trainer")
        yield _Trainer(self, batch, lr, default_lr)

    # -- activations -------------------------------------------------------------------
    def _capture_layers(self, rows: int, bins: int) -> list[LayerRecord]:
        recorder = JaxprRecorder(self._leaf_names, dict(zip(self._leaf_names, self._leaves)), bins)
        leaves = jax.tree_util.tree_leaves(self.params)
        left = rows
        for batch in self.batches:
            if left <= 0:
                break
            X = batch.X[:left]
            closed = jax.make_jaxpr(self._apply)(self.params, X)
            self.count(forward=1)
            with self.calling("model", "apply_fn(params, X)"):
                recorder.run(closed, [*leaves, X])
            left -= len(batch)
        self._matrices = recorder.matrices
        return recorder.layers()

    # -- batch normalization -----------------------------------------------------------
    def norm_layers(self) -> list[NormLayer]:
        return []

    def running_statistics(self) -> dict[str, tuple[Any, Any]] | None:
        """None: a subject is a pure ``apply_fn(params, X)``, with no train/eval mode and
        no mutable collection (flax's ``batch_stats``) that a forward could update."""
        self.require_isolated("running_statistics")
        return None

    def warm(self, batches: Sequence[Batch]) -> None:
        self.require_isolated("warm")  # no running statistics to warm

    def ownership(self) -> Ownership | None:
        self.require_isolated("ownership")
        return None  # optax transforms the whole pytree of trainable leaves

    _matrices: dict[str, Any] | None = None

    def weights(self) -> dict[str, Any]:
        """Learned from the capture pass (how each leaf is multiplied in); one pass of a
        single row when no capture ran yet. Leaves only a gather reads (embeddings) are
        not weight matrices."""
        if self._matrices is None:
            self.capture(rows=1, bins=2)
        return dict(self._matrices or {})


def _float64(x: jax.Array) -> jax.Array:
    return jnp.asarray(np.asarray(x, dtype=np.float64)) if is_float(x) else x


class _Objective:
    """The loss on one batch as a float64 function of copies of the trainable leaves."""

    note = ""
    resolution = 2.0**-52  # float64 throughout
    _sides: Callable[..., Any] | None = None  # sides()'s program, compiled on first use

    def __init__(self, session: JaxSession, batch: Batch) -> None:
        self.session = session
        self.names = list(session.names)
        leaves = [session._leaves[i] for i in session._trainable]
        self.note = float64_note(str(leaf.dtype) for leaf in leaves)
        self.base = [_float64(leaf) for leaf in leaves]
        self.shapes = {n: tuple(b.shape) for n, b in zip(self.names, self.base)}
        self.index = {n: i for i, n in enumerate(self.names)}
        self.X, self.y = _float64(batch.X), _float64(batch.y)
        self._value = jit_or_eager(self._loss)

    @property
    def strength(self) -> float | None:
        """The session's current strength: a check may set another one between calls."""
        return self.session._strength_arg()

    def _loss(self, point: list[jax.Array], X: jax.Array, y: jax.Array, strength: Any) -> jax.Array:
        params = self.session._assemble(point)
        return self.session._loss(self.session._apply(params, X), y, params, strength)

    def values(self) -> dict[str, Any]:
        return {n: np.array(b, dtype=np.float64) for n, b in zip(self.names, self.base)}

    def move(self, shifts: Mapping[str, Any]) -> None:
        for name, shift in shifts.items():
            i = self.index[name]
            self.base[i] = self.base[i] + jnp.asarray(shift, dtype=jnp.float64)

    def value_and_grad(self) -> tuple[float, dict[str, Any]]:
        """Loss and gradients from one trace of ``jax.value_and_grad``. A gradient that
        depends on no input and is all zeros is one that no gradient reached (``None``,
        as in torch): ``stop_gradient`` or an unused parameter."""
        self.session.count(forward=1, backward=1)
        args = (self.base, self.X, self.y, self.strength)
        grad_fn = jax.value_and_grad(self._loss)
        dependent: list[bool] | None = None
        with self.session.calling("model", "jax.value_and_grad(loss)"):
            try:
                closed = jax.make_jaxpr(grad_fn)(*args)
            except Exception as exc:
                if not untraceable(exc):
                    raise
                loss, grads = grad_fn(*args)
            else:
                loss, *grads = jaxpr_as_fun(closed)(*jax.tree_util.tree_leaves(args))
                dependent = _depends_on_inputs(closed.jaxpr)[1:]
        found: dict[str, Any] = {}
        for i, (name, grad) in enumerate(zip(self.names, grads)):
            g = np.array(grad, dtype=np.float64)
            unreached = dependent is not None and not dependent[i] and not g.any()
            found[name] = None if unreached else g
        return float(loss), found

    def value(self, shifts: Mapping[str, Any], scale: float = 1.0) -> float:
        point = list(self.base)
        for name, shift in shifts.items():
            i = self.index[name]
            point[i] = point[i] + scale * jnp.asarray(shift, dtype=jnp.float64)
        self.session.count(forward=1)
        return float(self._value(point, self.X, self.y, self.strength))

    def sides(self, shifts: Mapping[str, Any], h: float) -> Sides:
        """The loss at +h and -h times ``shifts`` and the winners of its non-smooth
        operations compared between the two (:mod:`nndiag.backends.jax.kinks`), from one
        compiled program: one trace of the loss, evaluated at both points. A loss that
        cannot be traced gets two :meth:`value` calls and unknown crossings."""
        up, down = list(self.base), list(self.base)
        for name, shift in shifts.items():
            i = self.index[name]
            step = jnp.asarray(shift, dtype=jnp.float64)
            up[i] = up[i] + h * step  # as value() builds them: the same numbers
            down[i] = down[i] + (-h) * step
        if self._sides is None:
            loss = self._loss
            self._sides = jit_or_eager(lambda *args: three_points(loss, *args))
        try:
            found = self._sides(self.base, up, down, self.X, self.y, self.strength)
        except Exception as exc:
            if not untraceable(exc):
                raise
            self._sides = lambda *args: None  # Python control flow on values: no jaxpr
            found = None
        if found is None:
            return Sides(self.value(shifts, h), self.value(shifts, -h), None)
        high, low, changed, up_changed, down_changed = found
        self.session.count(forward=2)  # the base point's winners come along: not counted
        return Sides(float(high), float(low), int(changed), int(up_changed), int(down_changed))


def _depends_on_inputs(jaxpr: Any, inputs: Sequence[bool] | None = None) -> list[bool]:
    """For each output of ``jaxpr``: does it depend on any input? Entering call-like
    sub-jaxprs; any other equation is assumed to mix all its inputs into all outputs."""
    marked: set[Any] = {v for v, d in zip(jaxpr.invars, inputs or [True] * len(jaxpr.invars)) if d}

    def dep(atom: Any) -> bool:
        return isinstance(atom, Var) and atom in marked

    for eqn in jaxpr.eqns:
        ins = [dep(a) for a in eqn.invars]
        sub = subjaxpr(eqn)
        if sub is not None:
            outs = _depends_on_inputs(sub[0], ins)
        else:
            outs = [any(ins)] * len(eqn.outvars)
        marked.update(v for v, d in zip(eqn.outvars, outs) if d)
    return [dep(a) for a in jaxpr.outvars]


class _Trainer:
    """Steps copies of the trainable leaves; the step is compiled once per check."""

    def __init__(
        self, session: JaxSession, batch: Batch, lr: float | None, default_lr: float
    ) -> None:
        self.session = session
        self.batch = batch
        self.params = [jnp.asarray(session._leaves[i]) for i in session._trainable]
        self.start = [np.array(p) for p in self.params]
        self.classify = session.task.kind == "classification"
        self.strength = session._strength_arg()
        self.steps = 0
        given = session.subject.optimizer
        self.optax = given
        self.lr: float | None = None
        if given is None:
            self.lr = default_lr if lr is None else lr
            self.m = [jnp.zeros_like(p) for p in self.params]
            self.v = [jnp.zeros_like(p) for p in self.params]
            self.optimizer = (
                f"Adam(lr={self.lr:g}) (nndiag's default)"
                if lr is None
                else f"Adam(lr={lr:g}) (learning rate set by the check)"
            )
        else:
            with self.session.calling("optimizer", "optimizer.init(params)"):
                self.state = given.init(self.params)
            self._update = jit_or_eager(given.update)
            self.optimizer = f"{type(given).__name__} (the subject's optax optimizer)"
            if lr is not None:
                self.optimizer = self._set_lr(lr)
            self.lr = self._read_lr()
        self._grad = jit_or_eager(jax.value_and_grad(self._loss, has_aux=True))

    def _set_lr(self, lr: float) -> str:
        """Replace the learning rate of an optax optimizer built with
        ``optax.inject_hyperparams`` (the only kind whose rate can be set from outside)."""
        name = type(self.optax).__name__
        hyperparams = getattr(self.state, "hyperparams", None)
        if isinstance(hyperparams, dict) and "learning_rate" in hyperparams:
            current = jnp.asarray(hyperparams["learning_rate"])
            hyperparams["learning_rate"] = jnp.asarray(lr, dtype=current.dtype)
            return (
                f"{name}(lr={lr:g}) (the subject's optax optimizer, learning rate set by the check)"
            )
        return (
            f"{name} (the subject's optax optimizer; its learning rate could not be set to "
            f"{lr:g}: build it with optax.inject_hyperparams to allow that)"
        )

    def _loss(
        self, trainable: list[jax.Array], X: jax.Array, y: jax.Array, strength: Any
    ) -> tuple[jax.Array, jax.Array]:
        params = self.session._assemble(trainable)
        out = self.session._apply(params, X)
        hits = jnp.argmax(out, axis=-1) == y if self.classify else jnp.zeros(1)
        return self.session._loss(out, y, params, strength), jnp.mean(hits)

    def step(self, *, measure: bool = False, batch: Batch | None = None) -> Step:
        batch = self.batch if batch is None else batch
        before = list(self.params)
        self.session.count(forward=1)
        (loss, hits), grads = self._grad(self.params, batch.X, batch.y, self.strength)
        value = float(loss)
        accuracy = float(hits) if self.classify else None
        if math.isfinite(value):
            self.session.count(backward=1)
            self.steps += 1
            if self.optax is None:
                self.params, self.m, self.v = _adam(
                    self.params, grads, self.m, self.v, float(self.steps), self.lr
                )
            else:
                with self.session.calling("optimizer", "optimizer.update(grads, state, params)"):
                    updates, self.state = self._update(grads, self.state, self.params)
                self.params = [p + u.astype(p.dtype) for p, u in zip(self.params, updates)]
        if not measure:
            return Step(value, accuracy)
        names = self.session.names
        old = [np.asarray(p, dtype=np.float64) for p in before]
        updates_norm = {
            n: float(np.linalg.norm(np.asarray(p, dtype=np.float64) - w))
            for n, p, w in zip(names, self.params, old)
        }
        weights = {n: float(np.linalg.norm(w)) for n, w in zip(names, old)}
        grad_norms: dict[str, float | None] = {
            n: float(np.linalg.norm(np.asarray(g, dtype=np.float64))) for n, g in zip(names, grads)
        }
        return Step(value, accuracy, updates_norm, weights, grad_norms)

    def evaluate(self, batch: Batch) -> Evaluation:
        # The trained leaves live here, not in the session: assemble them into the pytree.
        session = self.session
        session.count(forward=1)
        params = session._assemble(self.params)
        out = session._apply(params, batch.X)
        loss = float(session._loss(out, batch.y, params, self.strength))
        shown = np.asarray(out, dtype=np.float64)
        if session.task.kind == "classification" and shown.ndim > 2:
            shown = np.moveaxis(shown, -1, 1)  # classes on axis 1 across the seam
        return Evaluation(loss, shown)

    def unchanged(self) -> list[str]:
        return [
            n
            for n, p, s in zip(self.session.names, self.params, self.start)
            if np.array_equal(np.asarray(p), s)
        ]

    def frozen_changed(self) -> list[str]:
        return []  # only floating leaves are stepped; the others are passed through as is

    def _read_lr(self) -> float | None:
        """The optax optimizer's rate, readable only from ``inject_hyperparams`` state (a
        rate the check set there reads back as set); None without it."""
        hyperparams = getattr(self.state, "hyperparams", None)
        if not isinstance(hyperparams, dict) or "learning_rate" not in hyperparams:
            return None
        value = jnp.asarray(hyperparams["learning_rate"])
        if value.size != 1:
            return None
        return float(value)

    def capture(self, batch: Batch, *, bins: int) -> list[LayerRecord]:
        session = self.session
        params = session._assemble(self.params)  # this trainer's copies, as trained
        leaves = jax.tree_util.tree_leaves(params)
        recorder = JaxprRecorder(session._leaf_names, dict(zip(session._leaf_names, leaves)), bins)
        closed = jax.make_jaxpr(session._apply)(params, batch.X)
        session.count(forward=1)
        with session.calling("model", "apply_fn(params, X)"):
            recorder.run(closed, [*leaves, batch.X])
        return recorder.layers()
