"""``nndiag.compat.torchvision_on_cpu``: the shipped remedy for a CUDA-built torchvision
next to a CPU torch, as a user's conftest calls it (a fresh interpreter, before the first
import of torchvision)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

SCRIPT = """
from nndiag.compat import torchvision_on_cpu
defined = torchvision_on_cpu()
import torchvision
model = torchvision.models.resnet18(num_classes=10)
print("defined" if defined else "not needed", sum(p.numel() for p in model.parameters()))
assert torchvision_on_cpu() is False  # once imported, a no-op
"""


def test_torchvision_imports_and_builds_models_after_the_call() -> None:
    if importlib.util.find_spec("torchvision") is None:  # the dev extra installs it
        pytest.skip("torchvision is not installed")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "11181642"  # resnet18 with 10 classes


def test_importing_compat_imports_no_framework() -> None:
    code = "import sys, nndiag.compat; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr[-2000:]
