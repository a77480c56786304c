"""Make ``import torchvision`` work next to a CPU-only torch (see :mod:`nndiag.compat`).

Import this module before torchvision, timm or transformers (which import torchvision).
"""

from __future__ import annotations

from nndiag.compat import torchvision_on_cpu

torchvision_on_cpu()
