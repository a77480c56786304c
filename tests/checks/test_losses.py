"""Losses as users write them (tests/loss_models.py holds verbatim loss lines of common
public code): the loss gets what the model returned, continuous and soft targets get
their own baselines and floors, and the other checks' planted bugs are still caught
through each loss."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nndiag
from nndiag.errors import InvalidSubject
from tests import loss_models as lm
from tests import sequence_models as sm

SILENT = ("pass", "skip")
# The check that must fail, and with which cause, for each planted bug.
CAUGHT_BY = {"dead": ("dead_neurons", None), "mixer": ("batch_independence", None)}


def _run(subject: nndiag.Subject, checks: list[str] | None = None, seed: int = 0) -> Any:
    return nndiag.diagnose(subject, checks, nndiag.Config(seed=seed), progress=False)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("name", list(lm.SUBJECTS))
def test_healthy_models_with_their_own_loss_lines_are_silent(name: str, seed: int) -> None:
    report = _run(lm.SUBJECTS[name](seed), seed=seed)
    loud = [r.summary() for r in report if r.status not in SILENT]
    assert not loud, loud


@pytest.mark.parametrize("bug", lm.BUGS)
@pytest.mark.parametrize("name", list(lm.SUBJECTS))
def test_other_checks_planted_bugs_are_caught_through_each_loss(name: str, bug: str) -> None:
    check, _ = CAUGHT_BY[bug]
    for seed in (0, 1):
        result = _run(lm.SUBJECTS[name](seed, bug), [check], seed)[check]
        assert result.status == "fail", result.summary()


class _Pair(NamedTuple):
    logits: torch.Tensor
    extra: torch.Tensor


class _Returns(nn.Module):
    """A classifier whose forward returns its logits packed as ``kind`` says."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> Any:
        logits, extra = self.body(x), x.sum(1)
        if self.kind == "tuple":
            return logits, extra
        if self.kind == "dict":
            return {"logits": logits, "extra": extra}
        if self.kind == "ordered":  # transformers' ModelOutput is an OrderedDict
            return OrderedDict(logits=logits, extra=extra)
        return _Pair(logits, extra)


@pytest.mark.parametrize("kind", ["tuple", "dict", "ordered", "namedtuple"])
def test_a_custom_loss_receives_exactly_what_the_model_returned(kind: str) -> None:
    seen: list[Any] = []

    def loss(output: Any, y: torch.Tensor) -> torch.Tensor:
        seen.append(output)
        logits = output[0] if isinstance(output, tuple) else output["logits"]
        extra = output[1] if isinstance(output, tuple) else output["extra"]
        return F.cross_entropy(logits, y) + 0.0 * extra.sum()

    torch.manual_seed(0)
    X, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    report = _run(nndiag.Subject(_Returns(kind), (X, y), loss=loss))
    assert all(r.status in SILENT for r in report), [r.summary() for r in report]
    expected = type(_Returns(kind)(X[:2]))
    assert seen and all(type(output) is expected for output in seen)
    assert "scores alone" not in report["initial_loss"].message


def test_a_loss_written_for_the_scores_gets_them_from_a_tuple_and_the_report_says_so() -> None:
    torch.manual_seed(0)
    X, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    report = _run(nndiag.Subject(_Returns("tuple"), (X, y), loss=nn.CrossEntropyLoss()))
    result = report["initial_loss"]
    assert result.status == "pass", result.summary()
    assert "the loss takes the scores alone: the first element of the tuple" in result.message


