"""Find the operation that first turns finite values into NaN/Inf, forward and backward.

A ``TorchFunctionMode`` sees every operation (``torch.log``, ``F.softmax``, tensor methods
and operators), so the producer is the first one whose tensor inputs are all finite and
whose output is not — a ``log(softmax(x))`` that underflows is named at the log, not at
the layers that pass the ``-inf`` on. Module hooks keep the name of the module being run,
so the producer is named after where it happens. For the backward pass a hook on every
node of the graph finds the first node that receives finite gradients and passes on
non-finite ones; it is named after the forward operation that made it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from nndiag.backends.torch.modes import ModuleMode
from nndiag.contract import NonFinite

__all__ = ["NonFiniteWatch"]


def _floats(values: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(values)
    return [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _finite(tensors: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _op(func: Any) -> str:
    name = getattr(func, "__name__", None) or str(func)
    return name.strip("_") or name


class NonFiniteWatch(ModuleMode):
    """Context manager: while open, ``found`` holds the first NaN/Inf producer seen."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.found: NonFinite | None = None
        self.fallback: NonFinite | None = None  # non-finite from non-finite inputs
        self.origins: dict[Any, tuple[str, str]] = {}  # grad_fn -> (layer, op)

    def __enter__(self) -> NonFiniteWatch:
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            if self.found is None:
                self.found = self.fallback

    def _where(self) -> str:
        top = self.stack[-1] if self.stack else None
        name = self.names.get(top, "") if top is not None else ""
        return f"{name} ({type(top).__name__})" if name else "the model's forward"

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        outputs = _floats(out)
        if not outputs:
            return out
        if self.found is None and not _finite(outputs):
            bad = sum(int((~torch.isfinite(t)).sum()) for t in outputs)
            total = sum(t.numel() for t in outputs)
            record = NonFinite("forward", self._where(), _op(func), bad, total)
            if _finite(_floats((args, kwargs))):
                self.found = record
            elif self.fallback is None:
                self.fallback = NonFinite(
                    "forward",
                    record.where,
                    f"{record.op} (its inputs were already NaN/Inf: the data or a parameter)",
                    bad,
                    total,
                )
        for t in outputs:
            if t.grad_fn is not None and t.grad_fn not in self.origins:
                self.origins[t.grad_fn] = (self._where(), _op(func))
        return out

    def watch_backward(self, loss: torch.Tensor) -> None:
        """Hook every node of ``loss``'s graph for the backward pass that follows."""
        seen: set[Any] = set()
        todo = [loss.grad_fn]
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            self.handles.append(node.register_hook(self._backward_hook(node)))
            todo.extend(next_node for next_node, _ in node.next_functions)

    def _backward_hook(self, node: Any) -> Any:
        def hook(grad_inputs: Any, grad_outputs: Any) -> None:
            if self.found is not None:
                return
            produced = [g for g in grad_inputs if isinstance(g, torch.Tensor)]
            received = [g for g in grad_outputs if isinstance(g, torch.Tensor)]
            if produced and _finite(received) and not _finite(produced):
                where, op = self.origins.get(node, ("the model's forward", node.name()))
                bad = sum(int((~torch.isfinite(g)).sum()) for g in produced)
                self.found = NonFinite(
                    "backward", where, f"gradient of {op}", bad, sum(g.numel() for g in produced)
                )

        return hook
