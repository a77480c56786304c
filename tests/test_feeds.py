"""Every default check gives the same verdict for a model fed one tensor of N rows or a
DataLoader of N/4-row batches, for N from 8 to 128: how the data arrives is not the model."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import nndiag
from tests import models


def _statuses(factory: Callable[[int], nndiag.Subject], rows: int, loader: bool) -> dict:
    subject = factory(0)
    batch = subject.batches[0]
    reps = -(-rows // len(batch.X))  # repeat a small batch up to the rows asked for
    X, y = torch.cat([batch.X] * reps)[:rows], torch.cat([batch.y] * reps)[:rows]
    data = DataLoader(TensorDataset(X, y), batch_size=max(rows // 4, 2)) if loader else (X, y)
    fed = nndiag.Subject(subject.model, data, loss=subject.loss, optimizer=subject.optimizer)
    return {r.check: r.status for r in nndiag.diagnose(fed, config=nndiag.Config(seed=0))}


@pytest.mark.parametrize("rows", [8, 32, 128])
@pytest.mark.parametrize("name", ["he_relu_mlp", "cnn_batchnorm"])
def test_a_tensor_and_a_loader_of_smaller_batches_get_the_same_verdicts(
    name: str, rows: int
) -> None:
    factory = models.HEALTHY[name]
    assert _statuses(factory, rows, loader=False) == _statuses(factory, rows, loader=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "gpt2"])
def test_library_models_get_the_same_verdicts_fed_either_way(name: str) -> None:
    from tests.real_models import models as library

    factory = library.HEALTHY[name]
    assert _statuses(factory, 32, loader=False) == _statuses(factory, 32, loader=True)
