"""JAX backend: a model is a pair ``(apply_fn, params)``.

``apply_fn(params, X)`` returns the outputs; ``params`` is any pytree of float arrays (a
dict, nested lists, a flax ``variables`` dict). Tensors are named after their pytree path:
``{"layers": [{"W": ...}]}`` gives ``layers/0/W``.

JAX arrays are immutable, so checks never need to undo a write: each one works on its own
pytrees assembled from the user's leaves, and the user's ``params`` object is never
touched. A snapshot still restores what a check could change on the user's side: the
numbers a regularization setter writes, the global ``numpy``/``random`` generators and the
``jax_enable_x64`` flag. The gradient check runs in float64 inside ``jax.enable_x64``
only; nothing outside that context sees 64-bit mode.

Conventions that differ from the torch backend because JAX differs:

* Loss: ``loss(outputs, y) -> scalar``. Default: softmax cross-entropy over the last axis
  for integer labels (mean over the batch), mean squared error for float targets. Class
  scores sit on the last axis (the JAX convention), so ``(N, C)`` outputs behave as in
  torch and ``(N, T, C)`` sequence outputs take ``(N, T)`` labels.
* Regularization: the loss cannot see the parameters a check differentiates, so the
  recommended knob is a penalty: ``regularization=penalty`` with ``penalty(params) ->
  scalar`` (one parameter). The loss nndiag uses is then ``loss(outputs, y) + strength *
  penalty(params)``; ``strength`` is 1 (the penalty as written, with its own coefficient)
  unless a check sets it: ``initial_loss`` and ``overfit_small`` set 0,
  ``regularization_loss`` sweeps ``Config.regularization_strengths``. A two-parameter
  callable keeps the protocol's meaning, ``regularization(model, strength) -> None``: it
  receives the ``(apply_fn, params)`` pair and sets the strength the loss reads from a
  holder it shares with the loss (a dict or an attribute); the numbers in that holder are
  restored after every check. A string names nothing on a JAX model and is refused.
* Optimizer for ``overfit_small``: Adam at ``Config.overfit_lr`` written here in
  ``jax.numpy`` (no optax needed), or an optax ``GradientTransformation`` passed as
  ``optimizer=`` (anything with ``init`` and ``update``).
* Speed: the passes a check repeats (a training step, the float64 loss of the gradient
  check) are compiled once per check, and a program compiled for another check with the
  same text (another seed, the same architecture) is reused. Python state the loss reads
  (a regularization holder) is read when they are traced; checks only change it between
  these contexts, never inside one. One-off passes run eagerly, as does a function that
  cannot be traced abstractly (Python control flow on array values).
* Activation capture does not touch the user's code: ``apply_fn`` is traced with
  ``jax.make_jaxpr`` and the jaxpr is evaluated by a small interpreter that records the
  outputs of ``tanh``, ``logistic`` (sigmoid) and ``max(x, 0)`` (ReLU), entering the
  sub-jaxprs of ``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat`` and
  ``closed_call`` (not the bodies of ``lax.scan`` or other loops). ``jax.nn`` activations
  built from several operations are recorded whole under their own name (``gelu``,
  ``silu``, ``elu``, ``leaky_relu``, ``softplus``, ...); the primitives inside them (the
  ``tanh`` inside ``gelu``) are not layers of the model, and neither is ``max(x, 0)``
  written inside an installed library (a clamp in a normalization layer). Layers are named
  by kind in the order they run (``relu``, ``relu#2``), under the ``jax.named_scope`` or
  flax module they run in (``MLP/relu``); the weight feeding a layer is the last parameter
  leaf multiplied in by a ``dot_general`` or ``conv_general_dilated`` before it.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import sysconfig
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nndiag.backends import (
    PER_SAMPLE_ROWS,
    Batch,
    LayerRecord,
    SessionBase,
    Task,
    read_items,
    unpack,
    validate_arrays,
)
from nndiag.backends.capture import Accumulator
from nndiag.backends.state import NumberSnapshot, holders, rng_guard
from nndiag.errors import InvalidSubject, ModelError, NndiagError, describe

try:  # jax >= 0.4.30 exposes the jaxpr types here; older versions in jax.core
    from jax.extend.core import Literal, Var, jaxpr_as_fun
except ImportError:  # pragma: no cover - depends on the installed jax
    from jax.core import Literal, Var, jaxpr_as_fun  # type: ignore[no-redef,attr-defined]

__all__ = ["BACKEND", "JaxBackend", "JaxSession"]

_TRACE_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(jax.errors, name)
    for name in (
        "ConcretizationTypeError",
        "TracerArrayConversionError",
        "TracerBoolConversionError",
        "TracerIntegerConversionError",
    )
    if hasattr(jax.errors, name)
)

# Primitives whose output is an activation, and jax.nn functions jitted under their name
# (recorded whole: their insides are not layers). Kinds follow the torch backend's names.
_PRIMITIVE_KINDS = {"tanh": "tanh", "logistic": "sigmoid"}
_NAMED_KINDS = {
    "relu": "relu",
    "relu6": "relu",
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "elu": "elu",
    "celu": "celu",
    "selu": "selu",
    "leaky_relu": "leaky_relu",
    "softplus": "softplus",
    "mish": "mish",
    "hard_tanh": "hardtanh",
    "hard_swish": "hardswish",
    "hard_silu": "hardswish",
}
# jax.nn activations that are not primitives, when traced inline rather than jitted.
_INLINE_KINDS = {k: v for k, v in _NAMED_KINDS.items() if k not in ("relu", "relu6")}
# The jax.nn function a primitive may come from and still be that activation.
_OWN_FUNCTION = {"tanh": ("tanh",), "sigmoid": ("sigmoid",), "relu": ("relu", "relu6")}
# Primitives that pass a value through (a weight transposed, a zero broadcast).
_SAME_VALUE = {
    "transpose",
    "reshape",
    "convert_element_type",
    "copy",
    "copy_p",
    "squeeze",
    "expand_dims",
}
_WEIGHT_OPS = ("dot_general", "conv_general_dilated")
_CALLS = {
    "jit",
    "pjit",
    "closed_call",
    "core_call",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
    "remat",
    "remat2",
    "checkpoint",
}

_JAX_DIR = os.path.dirname(jax.__file__) + os.sep
_NN_FUNCTIONS = os.path.join("nn", "functions.py")
_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep
_INSTALLED = ("site-packages", "dist-packages")  # path parts of installed libraries


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, jax.Array))


def _is_float(x: Any) -> bool:
    """A floating array (bfloat16 included)."""
    return bool(jnp.issubdtype(getattr(x, "dtype", type(x)), jnp.inexact))


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
    from jax.experimental import enable_x64  # jax < 0.5

    return enable_x64()


def _x64_enabled() -> bool:
    return bool(jax.config.jax_enable_x64)


def _knob_form(knob: Any) -> str:
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


class JaxBackend:
    """Adapter for ``(apply_fn, params)`` pairs."""

    name = "jax"

    def accepts(self, model: Any) -> bool:
        if not (isinstance(model, tuple) and len(model) == 2 and callable(model[0])):
            return False
        try:
            leaves = jax.tree_util.tree_leaves(model[1])
        except Exception:  # an object jax cannot flatten is not a params pytree
            return False
        return bool(leaves) and all(map(_is_array, leaves))

    def default_name(self, model: Any) -> str:
        """A subject name for reports: the flax module's class for ``module.apply``, else
        the function's name."""
        apply_fn = model[0]
        owner = getattr(apply_fn, "__self__", None)
        if owner is not None:
            return type(owner).__name__
        name = getattr(apply_fn, "__name__", "")
        return name if name.isidentifier() else "jax_model"

    def validate_model(self, model: Any, *, optimizer: Any, regularization: Any) -> None:
        leaves = jax.tree_util.tree_leaves(model[1])
        if not any(_is_float(leaf) for leaf in leaves):
            raise InvalidSubject(
                "model",
                "params hold no floating-point array",
                "pass the trainable parameters (a pytree of float arrays) "
                "as the second item of (apply_fn, params)",
            )
        if optimizer is not None and not (
            callable(getattr(optimizer, "init", None))
            and callable(getattr(optimizer, "update", None))
        ):
            raise InvalidSubject(
                "optimizer",
                f"expected an optax GradientTransformation, got {describe(optimizer)}",
                "pass optimizer=optax.adam(1e-3), or leave it out for Adam at Config.overfit_lr",
            )
        if isinstance(regularization, str):
            raise InvalidSubject(
                "regularization",
                f"a JAX model has no attribute {regularization!r} to set",
                "pass penalty(params) -> scalar (nndiag adds strength * penalty to the loss), "
                "or a function (model, strength) -> None that sets what your loss reads",
            )
        if regularization is not None and _knob_form(regularization) == "invalid":
            raise InvalidSubject(
                "regularization",
                f"{describe(regularization)} takes no argument",
                "pass penalty(params) -> scalar, or a function (model, strength) -> None",
            )

    def read_batches(self, model: Any, data: Any, limit: int) -> list[Batch]:
        """Read up to ``limit`` batches without touching the global RNGs (a shuffling
        iterator may draw from them)."""
        items = read_items(data, limit, _is_array, rng_guard())
        return [self._batch(item, i) for i, item in enumerate(items)]

    def _batch(self, item: Any, index: int) -> Batch:
        where, X, y = unpack(item, index)
        for arg, value in (("X", X), ("y", y)):
            if not _is_array(value):
                raise InvalidSubject(
                    where,
                    f"{arg} is {describe(value)}, not an array",
                    f"convert {arg} with jnp.asarray or np.asarray",
                )
        validate_arrays(
            where, X, y, lambda v: int((~np.isfinite(np.asarray(v))).sum()) if _is_float(v) else 0
        )
        return Batch(jnp.asarray(X), jnp.asarray(y))

    def session(self, subject: Any, config: Any) -> JaxSession:
        return JaxSession(subject, config)


