"""Set-up for the real-model tests: torchvision importable next to a CPU-only torch, no
network, one thread."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from tests.real_models import _torchvision  # noqa: F401  (before anything imports torchvision)

# Every model here is built from a config: nothing is downloaded.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
