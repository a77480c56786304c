"""What a torch model takes and gives back: a tensor, or a dict of tensors (Hugging Face
``input_ids``, ``attention_mask``, decoder inputs) in; a tensor, a ``ModelOutput`` with
``.logits``, a dict with ``"logits"`` or a tuple led by the logits out.

Every row operation of the backend goes through here, so a dict batch is sliced, indexed,
concatenated and moved like a tensor one, key by key.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = [
    "call",
    "concat",
    "float_inputs",
    "is_inputs",
    "length",
    "logits",
    "logits_source",
    "output_rows",
    "real_positions",
    "rows",
    "sequence",
    "to",
    "with_logits",
    "with_others",
    "with_sequence",
]

_SEQUENCE_KEY = "input_ids"  # transformers' name for the token ids
_MASK_KEY = "attention_mask"  # ... and for the mask of real (1) and padding (0) tokens


def is_inputs(value: Any) -> bool:
    """A tensor, or a non-empty mapping of names to tensors."""
    if isinstance(value, torch.Tensor):
        return True
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def length(X: Any) -> int:
    """Rows of a batch of inputs (a dict's first entry's)."""
    if isinstance(X, Mapping):
        return len(next(iter(X.values())))
    return len(X)


def rows(X: Any, index: Any) -> Any:
    """``X[index]`` for a tensor; key by key for a dict."""
    if isinstance(X, Mapping):
        return {k: v[index] for k, v in X.items()}
    return X[index]


def concat(parts: list[Any]) -> Any:
    """Rows of several batches as one."""
    if parts and isinstance(parts[0], Mapping):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def to(X: Any, device: torch.device) -> Any:
    """On ``device`` and out of any graph: a check's backward must never reach the user's
    tensors (an ``X`` with ``requires_grad`` would get a ``.grad``)."""
    if isinstance(X, Mapping):
        return {k: v.detach().to(device) for k, v in X.items()}
    return X.detach().to(device)


def float_inputs(X: Any) -> bool:
    """Whether the inputs are one floating-point tensor (differentiable with respect to)."""
    return isinstance(X, torch.Tensor) and X.is_floating_point()


def call(model: torch.nn.Module, X: Any) -> Any:
    """``model(X)``, or ``model(**X)`` for a dict of named inputs."""
    return model(**X) if isinstance(X, Mapping) else model(X)


def logits(out: Any) -> torch.Tensor | None:
    """The tensor a loss reads from a model's output, or None when there is none."""
    if isinstance(out, torch.Tensor):
        return out
    found = getattr(out, "logits", None)  # transformers' ModelOutput
    if isinstance(found, torch.Tensor):
        return found
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def logits_source(out: Any) -> str:
    """Where :func:`logits` found its tensor, in words for messages."""
    if isinstance(out, torch.Tensor):
        return "the tensor the model returned"
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return f"the .logits of the {type(out).__name__} the model returned"
    if isinstance(out, Mapping):
        return "the 'logits' entry of the dict the model returned"
    return f"the first element of the {type(out).__name__} of {len(out)} the model returned"


def with_logits(out: Any, scores: torch.Tensor) -> Any:
    """``out`` with exactly the tensor :func:`logits` reads replaced by ``scores``, the rest
    (a VAE's ``mu`` and ``logvar``, a ModelOutput's other fields) as the model returned it."""
    if isinstance(out, torch.Tensor):
        return scores
    if isinstance(out, Mapping) and "logits" in out:  # a dict; transformers' ModelOutput
        fields = {**out, "logits": scores}
        return fields if type(out) is dict else type(out)(**fields)
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        if hasattr(out, "_replace"):  # a namedtuple with a logits field
            return out._replace(logits=scores)
        if dataclasses.is_dataclass(out) and not isinstance(out, type):
            return dataclasses.replace(out, logits=scores)
        changed = copy.copy(out)
        changed.logits = scores
        return changed
    if hasattr(out, "_replace"):  # a namedtuple led by its scores
        return out._replace(**{out._fields[0]: scores})
    return type(out)([scores, *out[1:]])


def _map_tensors(value: Any, change: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``change`` applied to every tensor in it, the containers (dict,
    ModelOutput, tuple, namedtuple, list) rebuilt as they were; other values as they are."""
    if isinstance(value, torch.Tensor):
        return change(value)
    if isinstance(value, Mapping):
        fields = {k: _map_tensors(v, change) for k, v in value.items()}
        return fields if type(value) is dict else type(value)(**fields)
    if isinstance(value, (tuple, list)):
        parts = [_map_tensors(v, change) for v in value]
        return type(value)(*parts) if hasattr(value, "_fields") else type(value)(parts)
    return value


def with_others(out: Any, change: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``out`` with ``change`` applied to every floating tensor in it except the one
    :func:`logits` reads: whether a loss reads the model's other outputs."""
    scores = logits(out)
    return _map_tensors(out, lambda t: t if t is scores or not t.is_floating_point() else change(t))


def output_rows(out: Any, index: slice, n: int) -> Any:
    """Rows ``index`` of every tensor in ``out`` that has ``n`` rows (one per sample);
    other values (a scalar loss, None) as they are."""
    return _map_tensors(out, lambda t: t[index] if t.ndim and len(t) == n else t)


def sequence(X: Any) -> torch.Tensor | None:
    """The inputs read along axis 1: a tensor of at least two axes, a dict's token ids."""
    found = X.get(_SEQUENCE_KEY) if isinstance(X, Mapping) else X
    return found if isinstance(found, torch.Tensor) and found.ndim >= 2 else None


def with_sequence(X: Any, values: torch.Tensor) -> Any:
    """``X`` with its sequence replaced; a dict's other per-position inputs (an attention
    mask) cut to the new length."""
    if not isinstance(X, Mapping):
        return values
    old = X[_SEQUENCE_KEY].shape[1]
    cut = {
        k: v[:, : values.shape[1]] if v.ndim >= 2 and v.shape[1] == old else v for k, v in X.items()
    }
    return {**cut, _SEQUENCE_KEY: values}


def real_positions(X: Any) -> torch.Tensor | None:
    """A dict's attention mask as booleans, when it marks some positions as padding."""
    if not isinstance(X, Mapping) or not isinstance(X.get(_MASK_KEY), torch.Tensor):
        return None
    ids, mask = X.get(_SEQUENCE_KEY), X[_MASK_KEY]
    if not isinstance(ids, torch.Tensor) or mask.shape != ids.shape or bool(mask.all()):
        return None
    return mask != 0
