"""Winners of a traced loss's non-smooth operations, for the JAX gradient check.

A centered difference across a kink (a ReLU unit changing sides, a max-pool window whose
maximum moves, a clamp that starts clipping) is no evidence about the gradient. Rather than
infer kinks from how the error changes with the step, the gradient check evaluates the loss
at x+h and x-h and counts the elements whose "winner" differs between the two points: zero
means both lie on one smooth piece. The counterpart of ``nndiag.backends.torch.kinks``.

The loss is traced with ``jax.make_jaxpr`` and :func:`winners` evaluates its jaxpr equation
by equation, entering the sub-jaxprs of calls (``jit``, ``custom_jvp_call``,
``custom_vjp_call``, ``remat``) and rebuilding ``cond``, ``while`` and ``scan`` so that their
bodies' winners come out too. Every step is an ordinary JAX operation, so the evaluation
can itself be traced: :func:`three_points` runs the points and the comparisons in one program,
which the session compiles once.

What is a winner, for each non-smooth primitive with a floating input:

* ``max`` / ``min`` (``jax.nn.relu`` is ``max(x, 0.0)``): ``x > y``;
* ``abs``: ``x > 0``; ``sign``, ``floor``, ``ceil``, ``round``, ``is_finite``, a float cast to
  an integer or bool, the comparisons ``gt lt ge le eq ne``, ``argmax`` / ``argmin``: the
  output (``select_n`` is decided by its predicate, a comparison recorded on its own);
* ``clamp``: the piece each element is on (below, between, above the bounds);
* ``rem``: which period (``trunc(x / y)``);
* ``reduce_max`` / ``reduce_min`` / ``cummax`` / ``cummin``: the elements equal to the result;
* ``reduce_window_max`` / ``reduce_window_min`` (max pooling): how many windows pick each
  element (the pooling's gradient of ones);
* ``sort``: the permutation (the sort run again with an iota), ``top_k``: its indices;
* ``cond``: the branch index, and the winners of each branch (zeros where not taken);
* ``while``: the number of iterations, and each winner summed over the iterations;
* ``scan``: the winners of every iteration, stacked.

Equations whose outputs the loss does not use are not evaluated, and winners that reach
the loss only through a ``stop_gradient`` are not kept: the max that a stable softmax,
log-softmax or logsumexp subtracts cancels out, and moving it leaves the loss on one smooth
piece. ``logaddexp`` (inside ``softplus`` and ``log_sigmoid``) is smooth though it takes a
``max`` and an ``abs``: it is evaluated whole. Other primitives that carry a jaxpr
(``shard_map``, ``custom_linear_solve``, callbacks) are bound whole: winners inside them
are not seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from nndiag.backends.jax.capture import _JAX_DIR, _bind, is_float, subjaxpr

try:  # jax >= 0.4.30 exposes the jaxpr types here; older versions in jax.core
    from jax.extend.core import Literal, Var
except ImportError:  # pragma: no cover - depends on the installed jax
    from jax.core import Literal, Var  # type: ignore[no-redef,attr-defined]

__all__ = ["crossings", "three_points", "winners"]

# JAX functions that are smooth though they compare values inside.
_SMOOTH = {"logaddexp", "logaddexp2"}

Rule = Callable[[Any, list[Any], list[Any]], Any]


def _first_wins(eqn: Any, ins: list[Any], outs: list[Any]) -> Any:
    return jnp.greater(ins[0], ins[1])


def _positive(eqn: Any, ins: list[Any], outs: list[Any]) -> Any:
    return jnp.greater(ins[0], 0)


def _output(eqn: Any, ins: list[Any], outs: list[Any]) -> Any:
    return outs[0]


def _clamp(eqn: Any, ins: list[Any], outs: list[Any]) -> Any:
    low, x, high = ins  # lax.clamp(min, x, max)
    above = jnp.greater(x, high).astype(jnp.int8)
    return above - jnp.less(x, low).astype(jnp.int8)


def _period(eqn: Any, ins: list[Any], outs: list[Any]) -> Any:
    return jnp.trunc(jnp.divide(ins[0], ins[1]))


def _selected(eqn: Any, ins: list[Any], outs: list[Any]) -> Any:
    """The elements a reduction selected: those equal to the result along its axes."""
    return jnp.equal(ins[0], jnp.expand_dims(outs[0], tuple(eqn.params["axes"])))


def _running(eqn: Any, ins: list[Any], outs: list[Any]) -> Any:
    return jnp.equal(ins[0], outs[0])


def _window(eqn: Any, ins: list[Any], outs: list[Any]) -> Any:
    """How many pooling windows pick each element: the pooling's gradient of ones."""
    _, pullback = jax.vjp(lambda x: _bind(eqn, [x])[0], ins[0])
    return pullback(jnp.ones_like(outs[0]))[0]


