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

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nndiag.backends import Batch, read_items, unpack, validate_arrays
from nndiag.backends.jax.capture import is_array, is_float
from nndiag.backends.jax.session import JaxSession, knob_form
from nndiag.backends.state import rng_guard
from nndiag.errors import InvalidSubject, describe

__all__ = ["BACKEND", "JaxBackend", "JaxSession"]


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
        return bool(leaves) and all(map(is_array, leaves))

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
        if not any(is_float(leaf) for leaf in leaves):
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
                "pass optimizer=optax.adam(1e-3), or leave it out for Adam at the check's "
                "learning rate (Config.overfit_lr for overfit_small)",
            )
        if isinstance(regularization, str):
            raise InvalidSubject(
                "regularization",
                f"a JAX model has no attribute {regularization!r} to set",
                "pass penalty(params) -> scalar (nndiag adds strength * penalty to the loss), "
                "or a function (model, strength) -> None that sets what your loss reads",
            )
        if regularization is not None and knob_form(regularization) == "invalid":
            raise InvalidSubject(
                "regularization",
                f"{describe(regularization)} takes no argument",
                "pass penalty(params) -> scalar, or a function (model, strength) -> None",
            )

    def read_batches(self, model: Any, data: Any, limit: int) -> list[Batch]:
        """Read up to ``limit`` batches without touching the global RNGs (a shuffling
        iterator may draw from them)."""
        items = read_items(data, limit, is_array, rng_guard())
        return [self._batch(item, i) for i, item in enumerate(items)]

    def _batch(self, item: Any, index: int) -> Batch:
        where, X, y = unpack(item, index)
        for arg, value in (("X", X), ("y", y)):
            if not is_array(value):
                raise InvalidSubject(
                    where,
                    f"{arg} is {describe(value)}, not an array",
                    f"convert {arg} with jnp.asarray or np.asarray",
                )
        validate_arrays(
            where, X, y, lambda v: int((~np.isfinite(np.asarray(v))).sum()) if is_float(v) else 0
        )
        return Batch(jnp.asarray(X), jnp.asarray(y))

    def session(self, subject: Any, config: Any) -> JaxSession:
        return JaxSession(subject, config)


BACKEND = JaxBackend()
