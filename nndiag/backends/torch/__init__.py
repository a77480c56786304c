"""PyTorch backend: any ``torch.nn.Module``.

Checks never run on the user's tensors. For the length of a check every parameter and
buffer slot of the model (and of a loss that is a module) holds a private clone, swapped in
through ``setattr`` so that a loss or regularization closure reading ``model.fc.weight``
sees exactly what the check differentiates or trains. The originals are put back in
``finally``, and a snapshot taken beforehand restores anything else a check could touch
(modes, plain-number attributes, ``requires_grad``, ``.grad``, RNG states).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from nndiag.backends import Batch, read_items, unpack, validate_arrays
from nndiag.backends.torch import inputs
from nndiag.backends.torch.session import TorchSession, rng_devices, torch_rng_guard
from nndiag.errors import InvalidSubject, describe

__all__ = ["BACKEND", "TorchBackend", "TorchSession"]


def _is_array(value: Any) -> bool:
    """What leads a single batch: a tensor, an array, or a dict of named input tensors."""
    return isinstance(value, np.ndarray) or inputs.is_inputs(value)


def _nonfinite(value: torch.Tensor) -> int:
    return int((~torch.isfinite(value)).sum()) if value.is_floating_point() else 0


def _did_you_mean(model: nn.Module, name: str) -> str:
    """`` (did you mean 'l2'?)`` for the model's number attribute closest to ``name``."""
    numbers = [
        key
        for key, value in {**vars(type(model)), **vars(model), **model._buffers}.items()
        if not key.startswith("_")
        and (
            (isinstance(value, (int, float)) and not isinstance(value, bool))
            or (isinstance(value, torch.Tensor) and value.numel() == 1)
        )
    ]
    same_case = [key for key in numbers if key.lower() == name.lower()]
    close = same_case or difflib.get_close_matches(name, numbers, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class TorchBackend:
    """Adapter for ``torch.nn.Module`` models."""

    name = "torch"

    def accepts(self, model: Any) -> bool:
        return isinstance(model, nn.Module)

    def validate_model(self, model: Any, *, optimizer: Any, regularization: Any) -> None:
        if isinstance(model, torch.jit.ScriptModule):
            raise InvalidSubject(
                "model",
                f"{type(model).__name__} is a TorchScript module, which takes no hooks "
                "(activation capture and NaN localization need them)",
                "diagnose the nn.Module before torch.jit.script / torch.jit.trace",
            )
        params = list(model.parameters())
        if any(nn.parameter.is_lazy(p) for p in params):
            raise InvalidSubject(
                "model",
                "it has uninitialized lazy parameters (a Lazy* module before its first forward)",
                "run one forward pass, model(X), before diagnosing",
            )
        if any(p.is_meta for p in params):
            raise InvalidSubject(
                "model",
                "its parameters are on the meta device and hold no values",
                "materialize it (model.to_empty(device='cpu'), then initialize or load "
                "the weights)",
            )
        if not params:
            raise InvalidSubject(
                "model",
                f"{type(model).__name__} has no parameters",
                "diagnose a model with trainable layers",
            )
        if not any(p.requires_grad for p in params):
            raise InvalidSubject(
                "model",
                "every parameter has requires_grad=False",
                "unfreeze the layers to diagnose (p.requires_grad_(True))",
            )
        if optimizer is not None and not (
            isinstance(optimizer, torch.optim.Optimizer) or callable(optimizer)
        ):
            raise InvalidSubject(
                "optimizer",
                f"expected a callable, got {describe(optimizer)}",
                "pass optimizer=lambda params: torch.optim.SGD(params, lr=0.1)",
            )
        if isinstance(regularization, str):
            if not hasattr(model, regularization):
                raise InvalidSubject(
                    "regularization",
                    f"{type(model).__name__} has no attribute {regularization!r}"
                    f"{_did_you_mean(model, regularization)}",
                    "name the model attribute the loss reads its strength from, or pass a "
                    "function (model, strength) -> None",
                )
            value = getattr(model, regularization, None)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not numeric and not (isinstance(value, torch.Tensor) and value.numel() == 1):
                raise InvalidSubject(
                    "regularization",
                    f"model attribute {regularization!r} is {describe(value)}, not a number",
                    "name the model attribute the loss reads its strength from, or pass a "
                    "function (model, strength) -> None",
                )

    def read_batches(self, model: Any, data: Any, limit: int) -> list[Batch]:
        """Read up to ``limit`` batches without touching the global RNGs (a shuffling
        DataLoader draws from them)."""
        items = read_items(data, limit, _is_array, torch_rng_guard(rng_devices(model)))
        device = next(model.parameters()).device
        return [self._batch(item, i, device) for i, item in enumerate(items)]

    def _batch(self, item: Any, index: int, device: torch.device) -> Batch:
        where, *pair = unpack(item, index)
        X, y = (torch.as_tensor(v) if isinstance(v, np.ndarray) else v for v in pair)
        if isinstance(X, Mapping):  # named inputs: input_ids, attention_mask, ...
            X = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in X.items()}
        for arg, value in (("X", X), ("y", y)):
            if not inputs.is_inputs(value) or (arg == "y" and isinstance(value, Mapping)):
                raise InvalidSubject(
                    where,
                    f"{arg} is {describe(value)}, not a tensor"
                    + (" or a dict of tensors" if arg == "X" else ""),
                    f"convert {arg} with torch.as_tensor",
                )
        for value in X.values() if isinstance(X, Mapping) else (X,):
            validate_arrays(where, value, y, _nonfinite)
        return Batch(inputs.to(X, device), y.detach().to(device))

    def session(self, subject: Any, config: Any) -> TorchSession:
        return TorchSession(subject, config)


BACKEND = TorchBackend()