def _indices(eqn: Any, ins: list[Any], outs: list[Any]) -> Any:
    return outs[1]


def _truncated(eqn: Any, ins: list[Any], outs: list[Any]) -> Any:
    """A float cast to an integer or bool: the output is the winner."""
    return None if is_float(outs[0]) else outs[0]


_RULES: dict[str, Rule] = {
    "max": _first_wins,
    "min": _first_wins,
    "abs": _positive,
    "sign": _output,
    "clamp": _clamp,
    "gt": _output,
    "lt": _output,
    "ge": _output,
    "le": _output,
    "eq": _output,
    "ne": _output,
    "argmax": _output,
    "argmin": _output,
    "reduce_max": _selected,
    "reduce_min": _selected,
    "cummax": _running,
    "cummin": _running,
    "reduce_window_max": _window,
    "reduce_window_min": _window,
    "top_k": _indices,
    "floor": _output,
    "ceil": _output,
    "round": _output,
    "rem": _period,
    "is_finite": _output,
    "convert_element_type": _truncated,
}


def winners(closed: Any, args: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """The outputs of ``closed`` (from ``jax.make_jaxpr``) on its flat ``args``, and the
    winner array of every non-smooth equation evaluated, in evaluation order. Traceable:
    inside ``jax.jit`` the winners are traced values of the same program."""
    jaxpr = closed.jaxpr
    found: list[Any] = []
    outs = _eval(jaxpr, list(closed.consts), list(args), found, [True] * len(jaxpr.outvars))
    return outs, found


def crossings(first: Sequence[Any], second: Sequence[Any]) -> Any:
    """Elements whose winner differs between two lists of winners (a scalar array). A
    winner whose shape differs, or that only one list has, counts whole: the two points
    took different paths. NaN against NaN is no change."""
    total: Any = 0
    for a, b in zip(first, second):
        if jnp.shape(a) != jnp.shape(b):
            total += max(int(jnp.size(a)), int(jnp.size(b)), 1)
            continue
        differ = jnp.not_equal(a, b)
        if is_float(a):
            differ = differ & ~(jnp.isnan(a) & jnp.isnan(b))
        total = total + jnp.count_nonzero(differ)
    longer = first if len(first) > len(second) else second
    for extra in longer[min(len(first), len(second)) :]:
        total += max(int(jnp.size(extra)), 1)
    return jnp.asarray(total)


def three_points(
    loss: Callable[..., Any], base: Any, up: Any, down: Any, *rest: Any
) -> tuple[Any, ...]:
    """``loss(up, *rest)``, ``loss(down, *rest)``, the crossings between the two, and
    between ``base`` and each, from one trace of ``loss``: meant to be compiled whole
    (one dispatch, five scalars back)."""
    closed = jax.make_jaxpr(loss)(up, *rest)
    _, at_base = winners(closed, jax.tree_util.tree_leaves((base, *rest)))
    high, at_up = winners(closed, jax.tree_util.tree_leaves((up, *rest)))
    low, at_down = winners(closed, jax.tree_util.tree_leaves((down, *rest)))
    return (
        high[0],
        low[0],
        crossings(at_up, at_down),
        crossings(at_base, at_up),
        crossings(at_base, at_down),
    )


# -- the interpreter ---------------------------------------------------------------------
def _live(
    jaxpr: Any, needed: Sequence[bool], counted: Sequence[bool]
) -> list[tuple[list[bool], list[bool]]]:
    """For each equation, which outputs are needed (for the ``needed`` outputs, or for
    its effects) and which are counted: reach a ``counted`` output other than through a
    ``stop_gradient`` (the max a stable softmax subtracts cancels out: its winner does
    not move the loss off a smooth piece)."""
    used = {v for v, n in zip(jaxpr.outvars, needed) if n and isinstance(v, Var)}
    matter = {v for v, n in zip(jaxpr.outvars, counted) if n and isinstance(v, Var)}
    marks: list[tuple[list[bool], list[bool]]] = []
    for eqn in reversed(jaxpr.eqns):
        outs = [isinstance(v, Var) and v in used for v in eqn.outvars]
        if eqn.effects:
            outs = [True] * len(outs)
        counts = [isinstance(v, Var) and v in matter for v in eqn.outvars]
        marks.append((outs, counts))
        if any(outs):
            used.update(a for a in eqn.invars if isinstance(a, Var))
        if any(counts) and eqn.primitive.name != "stop_gradient":
            matter.update(a for a in eqn.invars if isinstance(a, Var))
    return marks[::-1]


def _eval(
    jaxpr: Any,
    consts: list[Any],
    args: list[Any],
    found: list[Any],
    needed: Sequence[bool],
    counted: Sequence[bool] | None = None,
) -> list[Any]:
    """Evaluate the equations ``needed`` outputs depend on, appending to ``found`` the
    winners of those the ``counted`` outputs depend on (all needed ones by default); an
    output not needed comes back as None."""
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))

    def read(atom: Any) -> Any:
        return atom.val if isinstance(atom, Literal) else env.get(atom)

    marks = _live(jaxpr, needed, needed if counted is None else counted)
    for eqn, (outs, counts) in zip(jaxpr.eqns, marks):
        if any(outs):
            invals = [read(a) for a in eqn.invars]
            env.update(zip(eqn.outvars, _equation(eqn, invals, found, outs, counts)))
    return [read(a) if n else None for a, n in zip(jaxpr.outvars, needed)]


