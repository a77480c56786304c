"""Activation capture for torch: a ``TorchFunctionMode`` that records activation statistics."""

from __future__ import annotations

import weakref
from typing import Any, cast

import torch
from torch import nn

from nndiag.backends import LayerRecord
from nndiag.backends.capture import Accumulator
from nndiag.backends.torch.modes import ModuleMode

__all__ = ["Recorder"]


def _activation_kinds() -> dict[Any, str]:
    F = nn.functional
    kinds: dict[Any, str] = {}
    for kind, funcs in {
        "relu": (
            F.relu,
            F.relu_,
            torch.relu,
            torch.relu_,
            torch.Tensor.relu,
            torch.Tensor.relu_,
            F.relu6,
        ),
        "tanh": (torch.tanh, torch.tanh_, torch.Tensor.tanh, torch.Tensor.tanh_),
        "sigmoid": (torch.sigmoid, torch.sigmoid_, torch.Tensor.sigmoid, torch.Tensor.sigmoid_),
        # MobileNetV3's squeeze-excitation gate: seen, so that it can be left out as one
        "hardsigmoid": (F.hardsigmoid,),
    }.items():
        kinds.update(dict.fromkeys(funcs, kind))
    for func in (
        F.leaky_relu,
        F.gelu,
        F.silu,
        F.elu,
        F.selu,
        F.celu,
        F.softplus,
        F.mish,
        F.hardtanh,
        F.hardswish,
    ):
        kinds[func] = func.__name__
    return kinds


_KINDS = _activation_kinds()
_ACTIVATION_MODULES = tuple(
    getattr(nn, n)
    for n in (
        "ReLU",
        "ReLU6",
        "Tanh",
        "Sigmoid",
        "Hardsigmoid",
        "LeakyReLU",
        "GELU",
        "SiLU",
        "ELU",
        "SELU",
        "CELU",
        "Softplus",
        "Mish",
        "Hardtanh",
        "Hardswish",
    )
)


# A multiplication: an activation output among its operands, with another tensor, is a gate.
_MULTIPLY = frozenset(
    {
        torch.mul,
        torch.multiply,
        torch.Tensor.mul,
        torch.Tensor.mul_,
        torch.Tensor.__mul__,
        torch.Tensor.__rmul__,
        torch.Tensor.__imul__,
    }
)
# Ops that pass a tensor on unchanged in value (a gate is often expanded or reshaped).
_VIEWS = frozenset(
    {
        torch.Tensor.expand,
        torch.Tensor.expand_as,
        torch.Tensor.view,
        torch.Tensor.view_as,
        torch.Tensor.reshape,
        torch.reshape,
        torch.Tensor.unsqueeze,
        torch.unsqueeze,
        torch.Tensor.flatten,
        torch.flatten,
        torch.Tensor.__getitem__,
        torch.Tensor.squeeze,
        torch.Tensor.permute,
        torch.Tensor.transpose,
        torch.Tensor.contiguous,
    }
)


def _normalizing() -> frozenset[Any]:
    """Functions that normalize their input: the norm layers' functional forms, and the
    ``rsqrt`` that hand-written RMS/layer norms (transformers' Llama and T5) divide by."""
    F = nn.functional
    names = ("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm")
    found: set[Any] = {getattr(F, n) for n in names if hasattr(F, n)}
    found |= {torch.rsqrt, torch.Tensor.rsqrt, torch.Tensor.rsqrt_}
    return frozenset(found)


_NORMALIZING = _normalizing()


def _hardtanh_floor(args: Any, kwargs: Any) -> float:
    if len(args) > 1:
        return float(args[1])
    return float((kwargs or {}).get("min_val", -1.0))


