"""Every default check gives the same verdict for a model fed one tensor of N rows or a
DataLoader of N/4-row batches, for N from 8 to 128: how the data arrives is not the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import nndiag
from nndiag.backends.torch import inputs
from tests import models


class _Rows(Dataset):
    """(inputs, target) rows of a tensor or of a dict of tensors (Hugging Face inputs)."""

    def __init__(self, X: Any, y: torch.Tensor) -> None:
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        return inputs.rows(self.X, i), self.y[i]


def _statuses(factory: Callable[[int], nndiag.Subject], rows: int, loader: bool) -> dict:
    subject = factory(0)
    batch = subject.batches[0]
    reps = -(-rows // len(batch.X))  # repeat a small batch up to the rows asked for
    X = inputs.rows(inputs.concat([batch.X] * reps), slice(0, rows))  # a tensor or a dict
    y = torch.cat([batch.y] * reps)[:rows]
    data = DataLoader(_Rows(X, y), batch_size=max(rows // 4, 2)) if loader else (X, y)
    fed = nndiag.Subject(subject.model, data, loss=subject.loss, optimizer=subject.optimizer)
    return {r.check: r.status for r in nndiag.diagnose(fed, config=nndiag.Config(seed=0))}


@pytest.mark.parametrize("rows", [8, 32, 128])
@pytest.mark.parametrize("name", ["he_relu_mlp", "cnn_batchnorm"])
def test_a_tensor_and_a_loader_of_smaller_batches_get_the_same_verdicts(
    name: str, rows: int
) -> None:
    factory = models.HEALTHY[name]
    assert _statuses(factory, rows, loader=False) == _statuses(factory, rows, loader=True)


def _library(name: str) -> Callable[[int], nndiag.Subject]:
    from tests.real_models import models as library

    return library.HEALTHY[name]


LIBRARY = (
    "resnet18", "mobilenet_v3_small", "squeezenet1_1", "efficientnet_b0", "timm_resnet10t",
    "timm_vit_tiny", "gpt2", "gpt2_unwrapped", "llama", "bert", "t5",
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", LIBRARY)
def test_library_models_get_the_same_verdicts_fed_either_way(name: str) -> None:
    factory = _library(name)
    assert _statuses(factory, 32, loader=False) == _statuses(factory, 32, loader=True)