def _smooth(inner: Any) -> bool:
    """A call of a JAX function that is smooth though it compares values inside
    (``logaddexp``'s ``max`` and ``abs``, under ``softplus`` and ``log_sigmoid``)."""
    info = getattr(inner, "debug_info", None)
    name, _, where = str(getattr(info, "func_src_info", None) or "").partition(" at ")
    return name in _SMOOTH and where.startswith(_JAX_DIR)


def _equation(
    eqn: Any, invals: list[Any], found: list[Any], needed: list[bool], counted: list[bool]
) -> list[Any]:
    name = eqn.primitive.name
    record = found if any(counted) else []  # winners of what the loss never sees: dropped
    sub = subjaxpr(eqn)
    if sub is not None:
        inner, consts = sub
        if _smooth(inner):
            return _bind(eqn, invals)
        return _eval(inner, consts, invals, found, needed, counted)
    if name == "cond":
        return _cond(eqn, invals, record)
    if name == "while":
        return _while(eqn, invals, record)
    if name == "scan":
        return _scan(eqn, invals, record)
    if name == "sort":
        return _sort(eqn, invals, record)
    outs = _bind(eqn, invals)
    rule = _RULES.get(name)
    if rule is not None and any(counted) and any(is_float(x) for x in invals):
        winner = rule(eqn, invals, outs)
        if winner is not None:
            found.append(winner)
    return outs


def _sort(eqn: Any, invals: list[Any], found: list[Any]) -> list[Any]:
    """The sort run with an iota beside its operands: the permutation is the winner."""
    keys, dimension = eqn.params["num_keys"], eqn.params["dimension"]
    if not any(is_float(x) for x in invals[:keys]):
        return _bind(eqn, invals)
    iota = lax.broadcasted_iota(jnp.int32, jnp.shape(invals[0]), dimension)
    outs = lax.sort(
        (*invals, iota), dimension=dimension, is_stable=eqn.params["is_stable"], num_keys=keys
    )
    found.append(outs[-1])
    return list(outs[:-1])


