"""Labels as sequence models' users give them: a loss that shifts them itself is judged by
itself, targets that are the inputs fail as a leak, and healthy next-token data is silent.
(Hugging Face's own ``labels=input_ids`` convention: tests/real_models/test_labels.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nndiag
from tests import sequence_models as sm


def _run(subject: nndiag.Subject, checks: list[str], seed: int = 0) -> nndiag.Report:
    return nndiag.diagnose(subject, checks, nndiag.Config(seed=seed))


def _ids(seed: int) -> torch.Tensor:
    X, y = sm.next_tokens(seed)
    return torch.cat([X, y[:, -1:]], dim=1)  # LENGTH + 1 tokens


def shifted(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss of a model trained on labels=input_ids that shifts them itself."""
    return F.cross_entropy(out[:, :-1].flatten(0, 1), y[:, 1:].flatten())


@pytest.mark.parametrize("seed", range(20))
def test_healthy_next_token_data_is_not_a_leak(seed: int) -> None:
    for subject in (sm.minigpt(seed), sm.lstm(seed)):
        result = _run(subject, ["initial_loss"], seed)["initial_loss"]
        assert result.status == "pass", result.summary()


@pytest.mark.parametrize("seed", range(3))
def test_a_loss_that_shifts_the_labels_itself_is_judged_by_itself(seed: int) -> None:
    torch.manual_seed(seed)
    model = sm.EveryPosition(sm.MiniGPT(length=sm.LENGTH + 1))
    ids = _ids(seed)
    report = _run(
        nndiag.Subject(model, (ids, ids), loss=shifted, causal=True),
        ["initial_loss", "overfit_small", "causality"],
        seed,
    )
    assert report["initial_loss"].status == "pass", report["initial_loss"].summary()
    assert report["initial_loss"].metrics["label_shift"] == 1
    fit = report["overfit_small"]
    assert fit.status == "pass" and fit.metrics["judged_by"] == "loss", fit.summary()
    assert "judged by the loss alone" in fit.message
    assert report["causality"].status == "pass"


def test_a_negated_shifted_loss_still_fails() -> None:
    torch.manual_seed(0)
    model = sm.EveryPosition(sm.MiniGPT(length=sm.LENGTH + 1))
    ids = _ids(0)
    result = _run(
        nndiag.Subject(model, (ids, ids), loss=lambda o, y: -shifted(o, y)), ["initial_loss"]
    )["initial_loss"]
    assert result.status == "fail" and result.metrics["cause"] == "negated"


@pytest.mark.parametrize("behind", [0, 1])
def test_targets_that_are_the_inputs_or_one_behind_are_a_leak(behind: int) -> None:
    torch.manual_seed(0)
    ids = _ids(0)
    X = ids[:, 1:]
    y = ids[:, 1 - behind : ids.shape[1] - behind]
    result = _run(nndiag.Subject(sm.LSTMLanguageModel(), (X, y)), ["initial_loss"])
    found = result["initial_loss"]
    assert found.status == "fail" and found.metrics["cause"] == "leak", found.summary()
    assert found.metrics["targets_are_inputs_shifted_by"] == behind
    assert "shift them" in found.hint


def test_a_model_that_reads_its_labels_at_init_fails_on_the_shuffled_reference() -> None:
    # A noisy copy task: 80% of the targets are the input token at the same position, which
    # tied embeddings already favour at init; the rest are random.
    torch.manual_seed(0)
    model = sm.EveryPosition(sm.MiniGPT())
    X, _ = sm.next_tokens(0, rows=32)
    g = torch.Generator().manual_seed(1)
    noise = torch.randint(0, sm.VOCAB, X.shape, generator=g)
    y = torch.where(torch.rand(X.shape, generator=g) < 0.8, X, noise)
    with torch.no_grad():  # a tied head that reads the input token, as GPT-2's does
        model.model.lm_head.weight.mul_(50)
    found = _run(nndiag.Subject(model, (X, y), loss=sm.token_loss), ["initial_loss"])
    result = found["initial_loss"]
    assert result.status == "fail" and result.metrics["cause"] == "leak", result.summary()
    assert result.metrics["shuffled_loss"] > result.metrics["measured"]
    assert "shuffles" in result.message


@pytest.mark.parametrize("width", [1, 32])  # nn.Linear, and an MLP
def test_a_fresh_binary_classifier_on_separated_classes_is_no_leak(width: int) -> None:
    # Its outputs already group the two blobs, in the labels' order about half the time:
    # the shuffled reference is for token sequences only.
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(64) % 2
        X = torch.randn(64, 8, generator=g) + 3.0 * (2 * y[:, None] - 1)
        X = (X - X.mean(0)) / X.std(0)
        torch.manual_seed(seed)
        layers = [torch.nn.Linear(8, 2)] if width == 1 else [
            torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, 2)
        ]  # fmt: skip
        result = _run(nndiag.Subject(torch.nn.Sequential(*layers), (X, y)), ["initial_loss"], seed)
        found = result["initial_loss"]
        assert found.metrics.get("cause") != "leak", found.summary()
        assert "shuffled_loss" not in found.metrics


def test_a_classifier_whose_loss_pairs_rows_with_other_labels_still_fails_to_fit() -> None:
    from tests.models import _classification, _he, _mlp

    torch.manual_seed(0)
    subject = nndiag.Subject(
        _mlp(3, torch.nn.ReLU, _he),
        _classification(0),
        loss=lambda o, y: F.cross_entropy(o, y.roll(1)),
    )
    result = _run(subject, ["overfit_small"])["overfit_small"]
    assert "judged_by" not in result.metrics
    assert result.status == "fail" or result.metrics["final_accuracy"] > 0.9, result.summary()


def test_a_deliberate_copy_task_turns_the_leak_rules_off() -> None:
    torch.manual_seed(0)
    ids = _ids(0)
    subject = nndiag.Subject(sm.LSTMLanguageModel(), (ids, ids))
    config = nndiag.Config(initial_loss_leak=0.0)
    result = nndiag.diagnose(subject, ["initial_loss"], config)["initial_loss"]
    assert result.status == "pass", result.summary()


def test_a_minimal_gpts_own_flattening_loss_line_works_inside_every_check() -> None:
    # The line most minimal-GPT code uses: .view() needs the model's contiguous layout.
    def gpt_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    torch.manual_seed(0)
    X, y = (t.contiguous() for t in sm.next_tokens(0))
    report = _run(nndiag.Subject(sm.MiniGPT(), (X, y), loss=gpt_loss), None)  # type: ignore[arg-type]
    for result in report:
        assert result.status in ("pass", "skip"), result.summary()
