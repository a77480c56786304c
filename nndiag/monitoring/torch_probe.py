"""The monitor's measurements on a torch model, taken on sampled steps only.

Armed after the step before a sampled one, the probe adds hooks and removes them once it
has what it needs: the first training-mode forward runs under nndiag's activation
:class:`~nndiag.backends.torch.capture.Recorder`; the optimizer's step pre-hook copies the
weights, its post-hook reads the gradients and measures the update. Without an optimizer
the weights are copied when armed and the gradients read at ``mon.step``. Nothing is kept
between samples, and nothing of the user's (weights, gradients, optimizer state, modes) is
written.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from nndiag.backends.torch.capture import Recorder
from nndiag.monitoring.findings import LayerSample, Sample

__all__ = ["TorchProbe"]

_BINS = 8  # the recorder's histogram: unused here, kept small


class TorchProbe:
    """Sampled statistics of one torch model (and its optimizer, when given)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.names = {p: n for n, p in model.named_parameters()}
        self.handles: list[Any] = []
        self.recorder: Recorder | None = None
        self.layers: tuple[LayerSample, ...] = ()
        self.before: dict[str, torch.Tensor] = {}
        self.grads: dict[str, float] = {}
        self.ratios: dict[str, float] = {}
        self.moved: set[str] = set()

    def lr(self) -> float | None:
        """The first parameter group's learning rate, when there is one to read."""
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        value = groups[0].get("lr") if groups else None
        return float(value) if isinstance(value, (int, float, torch.Tensor)) else None

    def arm(self) -> None:
        """Hook the next training forward and optimizer step."""
        self.close()
        self.layers, self.before, self.grads, self.ratios, self.moved = (), {}, {}, {}, set()
        self.handles.append(self.model.register_forward_pre_hook(self._enter))
        self.handles.append(self.model.register_forward_hook(self._exit, always_call=True))
        if self.optimizer is None:
            self._copy_weights()
            return
        self.handles.append(self.optimizer.register_step_pre_hook(self._pre_step))
        self.handles.append(self.optimizer.register_step_post_hook(self._post_step))

    def collect(self, step: int) -> Sample:
        """What the armed hooks saw; the hooks are removed."""
        if self.optimizer is None:
            self._read_gradients()
            self._measure()
        self.close()
        held = self._held()
        still = tuple(n for n, g in self.grads.items() if g > 0 and n not in self.moved)
        finite = [g for g in self.grads.values() if math.isfinite(g)]
        return Sample(
            step=step,
            ratios=dict(self.ratios),
            still=still,
            unheld=tuple(n for n in still if n not in held),
            grad_norm=math.sqrt(sum(g * g for g in finite)) if self.grads else None,
            nonfinite_grads=tuple(n for n, g in self.grads.items() if not math.isfinite(g)),
            layers=self.layers,
            lr=self.lr(),
        )

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        if self.recorder is not None:  # a forward that never returned
            self.recorder.__exit__(None, None, None)
            self.recorder = None
        self.before = {}

    # ------------------------------------------------------------------ hooks

    def _enter(self, module: nn.Module, args: Any) -> None:
        if self.recorder is None and not self.layers and module.training:
            self.recorder = Recorder(self.model, _BINS)
            self.recorder.__enter__()

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.recorder is None:
            return
        recorder, self.recorder = self.recorder, None
        recorder.__exit__(None, None, None)
        self.layers = tuple(
            LayerSample(
                name=r.name,
                kind=r.kind,
                dead=float((r.fires == 0).mean())
                if r.kind == "relu" and r.fires is not None
                else None,
                std=r.std,
                gate=bool(r.gate),
            )
            for r in recorder.layers()
        )

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._copy_weights()

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        # The gradients after the step: a step given a closure (LBFGS, Lightning) computes
        # them inside it, after the pre-hook; the step itself leaves them as they were.
        self._read_gradients()
        self._measure()

    # ------------------------------------------------------------------ measurements

    def _read_gradients(self) -> None:
        with torch.no_grad():
            for p, name in self.names.items():
                if p.grad is not None:
                    self.grads[name] = float(p.grad.detach().float().norm())

    def _copy_weights(self) -> None:
        with torch.no_grad():
            self.before = {n: p.detach().clone() for p, n in self.names.items() if p.requires_grad}

    def _measure(self) -> None:
        with torch.no_grad():
            for p, name in self.names.items():
                old = self.before.get(name)
                if old is None:
                    continue
                change = float((p.detach() - old).float().norm())
                if change > 0:
                    self.moved.add(name)
                if p.ndim >= 2:
                    scale = float(old.float().norm())
                    self.ratios[name] = change / scale if scale > 0 else math.inf
        self.before = {}

    def _held(self) -> set[str]:
        if self.optimizer is None:
            return set(self.names.values())
        return {
            self.names[p]
            for g in self.optimizer.param_groups
            for p in g["params"]
            if p in self.names
        }