BACKEND = JaxBackend()


def _cross_entropy(outputs: jax.Array, y: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(outputs, axis=-1)
    return -jnp.take_along_axis(logp, y[..., None].astype(jnp.int32), axis=-1).mean()


def _mse(outputs: jax.Array, y: jax.Array) -> jax.Array:
    if outputs.shape != y.shape and outputs.size == y.size:
        outputs = outputs.reshape(y.shape)  # (N, 1) outputs for (N,) targets
    return jnp.mean((outputs - y) ** 2)


def _untraceable(exc: BaseException) -> bool:
    """Whether ``exc`` says user code needs concrete values (Python control flow on array
    values): such code runs eagerly, where only the differentiated arguments are traced."""
    original = exc.original if isinstance(exc, ModelError) else exc
    return isinstance(original, _TRACE_ERRORS)


# Compiled programs by their lowered text. Every check traces the user's functions afresh
# (they may read Python state), but the same architecture with other weights (another
# seed, another subject of one test suite) lowers to the same program: compiling it again
# would cost more than the check itself on small models. The text is the whole program,
# constants included, so a hit is the very same computation.
_EXECUTABLES: OrderedDict[tuple[str, str], Any] = OrderedDict()
_MAX_EXECUTABLES = 32


def _compiled(jitted: Any, args: tuple[Any, ...]) -> Any:
    lowered = jitted.lower(*args)
    # The arguments' structure, types and devices too: unused arguments are pruned from the
    # text, and an executable is bound to the devices it was compiled for.
    devices = sorted(
        {
            str(d)
            for x in jax.tree_util.tree_leaves(args)
            if isinstance(x, jax.Array)
            for d in x.devices()
        }
    )
    text = f"{lowered.in_tree}\n{lowered.args_info}\n{devices}\n{lowered.as_text()}"
    key = (hashlib.sha256(text.encode()).hexdigest(), jax.default_backend())
    executable = _EXECUTABLES.get(key)
    if executable is None:
        executable = _EXECUTABLES[key] = lowered.compile()
        while len(_EXECUTABLES) > _MAX_EXECUTABLES:
            _EXECUTABLES.popitem(last=False)
    _EXECUTABLES.move_to_end(key)
    return executable


def _jit_or_eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled once per argument shapes; called eagerly from the first call that
    cannot be traced abstractly."""
    jitted = jax.jit(fn)
    executables: dict[Any, Any] = {}
    eager = False

    def call(*args: Any) -> Any:
        nonlocal eager
        if not eager:
            leaves, tree = jax.tree_util.tree_flatten(args)
            signature = (tree, tuple((np.shape(x), jnp.result_type(x)) for x in leaves))
            try:
                if signature not in executables:
                    executables[signature] = _compiled(jitted, args)
                return executables[signature](*args)
            except Exception as exc:
                if not _untraceable(exc):
                    raise
                eager = True
        return fn(*args)

    return call


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
        self.loss_fn = subject.loss or (_mse if _is_float(y) else _cross_entropy)
        knob = subject.regularization
        self.has_regularization = knob is not None
        self._penalty = knob if knob is not None and _knob_form(knob) == "penalty" else None
        self._setter = knob if knob is not None and self._penalty is None else None
        self._strength = 1.0
        self.framework = f"jax {jax.__version__}"
        flat, self._treedef = jax.tree_util.tree_flatten_with_path(self.params)
        self._leaves = [leaf for _, leaf in flat]
        self._leaf_names = [_path_name(path) for path, _ in flat]
        self._trainable = [i for i, leaf in enumerate(self._leaves) if _is_float(leaf)]
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
        if not _is_array(out):
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
        if not (_is_array(loss) or isinstance(loss, (int, float))) or jnp.size(loss) != 1:
            shape = tuple(loss.shape) if _is_array(loss) else describe(loss)
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
        scalar = _is_array(value) or isinstance(value, (int, float))
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
            if not _untraceable(exc):
                raise
            out = self._apply(self.params, batch.X)
        if not out.shape or out.shape[0] != len(batch.y):
            rows = out.shape[0] if out.shape else 0
            raise InvalidSubject(
                "model",
                f"output has {rows} rows for {len(batch.y)} samples",
                "return one output row per input sample",
            )
        if _is_float(batch.y):
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
        recorder = _Recorder(
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
        return recorder.stats.layers()


def _float64(x: jax.Array) -> jax.Array:
    return jnp.asarray(np.asarray(x, dtype=np.float64)) if _is_float(x) else x


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
        self._value = _jit_or_eager(self._loss)

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
                if not _untraceable(exc):
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
        sub = _subjaxpr(eqn)
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
            self._update = _jit_or_eager(given.update)
            self.optimizer = f"{type(given).__name__} (the subject's optax optimizer)"
        self._grad = _jit_or_eager(jax.value_and_grad(self._loss, has_aux=True))

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


# -- activation capture ----------------------------------------------------------------
def _subjaxpr(eqn: Any) -> tuple[Any, list[Any]] | None:
    """The (jaxpr, consts) a call-like equation runs on its own inputs, else None."""
    if eqn.primitive.name not in _CALLS:
        return None
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        inner = eqn.params.get(key)
        if inner is None:
            continue
        jaxpr, consts = (
            (inner.jaxpr, list(inner.consts)) if hasattr(inner, "consts") else (inner, [])
        )
        if len(jaxpr.invars) == len(eqn.invars) and len(jaxpr.outvars) == len(eqn.outvars):
            return jaxpr, consts
    return None


def _bind(eqn: Any, invals: list[Any]) -> list[Any]:
    """Apply one equation to its inputs, as ``jax.core.eval_jaxpr`` does."""
    got = eqn.primitive.get_bind_params(eqn.params)
    ctx = getattr(getattr(eqn, "ctx", None), "manager", None) or nullcontext()
    with ctx:
        if isinstance(got, tuple):  # jax < 0.7: (subfuns, params)
            subfuns, params = got
            out = eqn.primitive.bind(*subfuns, *invals, **params)
        else:
            out = eqn.primitive.bind(*invals, **got)
    return list(out) if eqn.primitive.multiple_results else [out]


@dataclass(frozen=True)
class _Origin:
    """Where an equation was traced: inside which ``jax.nn`` function (if any), called
    from which line, and whether that line is in an installed library."""

    function: str | None = None
    site: tuple[str, int] | None = None
    library: bool = False


def _origin(eqn: Any) -> _Origin:
    traceback = getattr(eqn.source_info, "traceback", None)
    if traceback is None:
        return _Origin()
    function = None
    for frame in traceback.frames:  # innermost first
        path = frame.file_name
        if path.startswith(_JAX_DIR):
            if function is None and path.endswith(_NN_FUNCTIONS):
                function = frame.function_name.rpartition(".")[2]
            continue
        installed = any(part in path for part in _INSTALLED)
        if path.startswith(_STDLIB) and not installed:
            continue  # contextlib, functools: not where the call was written
        return _Origin(function, (path, frame.line_num), installed)
    return _Origin(function)


def _name_stack(outer: str, eqn: Any) -> str:
    """Named scopes around an equation; transformation entries (``vmap(f)``) dropped."""
    parts = [p for p in str(eqn.source_info.name_stack).split("/") if p and "(" not in p]
    return "/".join([outer, *parts] if outer else parts)


@dataclass
class _Weight:
    name: str
    fan_in: int
    std: float
    channel_axis: int | None  # of the layer's output, for convolutions


class _Recorder:
    """Evaluate a traced forward pass equation by equation, handing every activation's
    output to the shared :class:`Accumulator` as it is produced (nothing the size of a
    batch is kept). Eager: one pass shares JAX's per-operation compilation cache with the
    session's other one-off passes."""

    def __init__(self, leaf_names: list[str], values: dict[str, Any], bins: int) -> None:
        self.leaf_names = leaf_names
        self.values = values  # the user's leaves by name: weight std comes from them
        self.stats = Accumulator(bins)
        self.seen: dict[str, int] = {}
        self.weight: _Weight | None = None
        self._worth: dict[int, bool] = {}

    def run(self, closed: Any, args: list[jax.Array]) -> None:
        self.seen, self.weight = {}, None  # names count from the start of each pass
        jaxpr = closed.jaxpr
        params = {v: n for v, n in zip(jaxpr.invars, self.leaf_names)}
        zeros = {v for v, c in zip(jaxpr.constvars, closed.consts) if not np.any(np.asarray(c))}
        self._eval(jaxpr, list(closed.consts), args, "", params, zeros)

    def _is_zero(self, atom: Any, zeros: set[Any]) -> bool:
        if isinstance(atom, Literal):
            return not np.any(np.asarray(atom.val))
        return atom in zeros

    def _worth_entering(self, jaxpr: Any) -> bool:
        """Whether a sub-jaxpr holds anything that could be an activation or a weight
        multiplied in (``jnp.einsum`` runs its ``dot_general`` inside a ``jit``)."""
        key = id(jaxpr)
        if key not in self._worth:
            self._worth[key] = False  # recursion guard
            found = False
            for eqn in jaxpr.eqns:
                name = eqn.primitive.name
                sub = _subjaxpr(eqn)
                if (
                    name in _PRIMITIVE_KINDS
                    or name in _WEIGHT_OPS
                    or name == "max"
                    or eqn.params.get("name") in _NAMED_KINDS
                    or (sub is not None and self._worth_entering(sub[0]))
                ):
                    found = True
                    break
            self._worth[key] = found
        return self._worth[key]

    def _eval(
        self,
        jaxpr: Any,
        consts: list[Any],
        args: list[Any],
        stack: str,
        params: dict[Any, str],
        zeros: set[Any],
    ) -> list[Any]:
        env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, args))

        def read(atom: Any) -> Any:
            return atom.val if isinstance(atom, Literal) else env[atom]

        # A jax.nn activation traced inline (gelu) spans several equations: its output is
        # the last equation of one call, recorded once the next equation is elsewhere.
        pending: tuple[Any, ...] | None = None
        for eqn in jaxpr.eqns:
            invals = [read(a) for a in eqn.invars]
            where = _name_stack(stack, eqn)
            sub = _subjaxpr(eqn)
            named = (
                _NAMED_KINDS.get(eqn.params.get("name", ""))
                if eqn.primitive.name in ("jit", "pjit")
                else None
            )
            if sub is not None and named is None and self._worth_entering(sub[0]):
                inner, inner_consts = sub
                outs = self._eval(
                    inner,
                    inner_consts,
                    invals,
                    where,
                    {
                        v: params[a]
                        for v, a in zip(inner.invars, eqn.invars)
                        if isinstance(a, Var) and a in params
                    },
                    {v for v, a in zip(inner.invars, eqn.invars) if self._is_zero(a, zeros)},
                )
            else:
                outs = _bind(eqn, invals)
            env.update(zip(eqn.outvars, outs))
            origin = _origin(eqn)
            call = (origin.function, origin.site) if origin.function in _INLINE_KINDS else None
            if pending is not None and pending[0] != call:
                self._record(*pending[1:])
                pending = None
            if call is not None:
                pending = (call, _INLINE_KINDS[origin.function], outs[0], where)
            else:
                kind = named or self._kind(eqn, zeros, origin)
                if kind is not None:
                    self._record(kind, outs[0], where)
            self._track(eqn, invals, params, zeros)
        if pending is not None:
            self._record(*pending[1:])
        return [read(a) for a in jaxpr.outvars]

    def _kind(self, eqn: Any, zeros: set[Any], origin: _Origin) -> str | None:
        name = eqn.primitive.name
        kind = _PRIMITIVE_KINDS.get(name)
        if kind is None and name == "max" and len(eqn.invars) == 2:
            zero = [self._is_zero(a, zeros) for a in eqn.invars]
            kind = "relu" if zero.count(True) == 1 else None
        if kind is None:
            return None
        if origin.function is not None:  # inside a jax.nn function: only its own primitive
            return kind if origin.function in _OWN_FUNCTION[kind] else None
        if kind == "relu" and origin.library:  # a clamp at 0 in a library (variance >= 0)
            return None
        return kind

    def _track(self, eqn: Any, invals: list[Any], params: dict[Any, str], zeros: set[Any]) -> None:
        """Follow parameter leaves and constant zeros; note the last weight multiplied in."""
        name = eqn.primitive.name
        first = eqn.invars[0] if eqn.invars else None
        if name in _SAME_VALUE or name == "broadcast_in_dim":
            if name in _SAME_VALUE and isinstance(first, Var) and first in params:
                params[eqn.outvars[0]] = params[first]
            if first is not None and self._is_zero(first, zeros):
                zeros.add(eqn.outvars[0])
        elif name == "dot_general":
            (contract_lhs, contract_rhs), _ = eqn.params["dimension_numbers"]
            for atom, value, dims in (
                (eqn.invars[1], invals[1], contract_rhs),
                (eqn.invars[0], invals[0], contract_lhs),
            ):
                if isinstance(atom, Var) and atom in params and np.ndim(value) >= 2:
                    fan_in = int(np.prod([value.shape[d] for d in dims]))
                    self.weight = self._weight(params[atom], fan_in, None)
                    break
        elif name == "conv_general_dilated":
            atom, value = eqn.invars[1], invals[1]
            if isinstance(atom, Var) and atom in params:
                numbers = eqn.params["dimension_numbers"]
                fan_in = int(np.prod(value.shape) // value.shape[numbers.rhs_spec[0]])
                self.weight = self._weight(params[atom], fan_in, numbers.out_spec[1])

    def _weight(self, name: str, fan_in: int, channel_axis: int | None) -> _Weight:
        return _Weight(name, fan_in, _std(self.values[name]), channel_axis)

    def _layer_name(self, kind: str, where: str) -> str:
        base = f"{where}/{kind}" if where else kind
        self.seen[base] = self.seen.get(base, 0) + 1
        return base if self.seen[base] == 1 else f"{base}#{self.seen[base]}"

    def _record(self, kind: str, out: Any, where: str) -> None:
        if not _is_array(out) or not _is_float(out):
            return
        name = self._layer_name(kind, where)
        x = np.asarray(out, dtype=np.float32)
        axis = self.weight.channel_axis if self.weight is not None else None
        if axis is not None and x.ndim > axis:
            x = np.moveaxis(x, axis, -1)  # a convolution's units are its channels
        x = x.reshape(-1, x.shape[-1]) if x.ndim >= 2 else x.reshape(-1, 1)
        weight = None
        if self.weight is not None:
            weight = (self.weight.name, self.weight.fan_in, self.weight.std)
        self.stats.add(name, kind, x, weight)


def _std(value: Any) -> float:
    """The weights' std, as the torch backend reports it (population std)."""
    return float(np.asarray(value, dtype=np.float32).std())
