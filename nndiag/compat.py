"""Working around the environments users have: ``torchvision_on_cpu()``.

torchvision's PyPI wheels are CUDA builds: their compiled ops (``_C.so``) link against
``libtorch_cuda.so`` and do not load next to the CPU torch wheel. torchvision then runs on
without its custom ops, except that its ``_meta_registrations.py`` registers fake kernels
for ``torchvision::nms`` and ``torchvision::qnms`` unconditionally, which raises "operator
torchvision::nms does not exist" at ``import torchvision`` (and so at ``from transformers
import ...`` and ``import timm``). The supported fix is the CPU build of torchvision from
PyTorch's CPU index (docs/your-project.md); where that is not an option,
:func:`torchvision_on_cpu` defines those two schemas (no kernels) before the first import.

Nothing here imports torch until called: the module is safe to import anywhere.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["torchvision_on_cpu"]

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

# Kept alive for the life of the process: a Library's registrations die with it.
_LIBRARY: Any = None


def torchvision_on_cpu() -> bool:
    """Let ``import torchvision`` (and timm's and transformers' imports of it) work where
    torchvision's compiled ops cannot load: a CUDA build of torchvision next to a CPU-only
    torch. Call it before the first import of torchvision; a no-op when the ops load, when
    torchvision is already imported, or when it is not installed.

    Returns:
        Whether it defined the missing operator schemas (torchvision then runs without its
        detection ops: ``torchvision.ops.nms`` raises, the model constructors work).
    """
    global _LIBRARY
    if _LIBRARY is not None or "torchvision" in sys.modules:
        return False
    import torch

    missing = [name for name in _SCHEMAS if not _has_schema(name)]
    if not missing or _compiled_ops_load():
        return False
    _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _LIBRARY.define(_SCHEMAS[name])
    return True


def _has_schema(name: str) -> bool:
    import torch

    try:
        torch._C._get_schema(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def _compiled_ops_load() -> bool:
    """Whether torchvision's ``_C`` extension loads (a build matching this torch)."""
    from importlib.util import find_spec
    from pathlib import Path

    import torch

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
