"""Winners of a forward's non-smooth operations, recorded at the aten level.

A centered difference across a kink (a ReLU unit changing sides, a max-pool window whose
maximum moves, a clamp that starts clipping) is no evidence about the gradient. Rather than
infer kinks from how the error changes with the step, the gradient check runs the forward
at x+h and x-h under :class:`Winners` and counts the elements whose winner differs: zero
means both points lie on one smooth piece. The mode works below autograd and below
``nn.Module``, so a functional ``F.relu``, an in-place ``relu_``, a ``torch.where`` on a
comparison and a library's own max-pool are all seen the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _positive(args: Any, kwargs: Any, out: Any) -> torch.Tensor:
    return args[0] > 0


def _above_threshold(args: Any, kwargs: Any, out: Any) -> torch.Tensor:
    return args[0] > args[1]


def _sides(low: Any, high: Any) -> Callable[[Any, Any, Any], torch.Tensor]:
    """Which of three pieces (below ``low``, between, above ``high``) each element is on;
    the bounds read from the call's arguments by position or name."""

    def winner(args: Any, kwargs: Any, out: Any) -> torch.Tensor:
        x = args[0]
        lo, hi = low(args, kwargs), high(args, kwargs)
        side = torch.zeros(x.shape, dtype=torch.int8, device=x.device)
        if lo is not None:
            side = side - (x < lo).to(torch.int8)
        if hi is not None:
            side = side + (x > hi).to(torch.int8)
        return side

    return winner


def _arg(i: int, name: str, default: Any = None) -> Callable[[Any, Any], Any]:
    return lambda args, kwargs: args[i] if len(args) > i else kwargs.get(name, default)


def _indices(position: int) -> Callable[[Any, Any, Any], torch.Tensor]:
    return lambda args, kwargs, out: out[position]


def _output(args: Any, kwargs: Any, out: Any) -> torch.Tensor:
    return out


def _first_wins(args: Any, kwargs: Any, out: Any) -> torch.Tensor:
    return args[0] > args[1]


def _selected(args: Any, kwargs: Any, out: Any) -> torch.Tensor:
    """A selecting reduction (max, min, median, amax): its indices where it returns them,
    else which elements equal the selected value."""
    if isinstance(out, tuple):
        return out[1]
    x = args[0]
    dims = args[1] if len(args) > 1 else kwargs.get("dim", [])
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    dims = [dims] if isinstance(dims, int) else list(dims)
    if dims and not keepdim:
        for d in sorted(d % x.dim() for d in dims):
            out = out.unsqueeze(d)
    return x == out


_HARD = (-3.0, 3.0)  # hardswish / hardsigmoid pieces
_TABLE: dict[Any, Callable[[Any, Any, Any], torch.Tensor]] = {
    aten.relu: _positive,
    aten.relu_: _positive,
    aten.leaky_relu: _positive,
    aten.leaky_relu_: _positive,
    aten.prelu: _positive,
    aten._prelu_kernel: _positive,
    aten.rrelu_with_noise: _positive,
    aten.abs: _positive,
    aten.abs_: _positive,
    aten.sign: _output,
    aten.sgn: _output,
    aten.threshold: _above_threshold,
    aten.threshold_: _above_threshold,
    aten.hardtanh: _sides(_arg(1, "min_val", -1.0), _arg(2, "max_val", 1.0)),
    aten.hardtanh_: _sides(_arg(1, "min_val", -1.0), _arg(2, "max_val", 1.0)),
    aten.clamp: _sides(_arg(1, "min"), _arg(2, "max")),
    aten.clamp_: _sides(_arg(1, "min"), _arg(2, "max")),
    aten.clip: _sides(_arg(1, "min"), _arg(2, "max")),
    aten.clamp_min: _sides(_arg(1, "min"), lambda a, k: None),
    aten.clamp_min_: _sides(_arg(1, "min"), lambda a, k: None),
    aten.clamp_max: _sides(lambda a, k: None, _arg(1, "max")),
    aten.clamp_max_: _sides(lambda a, k: None, _arg(1, "max")),
    aten.hardswish: _sides(lambda a, k: _HARD[0], lambda a, k: _HARD[1]),
    aten.hardswish_: _sides(lambda a, k: _HARD[0], lambda a, k: _HARD[1]),
    aten.hardsigmoid: _sides(lambda a, k: _HARD[0], lambda a, k: _HARD[1]),
    aten.hardsigmoid_: _sides(lambda a, k: _HARD[0], lambda a, k: _HARD[1]),
    aten.maximum: _first_wins,
    aten.minimum: _first_wins,
    aten.fmax: _first_wins,
    aten.fmin: _first_wins,
    aten.amax: _selected,
    aten.amin: _selected,
    aten.argmax: _output,
    aten.argmin: _output,
    aten.sort: _indices(1),
    aten.topk: _indices(1),
    aten.kthvalue: _indices(1),
    aten.median: _selected,
    aten.nanmedian: _selected,
    aten.max_pool1d_with_indices: _indices(1),
    aten.max_pool2d_with_indices: _indices(1),
    aten.max_pool3d_with_indices: _indices(1),
    aten.adaptive_max_pool2d: _indices(1),
    aten.adaptive_max_pool3d: _indices(1),
    aten.fractional_max_pool2d: _indices(1),
    aten.floor: _output,
    aten.ceil: _output,
    aten.round: _output,
    aten.trunc: _output,
    aten.gt: _output,
    aten.lt: _output,
    aten.ge: _output,
    aten.le: _output,
    aten.eq: _output,
    aten.ne: _output,
}


def _winner(func: Any, args: Any, kwargs: Any, out: Any) -> torch.Tensor | None:
    """The winner pattern of one call, or None for a smooth operation."""
    packet = func.overloadpacket
    if packet in (aten.max, aten.min):  # max(x), max(x, dim) or max(x, y)
        pair = len(args) > 1 and isinstance(args[1], torch.Tensor)
        return _first_wins(args, kwargs, out) if pair else _selected(args[:1], {}, out)
    rule = _TABLE.get(packet)
    return None if rule is None else rule(args, kwargs, out)


class Winners(TorchDispatchMode):
    """Records the winner pattern of every non-smooth call of a forward, in call order.
    Only floating inputs' winners are kept: a comparison on token ids or a mask never
    moves with the parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.winners: list[torch.Tensor] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        before = None
        first = args[0] if args else None
        floating = isinstance(first, torch.Tensor) and first.is_floating_point()
        inplace = floating and func.overloadpacket.__name__.endswith("_")
        if inplace:  # the input is overwritten: read the winner before the call
            before = _winner(func, args, kwargs, None)
        out = func(*args, **kwargs)
        if not floating:
            return out
        winner = before if inplace else _winner(func, args, kwargs, out)
        if winner is not None:
            self.winners.append(winner.detach().clone())
        return out


def changed(first: list[torch.Tensor], second: list[torch.Tensor]) -> int:
    """Elements whose winner differs between two recorded forwards; a call that only one
    made, or made on another shape, counts whole (the two took different paths)."""
    total = 0
    for a, b in zip(first, second):
        if a.shape != b.shape:
            total += max(a.numel(), b.numel(), 1)
        else:
            total += int((a != b).sum())
    for extra in (first if len(first) > len(second) else second)[min(len(first), len(second)) :]:
        total += max(extra.numel(), 1)
    return total
