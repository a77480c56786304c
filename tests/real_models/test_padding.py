"""Padding under an attention mask (part of ``causality``): the tokens a mask marks as
padding never change a real position's output. transformers' BERT and GPT-2 given their
mask are silent at seeds 0-19; the same models behind a wrapper that drops the mask fail."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nndiag
from tests.real_models import models

pytest.importorskip("transformers")

pytestmark = pytest.mark.slow


class DropsTheMask(nn.Module):
    """The bug: a wrapper that takes the mask and calls the model on the ids alone."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


class GivesTheMask(DropsTheMask):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _padded(seed: int, left: bool) -> dict[str, torch.Tensor]:
    """Token ids with every row but the first padded to 4..15 real tokens, at the end (or
    at the start, as a causal LM's batches are padded for generation)."""
    ids = models._tokens(seed)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, ids.shape[1], (len(ids),), generator=g)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    mask[0] = 1
    return {"input_ids": ids, "attention_mask": mask.flip(1) if left else mask}


def _bert(seed: int) -> nn.Module:
    return models.bert(seed).model.model  # BertForSequenceClassification


def _subject(wrapper: type[nn.Module], build: str, seed: int) -> nndiag.Subject:
    X = _padded(seed, left=build == "gpt2")
    if build == "bert":
        labels = torch.arange(len(X["input_ids"])) % models.CLASSES
        return nndiag.Subject(wrapper(_bert(seed)), (X, labels))
    ids = X["input_ids"]  # next-token targets, the padded positions ignored
    targets = torch.cat([ids[:, 1:], ids[:, :1]], dim=1).masked_fill(X["attention_mask"] == 0, -100)
    return nndiag.Subject(wrapper(models._gpt2(seed)), (X, targets), causal=True)


@pytest.mark.parametrize("build", ["bert", "gpt2"])
def test_models_given_their_mask_are_silent(build: str) -> None:
    for seed in range(20):
        result = nndiag.diagnose(_subject(GivesTheMask, build, seed), ["causality"])["causality"]
        assert result.status == "pass", result.summary()
        assert "padding tokens" in result.message


@pytest.mark.parametrize("build", ["bert", "gpt2"])
def test_a_wrapper_that_drops_the_mask_fails(build: str) -> None:
    result = nndiag.diagnose(_subject(DropsTheMask, build, 0), ["causality"])["causality"]
    assert result.status == "fail" and result.metrics["cause"] == "padding", result.summary()
    assert "attention_mask" in result.hint


def test_a_row_of_padding_alone_is_left_out() -> None:
    X = _padded(0, left=True)
    X["attention_mask"][0] = 0  # the first probed row holds no real token
    ids = X["input_ids"]
    targets = torch.cat([ids[:, 1:], ids[:, :1]], dim=1).masked_fill(X["attention_mask"] == 0, -100)
    subject = nndiag.Subject(GivesTheMask(models._gpt2(0)), (X, targets), causal=True)
    result = nndiag.diagnose(subject, ["causality"])["causality"]
    assert result.status == "pass", result.summary()
