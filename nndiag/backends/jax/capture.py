"""Activation capture for JAX: a jaxpr interpreter that records activation statistics.

Nothing here depends on a session, so any JAX adapter can reuse it: trace the forward
pass with ``jax.make_jaxpr`` (or hand :meth:`JaxprRecorder.run_function` the function and
its arguments), name the parameter leaves that come first among its inputs, and read
:meth:`JaxprRecorder.layers`. What counts as an activation, what is entered and how layers
are named is described in the ``nndiag.backends.jax`` module docstring.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nndiag.backends import LayerRecord
from nndiag.backends.capture import Accumulator

try:  # jax >= 0.4.30 exposes the jaxpr types here; older versions in jax.core
    from jax.extend.core import Literal, Var
except ImportError:  # pragma: no cover - depends on the installed jax
    from jax.core import Literal, Var  # type: ignore[no-redef,attr-defined]

__all__ = ["JaxprRecorder", "is_array", "is_float", "subjaxpr"]

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


def is_array(value: Any) -> bool:
    """A numpy or JAX array."""
    return isinstance(value, (np.ndarray, jax.Array))


def is_float(x: Any) -> bool:
    """A floating array (bfloat16 included)."""
    return bool(jnp.issubdtype(getattr(x, "dtype", type(x)), jnp.inexact))


def subjaxpr(eqn: Any) -> tuple[Any, list[Any]] | None:
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


class JaxprRecorder:
    """Evaluate a traced forward pass equation by equation, handing every activation's
    output to the shared :class:`Accumulator` as it is produced (nothing the size of a
    batch is kept). Eager: one pass shares JAX's per-operation compilation cache with the
    session's other one-off passes.

    Args:
        leaf_names: names of the parameter leaves, in the order they come first among the
            traced function's flattened inputs (``layers/0/W``); they name weight layers.
        values: the parameter leaves by name, from which weight std is measured.
        bins: histogram bins per layer.

    Call :meth:`run` with a closed jaxpr and its flat arguments (or :meth:`run_function`
    with the function and its arguments) once per batch; :meth:`layers` returns the
    ``list[LayerRecord]`` accumulated over every pass.
    """

    def __init__(self, leaf_names: list[str], values: dict[str, Any], bins: int) -> None:
        self.leaf_names = leaf_names
        self.values = values  # the user's leaves by name: weight std comes from them
        self.stats = Accumulator(bins)
        self.seen: dict[str, int] = {}
        self.weight: _Weight | None = None
        self._worth: dict[int, bool] = {}
        self._normalizing: dict[int, bool] = {}
        self.normalized = False  # a normalization ran since the last activation
        # Each weight leaf as (units, fan_in), learned from how forward applies it.
        self.matrices: dict[str, np.ndarray] = {}
        # Activation outputs of this pass by variable, to see which of them multiply
        # another array (the gates), and the layers whose output was a pooled vector.
        self.outputs: dict[Any, str] = {}
        self.gates: set[str] = set()
        self.pooled: set[str] = set()

    def run(self, closed: Any, args: list[jax.Array]) -> None:
        """Evaluate ``closed`` (from ``jax.make_jaxpr``) on its flat ``args``, recording
        every activation on the way."""
        self.seen, self.weight = {}, None  # names count from the start of each pass
        self.normalized, self.outputs = False, {}
        jaxpr = closed.jaxpr
        params = {v: n for v, n in zip(jaxpr.invars, self.leaf_names)}
        zeros = {v for v, c in zip(jaxpr.constvars, closed.consts) if not np.any(np.asarray(c))}
        self._eval(jaxpr, list(closed.consts), args, "", params, zeros)

    def run_function(self, fn: Callable[..., Any], *args: Any) -> None:
        """Trace ``fn(*args)`` and :meth:`run` it; the parameter leaves come first among
        the flattened ``args`` (``fn(params, X)``)."""
        self.run(jax.make_jaxpr(fn)(*args), jax.tree_util.tree_leaves(args))

    def layers(self) -> list[LayerRecord]:
        """Statistics of every layer seen so far, in the order they first ran."""
        layers = self.stats.layers()
        for layer in layers:
            layer.gate, layer.pooled = layer.name in self.gates, layer.name in self.pooled
        return layers

    def _follow(self, eqn: Any, invals: list[Any]) -> None:
        """An activation's output passed on unchanged in value is still it; one that
        multiplies another (non-scalar) array is a gate."""
        name = eqn.primitive.name
        found = [self.outputs.get(a) if isinstance(a, Var) else None for a in eqn.invars]
        if name in _SAME_VALUE or name == "broadcast_in_dim":
            if found and found[0] is not None:
                self.outputs[eqn.outvars[0]] = found[0]
        elif name == "mul" and len(invals) == 2:
            for mine, other, value in zip(found, reversed(found), reversed(invals)):
                if mine is not None and other != mine and np.size(value) > 1:
                    self.gates.add(mine)

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
                sub = subjaxpr(eqn)
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

    def _normalizes(self, jaxpr: Any) -> bool:
        """Whether a sub-jaxpr divides by an ``rsqrt``: what layer, RMS and batch norms
        (flax's, ``jax.nn.standardize``) do."""
        key = id(jaxpr)
        if key not in self._normalizing:
            self._normalizing[key] = False  # recursion guard
            self._normalizing[key] = any(
                eqn.primitive.name == "rsqrt"
                or ((sub := subjaxpr(eqn)) is not None and self._normalizes(sub[0]))
                for eqn in jaxpr.eqns
            )
        return self._normalizing[key]

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
            sub = subjaxpr(eqn)
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
                if eqn.primitive.name == "rsqrt" or (sub is not None and self._normalizes(sub[0])):
                    self.normalized = True
            env.update(zip(eqn.outvars, outs))
            origin = _origin(eqn)
            inline = _INLINE_KINDS.get(origin.function or "")
            call = (origin.function, origin.site) if inline is not None else None
            if pending is not None and pending[0] != call:
                self._record(*pending[1:])
                pending = None
            if call is not None:
                pending = (call, inline, outs[0], where, eqn.outvars[0])
            else:
                kind = named or self._kind(eqn, zeros, origin)
                if kind is not None:
                    self._record(kind, outs[0], where, eqn.outvars[0])
            self._track(eqn, invals, params, zeros)
            self._follow(eqn, invals)
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
                    if params[atom] not in self.matrices:  # contracted axes last: (units, fan_in)
                        a = np.asarray(value)
                        a = np.moveaxis(a, list(dims), list(range(a.ndim - len(dims), a.ndim)))
                        self._matrix(params[atom], a.reshape(-1, fan_in))
                    break
        elif name == "conv_general_dilated":
            atom, value = eqn.invars[1], invals[1]
            if isinstance(atom, Var) and atom in params:
                numbers = eqn.params["dimension_numbers"]
                fan_in = int(np.prod(value.shape) // value.shape[numbers.rhs_spec[0]])
                self.weight = self._weight(params[atom], fan_in, numbers.out_spec[1])
                if params[atom] not in self.matrices:  # output channels first
                    a = np.moveaxis(np.asarray(value), numbers.rhs_spec[0], 0)
                    self._matrix(params[atom], a.reshape(len(a), -1))

    def _matrix(self, name: str, matrix: np.ndarray) -> None:
        matrix = np.array(matrix, dtype=np.float32 if matrix.dtype.itemsize < 4 else None)
        matrix.setflags(write=False)
        self.matrices[name] = matrix

    def _weight(self, name: str, fan_in: int, channel_axis: int | None) -> _Weight:
        return _Weight(name, fan_in, _std(self.values[name]), channel_axis)

    def _layer_name(self, kind: str, where: str) -> str:
        base = f"{where}/{kind}" if where else kind
        self.seen[base] = self.seen.get(base, 0) + 1
        return base if self.seen[base] == 1 else f"{base}#{self.seen[base]}"

    def _record(self, kind: str, out: Any, where: str, var: Any = None) -> None:
        if not is_array(out) or not is_float(out):
            return
        name = self._layer_name(kind, where)
        if var is not None:
            self.outputs[var] = name
        x = np.asarray(out, dtype=np.float32)
        axis = self.weight.channel_axis if self.weight is not None else None
        spatial = [d for i, d in enumerate(x.shape[1:], 1) if i != (axis or x.ndim - 1) % x.ndim]
        if all(d == 1 for d in spatial):
            self.pooled.add(name)
        if axis is not None and x.ndim > axis:
            x = np.moveaxis(x, axis, -1)  # a convolution's units are its channels
        x = x.reshape(-1, x.shape[-1]) if x.ndim >= 2 else x.reshape(-1, 1)
        weight = None
        if self.weight is not None:
            weight = (self.weight.name, self.weight.fan_in, self.weight.std)
        self.stats.add(name, kind, x, weight, normalized=self.normalized)
        self.normalized = False


def _std(value: Any) -> float:
    """The weights' std, as the torch backend reports it (population std)."""
    return float(np.asarray(value, dtype=np.float32).std())