class Recorder(ModuleMode):
    """Reduce every activation function's output to per-layer statistics as it happens.

    A ``TorchFunctionMode`` sees functional calls (``F.relu``, ``torch.tanh``) that module
    hooks miss; module hooks only keep the name of the module being run, so that a layer is
    named after where it happens. Nothing the size of a batch is kept.
    """

    def __init__(self, model: nn.Module, bins: int) -> None:
        super().__init__(model)
        self.model = model
        self.stats = Accumulator(bins)
        self.feeds: dict[str, tuple[str, nn.Module]] = {}  # layer -> weight layer feeding it
        self.weight: tuple[str, nn.Module] | None = None
        self.seen: dict[str, int] = {}
        self.normalized = False  # a normalization ran since the last activation
        self.ran: dict[str, None] = {}  # weight layers in the order they first ran
        # Activation outputs of this pass (weakly: nothing batch-sized is kept), to see
        # which of them multiply another tensor: the gates.
        self.outputs: dict[int, tuple[weakref.ref[torch.Tensor], str]] = {}
        self.gates: set[str] = set()
        self.pooled: set[str] = set()
        # The activation whose output (or a view of it) the model returned as its scores.
        self.output: str | None = None

    def __enter__(self) -> Recorder:
        self.seen = {}
        self.weight = None
        self.normalized = False
        self.outputs = {}
        return super().__enter__()

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        super()._pop(module, args, output)
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.ndim >= 2:
            self.weight = (self.names[module], module)
            self.ran.setdefault(self.names[module], None)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in _NORMALIZING:
            self.normalized = True
        if func in _MULTIPLY or func in _VIEWS:
            self._follow(func, args, out)
        kind = _KINDS.get(func)
        if kind == "hardtanh" and _hardtanh_floor(args, kwargs) == 0.0:
            kind = "relu"  # nn.ReLU6 runs as hardtanh(x, 0, 6): a ReLU-family unit
        if kind is not None and isinstance(out, torch.Tensor) and out.is_floating_point():
            name = self._record(kind, out.detach())
            self.outputs[id(out)] = (weakref.ref(out), name)
        return out

    def returned(self, scores: torch.Tensor) -> None:
        """The scores the model returned in this pass: the activation that made them (a
        decoder's sigmoid) is the model's output activation, followed by the data."""
        self.output = self._recorded(scores)

    def _recorded(self, x: Any) -> str | None:
        """The activation ``x`` is the output of (or a view of), if any."""
        found = self.outputs.get(id(x)) if isinstance(x, torch.Tensor) else None
        return found[1] if found is not None and found[0]() is x else None

    def _follow(self, func: Any, args: Any, out: Any) -> None:
        names = [self._recorded(a) for a in args[:2]]
        if func in _VIEWS:
            if names and names[0] is not None and isinstance(out, torch.Tensor):
                self.outputs[id(out)] = (weakref.ref(out), names[0])
            return
        tensors = [a for a in args[:2] if isinstance(a, torch.Tensor) and a.numel() > 1]
        if len(tensors) == 2:
            for name, other in zip(names, reversed(args[:2])):
                if name is not None and self._recorded(other) != name:
                    self.gates.add(name)

    def _layer_name(self, kind: str) -> str:
        top = self.stack[-1] if self.stack else None
        if top is not None and isinstance(top, _ACTIVATION_MODULES):
            base = self.names[top]
            if base.rpartition(".")[2].isdigit():  # "layers.3" says little; "layers.3:relu"
                base = f"{base}:{kind}"
        else:
            where = self.names.get(top, "") if top is not None else ""
            base = f"{where}.{kind}" if where else kind
        self.seen[base] = self.seen.get(base, 0) + 1
        return base if self.seen[base] == 1 else f"{base}#{self.seen[base]}"

    def _record(self, kind: str, x: torch.Tensor) -> str:
        name = self._layer_name(kind)
        if x.ndim <= 2 or all(d == 1 for d in x.shape[2:]):
            self.pooled.add(name)
        conv = self.weight is not None and isinstance(self.weight[1], nn.modules.conv._ConvNd)
        if x.ndim >= 2:
            x = x.movedim(1, -1) if conv else x  # a conv layer's units are its channels
            x = x.reshape(-1, x.shape[-1])
        else:
            x = x.reshape(-1, 1)
        if self.weight is not None and name not in self.stats.records:
            self.feeds[name] = self.weight
        self.stats.add(name, kind, x.float().cpu().numpy(), normalized=self.normalized)
        self.normalized = False
        return name

    def layers(self) -> list[LayerRecord]:
        layers = self.stats.layers()
        for layer in layers:
            layer.gate, layer.pooled = layer.name in self.gates, layer.name in self.pooled
            layer.output = layer.name == self.output
        for layer in layers:  # weight statistics once, after the pass, not inside it
            if layer.name in self.feeds:
                name, module = self.feeds[layer.name]
                # _pop records only modules whose weight is a tensor
                w = cast(torch.Tensor, module.weight).detach()
                layer.weight_layer, layer.fan_in = name, int(w[0].numel())
                layer.weight_std = float(w.float().std(correction=0))
        return layers
