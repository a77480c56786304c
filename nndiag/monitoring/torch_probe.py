"""The monitor's measurements on a torch model, taken on sampled steps only.

Armed after the step before a sampled one, the probe adds hooks and removes them once it
has what it needs: the weights are copied when armed; the first training-mode forward runs
under nndiag's activation :class:`~nndiag.backends.torch.capture.Recorder`; the
optimizer's step post-hook reads the gradients (at ``mon.step`` without an optimizer); the
update is measured at ``mon.step``, after every optimizer of the loop has stepped. Nothing
is kept between samples, nothing of the user's (weights, gradients, optimizer state, modes)
is written, and the hooks hold the probe weakly: a monitor dropped without ``close()``
takes its hooks with it.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from nndiag.backends.torch.capture import Recorder
from nndiag.monitoring.findings import LayerSample, Sample, layer_sample

__all__ = ["TorchProbe"]

_BINS = 8  # the recorder's histogram: unused here, kept small


def _weak(method: Callable[..., Any]) -> Callable[..., Any]:
    """A hook that calls ``method`` while its object lives, and does nothing after."""
    ref = weakref.WeakMethod(method)

    def hook(*args: Any) -> Any:
        bound = ref()
        return None if bound is None else bound(*args)

    return hook


def _remove(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


class TorchProbe:
    """Sampled statistics of one torch model (and its optimizer, when given)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.names = {p: n for n, p in model.named_parameters()}
        self.handles: list[Any] = []
        weakref.finalize(self, _remove, self.handles)  # a monitor dropped unclosed
        self.recorder: Recorder | None = None
        self.finished: Recorder | None = None  # exited, its module hooks still to remove
        self.layers: tuple[LayerSample, ...] = ()
        self.before: dict[str, torch.Tensor] = {}
        self.grads: dict[str, float] = {}
        self.skipped = False  # a step a gradient scaler skipped (inf/NaN gradients)
        self.stepped = False  # the optimizer's step ran since armed

    def lr(self) -> float | None:
        """The first parameter group's learning rate, when there is one to read."""
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        value = groups[0].get("lr") if groups else None
        return float(value) if isinstance(value, (int, float, torch.Tensor)) else None

    def arm(self) -> None:
        """Hook the next training forward and optimizer step."""
        self.close()
        self.layers, self.before, self.grads = (), {}, {}
        self.skipped = self.stepped = False
        self.handles.append(self.model.register_forward_pre_hook(_weak(self._enter)))
        self.handles.append(self.model.register_forward_hook(_weak(self._exit), always_call=True))
        self._copy_weights()  # every optimizer of the loop steps between here and collect()
        if self.optimizer is not None:
            self.handles.append(self.optimizer.register_step_post_hook(_weak(self._post_step)))

    def collect(self, step: int) -> Sample:
        """What the armed hooks saw; the hooks are removed."""
        if self.optimizer is None:
            self._read_gradients()
        ratios, moved = self._measure()
        if not moved and not self.stepped:
            self.skipped = True  # nothing stepped: a scaler skipped it, or no step ran
        self.close()
        grads = {} if self.skipped else self.grads
        still = tuple(n for n, g in grads.items() if g > 0 and n not in moved)
        held = self._held()
        finite = [g for g in grads.values() if math.isfinite(g)]
        return Sample(
            step=step,
            ratios={} if self.skipped else ratios,
            still=still,
            unheld=tuple(n for n in still if n not in held),
            grad_norm=math.sqrt(sum(g * g for g in finite)) if grads else None,
            nonfinite_grads=tuple(n for n, g in grads.items() if not math.isfinite(g)),
            layers=self.layers,
            lr=self.lr(),
        )

    def close(self) -> None:
        _remove(self.handles)
        if self.recorder is not None:  # a forward that never returned
            self._leave(self.recorder)
        if self.finished is not None:
            _remove(self.finished.handles)
            self.finished.stack.clear()
            self.finished = None
        self.before = {}

    # ------------------------------------------------------------------ hooks

    def _enter(self, module: nn.Module, args: Any) -> None:
        if self.recorder is None and self.finished is None and module.training:
            self.recorder = Recorder(self.model, _BINS)
            self.recorder.__enter__()

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.recorder is None:
            return
        recorder = self.recorder
        self._leave(recorder)
        self.layers = tuple(layer_sample(r) for r in recorder.layers())

    def _leave(self, recorder: Recorder) -> None:
        """Leave the recorder's function mode now, and remove its module hooks later: this
        runs inside the model's own hook loop, which a removal would break (torch iterates
        the live hook dict when the forward raised)."""
        TorchFunctionMode.__exit__(recorder, None, None, None)
        self.recorder, self.finished = None, recorder
        self.handles.extend(recorder.handles)  # removed with ours, by close() or finalize

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        # The gradients after the step: a step given a closure (LBFGS, Lightning) computes
        # them inside it, after the pre-hook. A fused optimizer under a gradient scaler
        # steps even when the scaled gradients overflowed (it skips inside): that step,
        # which the scaler handles, is no finding.
        # GradScaler hands a fused optimizer found_inf as an attribute (whose kernel unscales
        # the gradients in place: read as they are after the step).
        self.stepped = True
        found_inf = kwargs.get("found_inf", getattr(optimizer, "found_inf", None))
        if found_inf is not None and float(found_inf) > 0:
            self.skipped = True
            return
        self._read_gradients()

    # ------------------------------------------------------------------ measurements

    def _read_gradients(self) -> None:
        with torch.no_grad():
            for p, name in self.names.items():
                if p.grad is not None:
                    self.grads[name] = float(p.grad.detach().float().norm())

    def _copy_weights(self) -> None:
        with torch.no_grad():
            self.before = {n: p.detach().clone() for p, n in self.names.items() if p.requires_grad}

    def _measure(self) -> tuple[dict[str, float], set[str]]:
        """Per weight matrix the update over the weights' norm, and the tensors that moved,
        since the copy (after every optimizer of the loop has stepped)."""
        ratios: dict[str, float] = {}
        moved: set[str] = set()
        with torch.no_grad():
            for p, name in self.names.items():
                old = self.before.get(name)
                if old is None:
                    continue
                change = float((p.detach() - old).float().norm())
                if change > 0 or not math.isfinite(change):  # NaN weights moved too
                    moved.add(name)
                if p.ndim >= 2:
                    scale = float(old.float().norm())
                    ratios[name] = change / scale if scale > 0 else math.inf
        return ratios, moved

    def _held(self) -> set[str]:
        if self.optimizer is None:
            return set(self.names.values())
        groups = self.optimizer.param_groups
        return {self.names[p] for g in groups for p in g["params"] if p in self.names}
