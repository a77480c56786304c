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

from nndiag.backends import PER_SAMPLE_ROWS, Batch, LayerRecord, SessionBase, Task
from nndiag.backends.jax.capture import JaxprRecorder, is_array, is_float, subjaxpr
from nndiag.backends.jax.compile import jit_or_eager, untraceable
from nndiag.backends.state import NumberSnapshot, holders, rng_guard
from nndiag.errors import InvalidSubject, ModelError, NndiagError, describe

try:  # jax >= 0.4.30 exposes the jaxpr types here; older versions in jax.core
    from jax.extend.core import Var, jaxpr_as_fun
except ImportError:  # pragma: no cover - depends on the installed jax
    from jax.core import Var, jaxpr_as_fun  # type: ignore[no-redef,attr-defined]

__all__ = ["JaxSession", "knob_form"]


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
    step_size: float,
    root_bc2: float,
    b1: float,
    b2: float,
    eps: float,
) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array]]:
    """One step of torch.optim.Adam's update rule (bias corrections folded in)."""
    m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads)]
    v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads)]
    new = [
        p - (step_size * mi / (jnp.sqrt(vi) / root_bc2 + eps)).astype(p.dtype)
        for p, mi, vi in zip(params, m, v)
    ]
    return new, m, v


class JaxSession(SessionBase):
    """One diagnose run of one subject on the JAX backend."""

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
        try:
            out = self.apply_fn(params, X)
        except NndiagError:
            raise
        except Exception as exc:
            raise ModelError("model", "apply_fn(params, X)", exc) from exc
        if not is_array(out):
            raise InvalidSubject(
                "model",
                f"apply_fn returned {describe(out)}, not an array",
                "return the logits/predictions array from apply_fn, or wrap "
                "it in a function that does",
            )
        return jnp.asarray(out)

    def _data_loss(self, out: jax.Array, y: jax.Array) -> jax.Array:
        try:
            loss = self.loss_fn(out, y)
        except NndiagError:
            raise
        except Exception as exc:
            raise ModelError("loss", "loss(outputs, y)", exc) from exc
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
        try:
            value = self._penalty(params)
        except NndiagError:
            raise
        except Exception as exc:
            raise ModelError("regularization", "regularization(params)", exc) from exc
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
            with rng_guard():
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
        batch = self.batches[0]
        try:  # the output's shape from a trace: checked before the loss can trip on it
            out = jax.eval_shape(self._apply, self.params, batch.X)
        except Exception as exc:
            if not untraceable(exc):
                raise
            out = self._apply(self.params, batch.X)
        if not out.shape or out.shape[0] != len(batch.y):
            rows = out.shape[0] if out.shape else 0
            raise InvalidSubject(
                "model",
                f"output has {rows} rows for {len(batch.y)} samples",
                "return one output row per input sample",
            )
        if is_float(batch.y):
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
        self._measure(batch)  # runs the loss on real outputs: its errors surface here
        return self.task

    _concat = staticmethod(jnp.concatenate)

    def set_regularization(self, strength: float) -> None:
        if self._setter is None:
            self._strength = float(strength)
            return
        try:
            self._setter(self.model, strength)
        except Exception as exc:
            raise ModelError("regularization", f"regularization(model, {strength:g})", exc) from exc

    def _measure(self, batch: Batch) -> dict[str, Any]:
        """The loss, per-sample losses and the losses of uninformative outputs in one
        pass (``initial_loss`` asks for all of them on one batch). Eager: one-off passes
        share JAX's per-operation compilation cache across models."""
        prior = None
        if self.task.kind == "classification":
            counts = np.asarray(self.task.label_counts, dtype=np.float64)
            prior = np.log(np.maximum(counts, 1e-9) / counts.sum()).astype(np.float32)
        self._forward += 1
        return self._measure_pass(self.params, batch.X, batch.y, self._strength_arg(), prior)

    def _measure_pass(
        self, params: Any, X: jax.Array, y: jax.Array, strength: Any, prior: Any
    ) -> dict[str, Any]:
        out = self._apply(params, X)
        penalty = jnp.asarray(self._penalty_term(params, strength))
        found = {
            "out": out,
            "loss": self._data_loss(out, y) + penalty,
            "penalty": penalty,
            "uniform": self._loss(jnp.zeros_like(out), y, params, strength),
        }
        if prior is not None:  # classes on the last axis
            logits = jnp.broadcast_to(prior.astype(out.dtype), out.shape)
            found["prior"] = self._loss(logits, y, params, strength)
        elif out.size == y.size:
            mean = jnp.broadcast_to(y.mean(axis=0, keepdims=True), y.shape)
            found["mean"] = self._loss(
                mean.reshape(out.shape).astype(out.dtype), y, params, strength
            )
        n = min(len(y), PER_SAMPLE_ROWS)
        try:  # one vectorized pass; a loss that vmap cannot take is tried row by row
            found["per_sample"] = jax.vmap(self._row_loss)(out[:n], y[:n]) + penalty
        except Exception:
            pass
        return found

    def losses(self, batch: Batch, per_sample: bool = True) -> tuple[float, Any]:
        found = self._measure(batch)
        mean = float(found["loss"])
        if not per_sample:
            return mean, None
        if "per_sample" in found:
            return mean, np.asarray(found["per_sample"], dtype=np.float64)
        out = found["out"]
        try:
            rows = [
                float(self._row_loss(out[i], batch.y[i]))
                for i in range(min(len(batch), PER_SAMPLE_ROWS))
            ]
        except Exception:  # a loss that cannot take single rows: no noise estimate
            return mean, None
        return mean, np.asarray(rows) + float(found["penalty"])

    def baselines(self, batch: Batch) -> dict[str, float]:
        found = self._measure(batch)
        return {k: float(found[k]) for k in ("uniform", "prior", "mean") if k in found}

    # -- gradient check ----------------------------------------------------------------
    @contextmanager
    def objective(self, batch: Batch) -> Iterator[_Objective]:
        with _x64():
            yield _Objective(self, batch)

    # -- training ----------------------------------------------------------------------
    @contextmanager
    def trainer(self, batch: Batch) -> Iterator[_Trainer]:
        yield _Trainer(self, batch)

    # -- activations -------------------------------------------------------------------
    def _capture_layers(self) -> list[LayerRecord]:
        recorder = JaxprRecorder(
            self._leaf_names, dict(zip(self._leaf_names, self._leaves)), self.config.histogram_bins
        )
        leaves = jax.tree_util.tree_leaves(self.params)
        left = self.config.max_samples
        for batch in self.batches:
            if left <= 0:
                break
            X = batch.X[:left]
            closed = jax.make_jaxpr(self._apply)(self.params, X)
            self._forward += 1
            try:
                recorder.run(closed, [*leaves, X])
            except NndiagError:
                raise
            except Exception as exc:
                raise ModelError("model", "apply_fn(params, X)", exc) from exc
            left -= len(batch)
        return recorder.layers()


