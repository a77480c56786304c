"""A ``TorchFunctionMode`` that knows which module is running.

A function mode sees every operation, including functional ones (``F.relu``, ``torch.log``)
that module hooks miss; forward pre/post hooks on every module keep a stack of the modules
being run, so what the mode finds is named after where it happens. The hooks are removed
on exit, whatever happened inside.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["ModuleMode"]


class ModuleMode(TorchFunctionMode):
    """Base of nndiag's function modes: ``stack`` holds the modules being run."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.names = {m: n for n, m in model.named_modules()}
        self.stack: list[nn.Module] = []
        self.handles: list[Any] = []

    def __enter__(self) -> Any:
        for module in self.names:
            self.handles.append(module.register_forward_pre_hook(self._push))
            self.handles.append(module.register_forward_hook(self._pop, always_call=True))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            for handle in self.handles:
                handle.remove()
            self.handles.clear()
            self.stack.clear()

    def _push(self, module: nn.Module, args: Any) -> None:
        self.stack.append(module)

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
