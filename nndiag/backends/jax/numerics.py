"""Find the equation that first turns finite values into NaN/Inf, in a traced function.

The forward pass, the loss and the gradient of the loss are each traced with
``jax.make_jaxpr`` and evaluated equation by equation, entering the sub-jaxprs of calls as
activation capture does (``jit``, ``custom_jvp_call``, ...), so the producer is a primitive:
a ``log(softmax(x))`` that underflows is named at the ``log``, not at the operations that
pass the ``-inf`` on. A stage is only searched when its results are not finite (an
overflow that a later operation absorbs is no finding), and only equations that depend on
the traced function's arguments count: an ``-inf`` constant used as a mask is not a bug.

An equation is named as activation capture names layers: by the ``jax.named_scope`` (or
flax module) it runs in, with the line of user code that made it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from nndiag.backends.jax.capture import _bind, _origin, is_array, is_float, subjaxpr
from nndiag.contract import NonFinite

try:  # jax >= 0.4.30 exposes the jaxpr types here; older versions in jax.core
    from jax.extend.core import Literal
except ImportError:  # pragma: no cover - depends on the installed jax
    from jax.core import Literal  # type: ignore[no-redef,attr-defined]

__all__ = ["NonFiniteSearch", "nonfinite_count"]

_WRAPPERS = ("transpose(", "jvp(")  # name-stack entries of differentiation around a scope


def nonfinite_count(value: Any) -> tuple[int, int]:
    """``(non-finite values, values)`` of a floating array; ``(0, 0)`` for anything else."""
    if not is_array(value) or not is_float(value):
        return 0, 0
    x = np.asarray(value)
    return int((~np.isfinite(x)).sum()), int(x.size)


def _scopes(outer: str, eqn: Any) -> str:
    """Named scopes around an equation; a gradient's ``transpose(jvp(scope))`` is the
    scope itself, other transformation entries (``vmap(f)``) are dropped."""
    parts = []
    for part in str(eqn.source_info.name_stack).split("/"):
        while part.startswith(_WRAPPERS) and part.endswith(")"):
            part = part[part.index("(") + 1 : -1]
        if part and "(" not in part:
            parts.append(part)
    return "/".join([outer, *parts] if outer else parts)


def _op(eqn: Any) -> str:
    """The primitive, or a call that is not entered named after its function."""
    name = eqn.primitive.name
    if subjaxpr(eqn) is not None or "jaxpr" in eqn.params:
        return str(eqn.params.get("name") or name)
    return name


class NonFiniteSearch:
    """Evaluate a closed jaxpr, remembering the first producer of NaN/Inf.

    Args:
        stage: the :class:`NonFinite` stage findings are reported under.
        owner: what an equation outside every named scope belongs to (``apply_fn``).
        gradient: name the operation ``gradient of <primitive>``.
    """

    def __init__(self, stage: Any, owner: str, gradient: bool = False) -> None:
        self.stage = stage
        self.owner = owner
        self.gradient = gradient
        self.found: NonFinite | None = None
        self.fallback: NonFinite | None = None  # non-finite from non-finite inputs

    def run(self, closed: Any, args: list[Any]) -> tuple[list[Any], NonFinite | None]:
        """The outputs of ``closed`` on its flat ``args``, and the first producer of a
        NaN/Inf when the outputs are not all finite (else None)."""
        jaxpr = closed.jaxpr
        bad_args = {v for v, a in zip(jaxpr.invars, args) if nonfinite_count(a)[0]}
        outs = self._eval(jaxpr, list(closed.consts), args, "", set(jaxpr.invars), bad_args)
        if not any(nonfinite_count(o)[0] for o in outs):
            return outs, None
        return outs, self.found or self.fallback

    def _where(self, stack: str, eqn: Any) -> str:
        where = _scopes(stack, eqn) or self.owner
        origin = _origin(eqn)
        if origin.site is not None:
            path, line = origin.site
            where += f" at {os.path.basename(path)}:{line}"
        if origin.function is not None:
            where += f", inside jax.nn.{origin.function}"
        return where

    def _eval(
        self,
        jaxpr: Any,
        consts: list[Any],
        args: list[Any],
        stack: str,
        dependent: set[Any],
        bad: set[Any],
    ) -> list[Any]:
        """Evaluate ``jaxpr``; ``dependent`` holds the variables that depend on the traced
        function's arguments, ``bad`` those holding NaN/Inf (both grow as it goes)."""
        env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, args))
        for v, c in zip(jaxpr.constvars, consts):
            if nonfinite_count(c)[0]:
                bad.add(v)

        def read(atom: Any) -> Any:
            return atom.val if isinstance(atom, Literal) else env[atom]

        def is_bad(atom: Any) -> bool:
            if isinstance(atom, Literal):
                return bool(nonfinite_count(np.asarray(atom.val))[0])
            return atom in bad

        for eqn in jaxpr.eqns:
            invals = [read(a) for a in eqn.invars]
            inputs_bad = [is_bad(a) for a in eqn.invars]
            depends = any(not isinstance(a, Literal) and a in dependent for a in eqn.invars)
            sub = subjaxpr(eqn)
            if sub is not None:
                inner, inner_consts = sub
                inner_dependent = {
                    v
                    for v, a in zip(inner.invars, eqn.invars)
                    if not isinstance(a, Literal) and a in dependent
                }
                inner_bad = {v for v, b in zip(inner.invars, inputs_bad) if b}
                where = _scopes(stack, eqn)
                outs = self._eval(inner, inner_consts, invals, where, inner_dependent, inner_bad)
                for v, a in zip(eqn.outvars, inner.outvars):
                    if isinstance(a, Literal):
                        if nonfinite_count(np.asarray(a.val))[0]:
                            bad.add(v)
                        continue
                    if a in inner_dependent:
                        dependent.add(v)
                    if a in inner_bad:
                        bad.add(v)
                env.update(zip(eqn.outvars, outs))
                continue
            outs = _bind(eqn, invals)
            env.update(zip(eqn.outvars, outs))
            counts = [nonfinite_count(o) for o in outs]
            for v, (n, _) in zip(eqn.outvars, counts):
                if depends:
                    dependent.add(v)
                if n:
                    bad.add(v)
            count = sum(n for n, _ in counts)
            if not count or not depends or self.found is not None:
                continue
            total = sum(t for _, t in counts)
            op = _op(eqn)
            if self.gradient:
                op = f"gradient of {op}"
            if not any(inputs_bad):
                self.found = NonFinite(self.stage, self._where(stack, eqn), op, count, total)
            elif self.fallback is None:
                self.fallback = NonFinite(
                    self.stage,
                    self._where(stack, eqn),
                    f"{op} (its inputs were already NaN/Inf: the data or a parameter)",
                    count,
                    total,
                )
        return [read(a) for a in jaxpr.outvars]
