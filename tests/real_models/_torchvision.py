"""Make ``import torchvision`` work next to a CPU-only torch.

torchvision's PyPI wheels are CUDA builds: their compiled ops (``_C.so``) link against
``libtorch_cuda.so`` and do not load with the CPU torch wheel. torchvision then runs on
without its custom ops (``torchvision.extension._has_ops()`` is False), except that
``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` unconditionally, which raises "operator torchvision::nms does not
exist". Defining those two schemas (no kernels) before the first import lets the
registration through; the model constructors never use the detection ops, and calling
``torchvision.ops.nms`` still fails loudly (no CPU kernel).

Import this module before torchvision, timm or transformers (which import torchvision).
"""

from __future__ import annotations

import sys

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

# Kept alive for the life of the process: a Library's registrations die with it.
_LIBRARY: torch.library.Library | None = None


def ensure_importable() -> None:
    """Define the schemas torchvision's import needs when its compiled ops cannot load."""
    global _LIBRARY
    if _LIBRARY is not None or "torchvision" in sys.modules:
        return
    missing = [name for name in _SCHEMAS if not _has_schema(name)]
    if not missing or _compiled_ops_load():
        return
    _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _LIBRARY.define(_SCHEMAS[name])


def _has_schema(name: str) -> bool:
    try:
        torch._C._get_schema(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def _compiled_ops_load() -> bool:
    """Whether torchvision's ``_C`` extension loads (a build matching this torch)."""
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False  # not installed: the import fails on its own terms
    library = next(Path(spec.origin).parent.glob("_C.*"), None)
    if library is None:
        return False
    try:
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError):
        return False
    return True


ensure_importable()