def _zeros(shapes: Sequence[Any]) -> list[Any]:
    return [jnp.zeros(s.shape, s.dtype) for s in shapes]


def _cond(eqn: Any, invals: list[Any], found: list[Any]) -> list[Any]:
    """The branch index, then every branch's winners (zeros from the branches not taken)."""
    index, *operands = invals
    branches = eqn.params["branches"]

    def interpret(k: int) -> Callable[..., tuple[list[Any], list[Any]]]:
        return lambda *ops: winners(branches[k], ops)

    shapes = [jax.eval_shape(interpret(k), *operands)[1] for k in range(len(branches))]

    def branch(k: int) -> Callable[..., tuple[list[Any], list[list[Any]]]]:
        def run(*ops: Any) -> tuple[list[Any], list[list[Any]]]:
            outs, own = interpret(k)(*ops)
            return outs, [own if j == k else _zeros(s) for j, s in enumerate(shapes)]

        return run

    outs, each = lax.switch(index, [branch(k) for k in range(len(branches))], *operands)
    found.append(index)
    for own in each:
        found.extend(own)
    return list(outs)


def _tally(dtype: Any) -> Any:
    return jnp.int32 if dtype == jnp.bool_ else dtype


def _while(eqn: Any, invals: list[Any], found: list[Any]) -> list[Any]:
    """The loop with an iteration count and each body winner summed over iterations in
    its carry (a flip back and forth in two iterations of one element goes unseen)."""
    p = eqn.params
    n_cond, n_body = p["cond_nconsts"], p["body_nconsts"]
    cond_consts, body_consts = invals[:n_cond], invals[n_cond : n_cond + n_body]
    init = [
        jnp.asarray(x, dtype=v.aval.dtype)
        for x, v in zip(invals[n_cond + n_body :], p["body_jaxpr"].jaxpr.invars[n_body:])
    ]

    def body(vals: list[Any]) -> tuple[list[Any], list[Any]]:
        return winners(p["body_jaxpr"], [*body_consts, *vals])

    shapes = jax.eval_shape(body, init)[1]
    tallies = [jnp.zeros(s.shape, _tally(s.dtype)) for s in shapes]

    def go_on(carry: tuple[list[Any], Any, list[Any]]) -> Any:
        return winners(p["cond_jaxpr"], [*cond_consts, *carry[0]])[0][0]

    def step(carry: tuple[list[Any], Any, list[Any]]) -> tuple[list[Any], Any, list[Any]]:
        vals, count, sums = carry
        outs, own = body(vals)
        outs = [jnp.asarray(o, dtype=v.dtype) for o, v in zip(outs, vals)]
        return outs, count + 1, [s + w.astype(s.dtype) for s, w in zip(sums, own)]

    vals, count, sums = lax.while_loop(go_on, step, (init, jnp.zeros((), jnp.int32), tallies))
    found.append(count)
    found.extend(sums)
    return list(vals)


def _scan(eqn: Any, invals: list[Any], found: list[Any]) -> list[Any]:
    """The scan with its body's winners as extra outputs, one per iteration."""
    p = eqn.params
    n_consts, n_carry = p["num_consts"], p["num_carry"]
    body_in = p["jaxpr"].jaxpr.invars
    consts = invals[:n_consts]
    init = [
        jnp.asarray(x, dtype=v.aval.dtype)
        for x, v in zip(invals[n_consts : n_consts + n_carry], body_in[n_consts:])
    ]
    xs = invals[n_consts + n_carry :]

    def body(carry: list[Any], x: list[Any]) -> tuple[list[Any], tuple[list[Any], list[Any]]]:
        outs, own = winners(p["jaxpr"], [*consts, *carry, *x])
        carry_out = [jnp.asarray(o, dtype=c.dtype) for o, c in zip(outs[:n_carry], carry)]
        return carry_out, (outs[n_carry:], own)

    carry, (ys, each) = lax.scan(
        body, init, xs, length=p["length"], reverse=p["reverse"], unroll=p["unroll"]
    )
    found.extend(each)
    return [*carry, *ys]
