"""Backends: one adapter per framework behind one protocol, chosen by the model's type.

Detection only looks at frameworks already in ``sys.modules``: a model of framework X can
only exist once X was imported, so nndiag is never the one to import torch or jax.
Third-party backends register under the ``nndiag.backends`` entry-point group; the object
an entry point names implements :class:`Backend`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from typing import Any, Protocol

from nndiag.backends.base import SessionBase, read_items, unpack, validate_arrays
from nndiag.contract import Batch, LayerRecord, Objective, Session, Task, Trainer
from nndiag.errors import InvalidSubject, describe

__all__ = [
    "Backend",
    "SessionBase",
    "Batch",
    "LayerRecord",
    "Objective",
    "Session",
    "Task",
    "Trainer",
    "backend_for",
    "read_items",
    "unpack",
    "validate_arrays",
]

# name -> (framework module that must already be imported, "module:attribute" of the backend)
_BUILTIN: dict[str, tuple[str, str]] = {
    "torch": ("torch", "nndiag.backends.torch:BACKEND"),
    "jax": ("jax", "nndiag.backends.jax:BACKEND"),
    "numpy": ("numpy", "nndiag.backends.numpy:BACKEND"),  # last: every framework loads numpy
}
ENTRY_POINT_GROUP = "nndiag.backends"
PER_SAMPLE_ROWS = 256  # rows whose individual losses estimate the initial loss's noise


class Backend(Protocol):
    """What a framework adapter provides; see ``nndiag/backends/torch/``."""

    name: str

    def accepts(self, model: Any) -> bool: ...

    def validate_model(self, model: Any, *, optimizer: Any, regularization: Any) -> None: ...

    def read_batches(self, model: Any, data: Any, limit: int) -> list[Batch]: ...

    def session(self, subject: Any, config: Any) -> Session: ...


def _load(target: str) -> Backend:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _candidates() -> Iterator[Backend]:
    for framework, target in _BUILTIN.values():
        if framework in sys.modules:
            try:
                yield _load(target)
            except ImportError:  # a backend module not shipped in this version
                continue
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        yield ep.load()


def backend_for(model: Any) -> Backend:
    """The backend that accepts ``model``.

    Raises:
        InvalidSubject: no installed backend accepts the model.
    """
    for backend in _candidates():
        if backend.accepts(model):
            return backend
    raise InvalidSubject(
        "model",
        f"no nndiag backend accepts {describe(model)}",
        "pass a torch.nn.Module, a (apply_fn, params) pair for JAX, or an object with a "
        "params dict and loss(X, y) -> (loss, grads) (the CS231n protocol)",
    )
