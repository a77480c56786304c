"""Global and user-side state a check could touch, saved and given back exactly.

Shared by every backend: the numpy and ``random`` generators, and the plain numbers a
regularization setter may write into (the loss object, the setter's own object, the dicts
and objects either function refers to). Framework state (torch's generators, modules,
tensors) is each backend's own business on top of this.
"""

from __future__ import annotations

import inspect
import random
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["NumberSnapshot", "holders", "references", "rng_guard"]


@contextmanager
def rng_guard() -> Iterator[None]:
    """Leave numpy's and ``random``'s global generators exactly as they were."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def references(fn: Any) -> list[Any]:
    """``fn``, the object it is bound to, and what its code refers to (closure cells and
    globals): where a loss keeps its modules and a setter its strength."""
    found = [fn, getattr(fn, "__self__", None)]
    try:
        refs = inspect.getclosurevars(fn)
        found += [*refs.nonlocals.values(), *refs.globals.values()]
    except (TypeError, ValueError):  # not a Python function: an object, a builtin
        pass
    return [x for x in found if x is not None]


def holders(*functions: Callable[..., Any] | None, extra: tuple[Any, ...] = ()) -> list[Any]:
    """Objects a regularization setter may write its strength into: the functions' own
    objects, and the dicts and plain objects they refer to (closure cells, globals)."""
    found: list[Any] = list(extra)
    for fn in functions:
        if fn is None:
            continue
        for c in references(fn):
            plain = hasattr(c, "__dict__") and not isinstance(
                c, (type, types.ModuleType, types.FunctionType, types.MethodType)
            )
            if (isinstance(c, dict) or plain) and all(c is not f for f in found):
                found.append(c)
    return found


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    shape = getattr(value, "shape", None)  # 1-element arrays and tensors
    return isinstance(shape, tuple) and int(np.prod(shape)) == 1


class NumberSnapshot:
    """The number-valued entries and attributes of some objects, put back by identity."""

    def __init__(self, owners: list[Any]) -> None:
        self.items: list[tuple[Any, str, Any]] = []
        for owner in owners:
            try:
                mapping = owner if isinstance(owner, dict) else vars(owner)
            except TypeError:
                continue
            self.items += [
                (owner, k, v)
                for k, v in list(mapping.items())
                if _is_number(v) and not str(k).startswith("__")
            ]

    def restore(self) -> None:
        for owner, key, value in self.items:
            if isinstance(owner, dict):
                if owner.get(key, value) is not value:
                    owner[key] = value
            elif vars(owner).get(key, value) is not value:
                setattr(owner, key, value)