def _float64(x: jax.Array) -> jax.Array:
    return jnp.asarray(np.asarray(x, dtype=np.float64)) if is_float(x) else x


class _Objective:
    """The loss on one batch as a float64 function of copies of the trainable leaves."""

    note = ""

    def __init__(self, session: JaxSession, batch: Batch) -> None:
        self.session = session
        self.names = list(session.names)
        leaves = [session._leaves[i] for i in session._trainable]
        promoted = sorted({str(leaf.dtype) for leaf in leaves} - {"float64"})
        if promoted:
            self.note = f"Parameters are {', '.join(promoted)}: checked on a float64 copy."
        self.base = [_float64(leaf) for leaf in leaves]
        self.shapes = {n: tuple(b.shape) for n, b in zip(self.names, self.base)}
        self.index = {n: i for i, n in enumerate(self.names)}
        self.X, self.y = _float64(batch.X), _float64(batch.y)
        self.strength = session._strength_arg()
        self._value = jit_or_eager(self._loss)

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
        self.session._forward += 1
        self.session._backward += 1
        args = (self.base, self.X, self.y, self.strength)
        grad_fn = jax.value_and_grad(self._loss)
        dependent: list[bool] | None = None
        try:
            try:
                closed = jax.make_jaxpr(grad_fn)(*args)
            except Exception as exc:
                if not untraceable(exc):
                    raise
                loss, grads = grad_fn(*args)
            else:
                loss, *grads = jaxpr_as_fun(closed)(*jax.tree_util.tree_leaves(args))
                dependent = _depends_on_inputs(closed.jaxpr)[1:]
        except NndiagError:
            raise
        except Exception as exc:
            raise ModelError("model", "jax.value_and_grad(loss)", exc) from exc
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
        self.session._forward += 1
        return float(self._value(point, self.X, self.y, self.strength))


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

    def __init__(self, session: JaxSession, batch: Batch) -> None:
        self.session = session
        self.batch = batch
        self.params = [jnp.asarray(session._leaves[i]) for i in session._trainable]
        self.start = [np.array(p) for p in self.params]
        self.classify = session.task.kind == "classification"
        self.strength = session._strength_arg()
        self.steps = 0
        given = session.subject.optimizer
        self.optax = given
        if given is None:
            lr = session.config.overfit_lr
            self.lr = lr
            self.m = [jnp.zeros_like(p) for p in self.params]
            self.v = [jnp.zeros_like(p) for p in self.params]
            self.optimizer = f"Adam(lr={lr:g}) (nndiag's default)"
        else:
            try:
                self.state = given.init(self.params)
            except Exception as exc:
                raise ModelError("optimizer", "optimizer.init(params)", exc) from exc
            self._update = jit_or_eager(given.update)
            self.optimizer = f"{type(given).__name__} (the subject's optax optimizer)"
        self._grad = jit_or_eager(jax.value_and_grad(self._loss, has_aux=True))

    def _loss(
        self, trainable: list[jax.Array], X: jax.Array, y: jax.Array, strength: Any
    ) -> tuple[jax.Array, jax.Array]:
        params = self.session._assemble(trainable)
        out = self.session._apply(params, X)
        hits = jnp.argmax(out, axis=-1) == y if self.classify else jnp.zeros(1)
        return self.session._loss(out, y, params, strength), jnp.mean(hits)

    def step(self) -> tuple[float, float | None]:
        self.session._forward += 1
        (loss, hits), grads = self._grad(self.params, self.batch.X, self.batch.y, self.strength)
        value = float(loss)
        accuracy = float(hits) if self.classify else None
        if math.isfinite(value):
            self.session._backward += 1
            self.steps += 1
            if self.optax is None:
                b1, b2 = 0.9, 0.999
                self.params, self.m, self.v = _adam(
                    self.params,
                    grads,
                    self.m,
                    self.v,
                    self.lr / (1 - b1**self.steps),
                    math.sqrt(1 - b2**self.steps),
                    b1,
                    b2,
                    1e-8,
                )
            else:
                try:
                    updates, self.state = self._update(grads, self.state, self.params)
                except NndiagError:
                    raise
                except Exception as exc:
                    raise ModelError(
                        "optimizer", "optimizer.update(grads, state, params)", exc
                    ) from exc
                self.params = [p + u.astype(p.dtype) for p, u in zip(self.params, updates)]
        return value, accuracy

    def unchanged(self) -> list[str]:
        return [
            n
            for n, p, s in zip(self.session.names, self.params, self.start)
            if np.array_equal(np.asarray(p), s)
        ]
