"""Hugging Face's label convention on its own models: a causal LM given labels=input_ids
(nndiag's default loss) is scored as it scores itself, the output at t against the token
at t+1; the same labels for a model that does not generate, or under a loss that does not
shift them, are the copy task and fail as a leak."""

from __future__ import annotations

import pytest
import torch

import nndiag
from tests.real_models import models

pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

CAUSAL = {"gpt2": models._gpt2, "llama": models._llama}


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_a_causal_lm_given_its_input_ids_as_labels_is_shifted_and_says_so(name: str) -> None:
    for seed in range(20):
        ids = models._tokens(seed)
        subject = nndiag.Subject(CAUSAL[name](seed), (ids, ids))
        checks = ["initial_loss", "causality"] + (["overfit_small"] if seed < 2 else [])
        report = nndiag.diagnose(subject, checks, nndiag.Config(seed=seed))
        for result in report:
            assert result.status == "pass", result.summary()
        assert "labels=input_ids" in report["initial_loss"].message
        assert "t+1" in report["initial_loss"].message


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_the_same_labels_under_a_loss_that_does_not_shift_are_the_copy_task(name: str) -> None:
    ids = models._tokens(0)
    subject = nndiag.Subject(CAUSAL[name](0), (ids, ids), loss=models.token_loss)
    result = nndiag.diagnose(subject, ["initial_loss"])["initial_loss"]
    assert result.status == "fail" and result.metrics["cause"] == "leak", result.summary()
    assert "the targets are the inputs" in result.message


def test_a_masked_lm_given_its_input_ids_as_labels_is_the_copy_task() -> None:
    bert = models.bert_as_lm(0).model.model  # BertForMaskedLM: no shift, no generation
    ids = models._tokens(0)
    result = nndiag.diagnose(nndiag.Subject(bert, (ids, ids)), ["initial_loss"])["initial_loss"]
    assert result.status == "fail" and result.metrics["cause"] == "leak", result.summary()
    assert "labels=input_ids" not in result.message


def _t5(seed: int) -> object:
    return models.t5(seed).model.model  # T5ForConditionalGeneration itself


def test_an_encoder_decoder_given_its_labels_builds_its_decoder_inputs_from_them() -> None:
    for seed in range(20):
        ids = models._tokens(seed)
        subject = nndiag.Subject(_t5(seed), (ids, ids.flip(1)))
        checks = None if seed < 2 else ["initial_loss", "causality", "batch_independence"]
        report = nndiag.diagnose(subject, checks, nndiag.Config(seed=seed))
        for result in report:
            assert result.status in ("pass", "skip"), result.summary()
        assert "prepare_decoder_input_ids_from_labels" in report["initial_loss"].message


def test_a_masked_lm_is_scored_on_its_masked_positions_alone() -> None:
    # BERT's own recipe: 15% of the positions masked (id 1 here) and scored, -100 elsewhere.
    for seed in range(20):
        bert = models.bert_as_lm(seed).model.model
        ids = models._tokens(seed)
        g = torch.Generator().manual_seed(seed)
        masked = torch.rand(ids.shape, generator=g) < 0.15
        masked[:, 0] = True  # every row scores at least one position
        X = ids.masked_fill(masked, 1)
        y = ids.masked_fill(~masked, -100)
        checks = ["initial_loss", "causality"] + (["overfit_small"] if seed < 2 else [])
        report = nndiag.diagnose(nndiag.Subject(bert, (X, y)), checks, nndiag.Config(seed=seed))
        for result in report:
            assert result.status in ("pass", "skip"), result.summary()


def test_an_encoder_decoder_asked_to_copy_its_source_is_the_copy_task() -> None:
    ids = models._tokens(0)
    result = nndiag.diagnose(nndiag.Subject(_t5(0), (ids, ids)), ["initial_loss"])["initial_loss"]
    assert result.status == "fail" and result.metrics["cause"] == "leak", result.summary()


def test_a_collators_labels_with_padding_ignored_are_shifted_too() -> None:
    # DataCollatorForLanguageModeling(mlm=False): labels = input_ids, -100 on the padding.
    for seed in range(3):
        ids = models._tokens(seed)
        mask = torch.ones_like(ids)
        mask[1:, 10:] = 0
        labels = ids.masked_fill(mask == 0, -100)
        X = {"input_ids": ids, "attention_mask": mask}
        checks = ["initial_loss", "causality", "overfit_small"]
        report = nndiag.diagnose(nndiag.Subject(models._gpt2(seed), (X, labels)), checks)
        for result in report:
            assert result.status == "pass", result.summary()
        assert "labels=input_ids" in report["initial_loss"].message
