"""The compile cache of the JAX backend: programs compiled once, reused by their text.

Every check traces the user's functions afresh (they may read Python state); a function that
cannot be traced abstractly (Python control flow on array values) runs eagerly instead.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nndiag.errors import ModelError

__all__ = ["compiled", "jit_or_eager", "untraceable"]

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


def untraceable(exc: BaseException) -> bool:
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


def compiled(jitted: Any, args: tuple[Any, ...]) -> Any:
    """The executable of ``jitted`` for ``args``, compiled once per program text."""
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


def jit_or_eager(fn: Callable[..., Any]) -> Callable[..., Any]:
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
                    executables[signature] = compiled(jitted, args)
                return executables[signature](*args)
            except Exception as exc:
                if not untraceable(exc):
                    raise
                eager = True
        return fn(*args)

    return call