def test_a_loss_that_raises_on_an_output_nndiag_built_says_what_it_was_given() -> None:
    # A loss that validates its input: log-probabilities must be normalized. The model's
    # own outputs are; the initial_loss's raised-score probe is not.
    def strict_nll(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = output.exp().sum(1)
        if not torch.allclose(total, torch.ones_like(total), atol=1e-3):
            raise ValueError("expected log-probabilities")
        return F.nll_loss(output, y)

    torch.manual_seed(0)
    X, y = torch.randn(32, 16), torch.randint(0, 5, (32,))
    subject = nndiag.Subject(lm.MnistNet(), (X, y), loss=strict_nll)
    result = _run(subject, ["initial_loss"])["initial_loss"]
    assert result.status == "error"
    assert "during initial_loss" in result.message
    assert "on an output nndiag built (a float32 tensor of shape (32, 5), contiguous)" in (
        result.message
    )
    assert result.hint is not None and "outside nndiag" not in result.hint


def test_a_refused_output_shape_says_what_was_read_and_what_is_accepted() -> None:
    class LastPositionOnly(nn.Module):  # no `targets` parameter: nothing to ask for more
        def __init__(self) -> None:
            super().__init__()
            self.inner = sm.MiniGPT()

        def forward(self, idx: torch.Tensor) -> Any:
            return self.inner(idx)

    torch.manual_seed(0)
    X, y = sm.next_tokens(0)
    with pytest.raises(InvalidSubject) as raised:
        _run(nndiag.Subject(LastPositionOnly(), (X, y), loss=lambda o, t: o[0].sum()))
    text = str(raised.value)
    assert "the first element of the tuple of 2 the model returned" in text
    assert f"of shape ({len(X)}, 1, {sm.VOCAB})" in text
    assert "(N, T, V) for per-position labels" in text


def test_bce_baselines_leave_out_the_clamp_and_a_bad_init_still_fails() -> None:
    subject = lm.vae_subject(0)
    result = _run(subject, ["initial_loss"])["initial_loss"]
    assert result.status == "pass", result.summary()
    assert "all-zero outputs left out: the loss sits on a clamp" in result.message
    assert result.metrics["expected"] < 2 * result.metrics["measured"]
    # Outputs pinned near 1 at init: far worse than any uninformative output.
    with torch.no_grad():
        subject.model.fc4.bias.fill_(6.0)
    broken = _run(subject, ["initial_loss"])["initial_loss"]
    assert broken.status == "fail" and broken.metrics["cause"] == "too_high", broken.summary()


def test_log_softmax_outputs_are_scored_with_uniform_log_probabilities() -> None:
    result = _run(lm.nll_subject(0), ["initial_loss"])["initial_loss"]
    assert result.metrics["band_low"] > 1.0  # -ln C outputs, not 0 (a certain hit to nll)
    torch.manual_seed(0)
    model = lm.MnistNet()
    with torch.no_grad():  # confident at init: the lecture's "loss too high"
        model.fc2.weight.mul_(30)
    batch = lm.nll_subject(0).batches[0]
    broken = _run(nndiag.Subject(model, (batch.X, batch.y), loss=F.nll_loss), ["initial_loss"])
    assert broken["initial_loss"].status == "fail", broken["initial_loss"].summary()


def test_overfit_aims_for_the_floor_of_soft_targets_and_speaks_of_loss_only() -> None:
    result = _run(lm.vae_subject(0), ["overfit_small"])["overfit_small"]
    assert result.status == "pass", result.summary()
    assert result.metrics["loss_floor"] > 0.3 * result.metrics["initial_loss"]
    assert "accuracy" not in result.message
    regression = _run(lm.smooth_l1_subject(0), ["overfit_small"])["overfit_small"]
    assert regression.status == "pass" and "accuracy" not in regression.message


def test_a_vae_loss_with_its_kl_term_always_on_is_not_failed_and_names_the_knob() -> None:
    torch.manual_seed(0)
    x = lm._pixels(torch.Generator().manual_seed(0))

    def loss(output: Any, data: torch.Tensor) -> torch.Tensor:
        recon_batch, mu, logvar = output
        return lm.loss_function(recon_batch, data, mu, logvar)

    subject = nndiag.Subject(lm.VAE(), (x, x), loss=loss, stochastic_eval=True)
    result = _run(subject, ["overfit_small"])["overfit_small"]
    assert result.status == "warn", result.summary()
    assert result.metrics["cause"] == "regularization_on"
    assert "Subject(regularization=...)" in (result.hint or "")


def test_sampling_in_eval_is_reported_only_when_the_subject_declares_it() -> None:
    declared = _run(lm.vae_subject(0), ["numerics"])["numerics"]
    assert declared.status == "pass" and declared.metrics["stochastic_eval"] is True
    assert "reported, not judged" in declared.message
    torch.manual_seed(0)
    x = lm._pixels(torch.Generator().manual_seed(0))
    silent = nndiag.Subject(lm.VAE(), (x, x), loss=lm.BetaVAELoss())
    undeclared = _run(silent, ["numerics"])["numerics"]
    assert undeclared.status == "fail" and "stochastic_eval=True" in (undeclared.hint or "")


def test_stochastic_eval_must_be_a_bool() -> None:
    x = torch.rand(8, lm.PIXELS)
    with pytest.raises(InvalidSubject, match="stochastic_eval"):
        nndiag.Subject(lm.VAE(), (x, x), stochastic_eval="yes")  # type: ignore[arg-type]


class _FunctionalDecoder(nn.Module):
    """Hand-written with parameters and functional calls: no nn.Linear to name a layer."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(64, lm.PIXELS) / lm.PIXELS**0.5)
        self.w2 = nn.Parameter(torch.randn(lm.PIXELS, 64) / 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(F.linear(x, self.w1))
        return torch.sigmoid(hidden @ self.w2.T)


def test_the_activation_no_weight_layer_follows_is_the_output_not_a_collapse() -> None:
    library = _run(lm.autoencoder_subject(0), ["activation_stats"])["activation_stats"]
    assert library.metrics["output_layer_left_out"] == "decoder.3:sigmoid"
    torch.manual_seed(0)
    x = lm._pixels(torch.Generator().manual_seed(0))
    subject = nndiag.Subject(_FunctionalDecoder(), (x, x), loss=nn.MSELoss())
    result = _run(subject, ["activation_stats"])["activation_stats"]
    assert result.metrics["output_layer_left_out"] == "sigmoid"
    assert result.metrics["layers"] == 1  # the ReLU, which a weight product follows


def test_the_knob_written_into_the_loss_is_put_back() -> None:
    subject = lm.vae_subject(0)
    assert isinstance(subject.loss, lm.BetaVAELoss)
    _run(subject, ["initial_loss", "overfit_small"])
    assert subject.loss.beta == 1.0


class _Features(NamedTuple):
    features: torch.Tensor
    logits: torch.Tensor


@dataclasses.dataclass
class _Scored:
    logits: torch.Tensor
    features: torch.Tensor


class _ReturnsLogitsField(nn.Module):
    """A classifier returning its logits as a named field behind another tensor."""

    def __init__(self, kind: str, scale: float) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Sequential(nn.Linear(6, 32), nn.ReLU())
        self.head = nn.Linear(32, 3)
        with torch.no_grad():
            self.head.weight.mul_(scale)

    def forward(self, x: torch.Tensor) -> Any:
        features = self.body(x)
        logits = self.head(features)
        return (
            _Features(features, logits) if self.kind == "namedtuple" else _Scored(logits, features)
        )


@pytest.mark.parametrize("kind", ["namedtuple", "dataclass"])
def test_scores_nndiag_builds_replace_the_logits_field_the_loss_reads(kind: str) -> None:
    def loss(output: Any, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.logits, y)

    torch.manual_seed(0)
    X, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    for scale, status in ((1.0, "pass"), (40.0, "fail")):
        torch.manual_seed(0)
        subject = nndiag.Subject(_ReturnsLogitsField(kind, scale), (X, y), loss=loss)
        result = _run(subject, ["initial_loss"])["initial_loss"]
        assert result.status == status, result.summary()


def test_a_floor_estimate_above_the_start_is_not_taken() -> None:
    # Poisson counts under PoissonNLLLoss(log_input=True): the targets as outputs score far
    # above the model at init, so they are no floor; a cut graph still fails.
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 8, generator=g)
    y = torch.poisson(torch.exp(X[:, :1] * 0.5 + 1.0), generator=g)
    torch.manual_seed(0)
    healthy = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    result = _run(nndiag.Subject(healthy, (X, y), loss=nn.PoissonNLLLoss()), ["overfit_small"])
    fit = result["overfit_small"]
    assert fit.metrics["steps"] > 1 and "loss_floor" not in fit.metrics, fit.summary()

    class Cut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (
                self.head(self.body(x).detach()) * 0 + self.head.bias * 0 + self.body(x).sum() * 0
            )

    torch.manual_seed(0)
    cut = _run(nndiag.Subject(Cut(), (X, y), loss=nn.PoissonNLLLoss()), ["overfit_small"])
    assert cut["overfit_small"].status == "fail", cut["overfit_small"].summary()


def test_soft_labels_under_cross_entropy_aim_for_their_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 8, generator=g)
    soft = torch.softmax(torch.randn(64, 4, generator=g), 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    fit = _run(nndiag.Subject(model, (X, soft), loss=F.cross_entropy), ["overfit_small"])
    result = fit["overfit_small"]
    first = soft[:20]
    entropy = float(-(first * first.log()).sum(1).mean())
    assert result.metrics["loss_floor"] == pytest.approx(entropy, rel=1e-4), result.summary()


class _Symmetric(nn.Module):
    """Constant init: every hidden unit stays identical, a plateau."""

    def __init__(self, extra: bool) -> None:
        super().__init__()
        self.extra = extra
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
        for p in self.body.parameters():
            nn.init.constant_(p, 0.1)

    def forward(self, x: torch.Tensor) -> Any:
        out = self.body(x)
        return (out, x.mean(1)) if self.extra else out


def test_a_loss_that_reads_only_the_scores_of_a_tuple_is_judged_as_for_a_tensor() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 8, generator=g)
    y = torch.stack([torch.sin(3 * X[:, 0]), torch.cos(3 * X[:, 1])], 1)
    found = []
    for extra in (False, True):

        def loss(o: Any, t: torch.Tensor, extra: bool = extra) -> torch.Tensor:
            return F.mse_loss(o[0] if extra else o, t)

        result = _run(nndiag.Subject(_Symmetric(extra), (X, y), loss=loss), ["overfit_small"])
        found.append((result["overfit_small"].status, result["overfit_small"].metrics["cause"]))
    assert found[0] == found[1] and found[0][0] != "pass", found
    assert found[0][1] != "regularization_on"


def test_a_saturated_hidden_layer_before_a_matrix_product_is_still_judged() -> None:
    class Saturated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(64, 16) * 20 / 4)
            self.w2 = nn.Parameter(torch.randn(1, 64) / 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x @ self.w1.T) @ self.w2.T

    torch.manual_seed(0)
    X, y = torch.randn(64, 16), torch.randn(64, 1)
    result = _run(nndiag.Subject(Saturated(), (X, y)), ["activation_stats"])
    assert result["activation_stats"].status == "fail", result["activation_stats"].summary()


def test_a_hand_written_bce_with_an_epsilon_still_catches_a_bad_init() -> None:
    def bce(output: Any, data: torch.Tensor) -> torch.Tensor:
        recon, mu, logvar = output
        eps = 1e-5
        nll = -(data * torch.log(recon + eps) + (1 - data) * torch.log(1 - recon + eps)).sum()
        return nll - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    for bias, status in ((0.0, "pass"), (6.0, "fail"), (-6.0, "fail")):
        torch.manual_seed(0)
        x = lm._pixels(torch.Generator().manual_seed(0))
        model = lm.VAE()
        with torch.no_grad():
            model.fc4.bias.add_(bias)
        result = _run(nndiag.Subject(model, (x, x), loss=bce), ["initial_loss"])
        assert result["initial_loss"].status == status, result["initial_loss"].summary()


def test_a_plain_tensor_output_costs_no_extra_forward_per_built_output() -> None:
    result = _run(lm.autoencoder_subject(0), ["initial_loss"])["initial_loss"]
    assert result.cost.forward <= 3, result.cost


def test_rows_and_other_outputs_keep_the_models_containers() -> None:
    from nndiag.backends.torch import inputs

    x, h, ids = torch.randn(4, 3), torch.randn(4, 3), torch.arange(4)
    for out in ((x, h), [x, ids], {"logits": x, "h": h}, OrderedDict(logits=x, h=h), _Pair(x, h)):
        rows = inputs.output_rows(out, slice(1, 2), 4)
        moved = inputs.with_others(out, lambda t: t + 1)
        assert type(rows) is type(out) and type(moved) is type(out)
        first, second = (rows[0], rows[1]) if isinstance(out, (tuple, list)) else rows.values()
        assert torch.equal(first, x[1:2]) and len(second) == 1
        scores, other = (moved[0], moved[1]) if isinstance(out, (tuple, list)) else moved.values()
        assert scores is x  # the scores untouched, the other floating tensors moved
        assert torch.equal(other, ids) if other.dtype == torch.long else torch.equal(other, h + 1)
