"""causality: an autoregressive model's output at position t never reads a later input.

Healthy models written as users write them (a minimal GPT with its mask, an LSTM LM) pass
at seeds 0-19; the same models with the future visible (no mask, a bidirectional LSTM), a
mask off by one, and a leak from one position alone (every position swept) fail, naming
the first (output <- input) pair.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nndiag
from tests import sequence_models as sm


def _causality(subject: nndiag.Subject, seed: int = 0) -> nndiag.CheckResult:
    return nndiag.diagnose(subject, ["causality"], nndiag.Config(seed=seed))["causality"]


@pytest.mark.parametrize("seed", range(20))
def test_healthy_sequence_models_pass(seed: int) -> None:
    for subject in (sm.minigpt(seed), sm.lstm(seed)):
        result = _causality(subject, seed)
        assert result.status == "pass", result.summary()
        assert "next-token prediction" in result.message


@pytest.mark.parametrize("seed", range(20))
def test_a_model_that_sees_the_future_fails(seed: int) -> None:
    for subject in (sm.minigpt(seed, causal=False), sm.lstm(seed, bidirectional=True)):
        result = _causality(subject, seed)
        assert result.status == "fail", result.summary()
        assert result.metrics["position"] < result.metrics["source"]
        assert result.metrics["minimal_length"] == result.metrics["source"] + 1
        assert "causal" in result.hint and "is_causal=True" in result.hint


def test_a_mask_off_by_one_names_the_next_position() -> None:
    torch.manual_seed(0)
    gpt = sm.MiniGPT()
    for block in gpt.h:  # the mask's diagonal one too high: position t also reads t+1
        block.attn.bias.copy_(torch.tril(torch.ones(sm.LENGTH, sm.LENGTH), diagonal=1))
    result = _causality(
        nndiag.Subject(sm.EveryPosition(gpt), sm.next_tokens(0), loss=sm.token_loss)
    )
    assert result.status == "fail"
    # One block reads t+1; two blocks reach t+2. Nothing beyond.
    assert {u - t for t, u in result.metrics["leaking_pairs"]} <= {1, 2}
    assert (0, 1) == (result.metrics["position"], result.metrics["source"])


class LeakFrom(nn.Module):
    """A causal LSTM LM whose output at ``source - 1`` also reads the input at ``source``."""

    def __init__(self, source: int) -> None:
        super().__init__()
        self.lm, self.source = sm.LSTMLanguageModel(), source

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out = self.lm(idx)
        peek = self.lm.decoder(self.lm.encoder(idx[:, self.source]))
        return torch.cat(
            [out[:, : self.source - 1], out[:, self.source - 1 : self.source] + peek[:, None],
             out[:, self.source :]], dim=1
        )  # fmt: skip


@pytest.mark.parametrize("source", range(1, sm.LENGTH))
def test_a_leak_from_any_one_position_is_found(source: int) -> None:
    torch.manual_seed(source)
    subject = nndiag.Subject(LeakFrom(source), sm.next_tokens(source), loss=sm.token_loss)
    result = _causality(subject, source)
    assert result.status == "fail", result.summary()
    assert result.metrics["leaking_pairs"] == [[source - 1, source]]


def test_the_subject_decides_where_the_data_does_not_say() -> None:
    torch.manual_seed(0)
    X, _ = sm.next_tokens(0)
    tags = X % 5  # a tagger: one label per position, not the next token
    bidirectional = sm.LSTMLanguageModel(bidirectional=True)
    assert _causality(nndiag.Subject(bidirectional, (X, tags))).status == "skip"
    asked = nndiag.Subject(bidirectional, (X, tags), causal=True)
    result = _causality(asked)
    assert result.status == "fail" and "Subject(causal=True)" in result.message
    off = nndiag.Subject(sm.LSTMLanguageModel(bidirectional=True), sm.next_tokens(0), causal=False)
    assert _causality(off).status == "skip"


def test_causal_must_be_a_bool() -> None:
    with pytest.raises(nndiag.errors.InvalidSubject, match="causal"):
        nndiag.Subject(sm.LSTMLanguageModel(), sm.next_tokens(0), causal="yes")  # type: ignore[arg-type]


def test_one_output_per_sequence_is_skipped_with_the_reason() -> None:
    class Last(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = sm.LSTMLanguageModel()

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.lm(idx)[:, -1]

    torch.manual_seed(0)
    X, y = sm.next_tokens(0)
    result = _causality(nndiag.Subject(Last(), (X, y[:, -1]), causal=True))
    assert result.status == "skip" and "one output per sequence" in result.message


def test_the_model_is_left_as_it_was() -> None:
    subject = sm.minigpt(0, causal=False)
    before = {k: v.clone() for k, v in subject.model.state_dict().items()}
    state = torch.random.get_rng_state()
    _causality(subject)
    assert all(torch.equal(before[k], v) for k, v in subject.model.state_dict().items())
    assert torch.equal(state, torch.random.get_rng_state())
    assert subject.model.training and all(p.grad is None for p in subject.model.parameters())


def test_jax_models_are_checked() -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    def apply(params: dict, ids: jax.Array, causal: bool) -> jax.Array:
        h = params["embed"][ids]  # (N, T, D)
        steps = jnp.arange(1, ids.shape[1] + 1)[None, :, None]
        mixed = jnp.cumsum(h, axis=1) / steps if causal else h.mean(1, keepdims=True) + h
        return mixed @ params["out"]

    rng = np.random.default_rng(0)
    params = {
        "embed": jnp.asarray(rng.standard_normal((sm.VOCAB, 8)), jnp.float32),
        "out": jnp.asarray(rng.standard_normal((8, sm.VOCAB)) * 0.1, jnp.float32),
    }
    X, y = (jnp.asarray(t.numpy()) for t in sm.next_tokens(0))
    for causal, status in ((True, "pass"), (False, "fail")):
        model = (lambda p, x, c=causal: apply(p, x, c), params)
        result = _causality(nndiag.Subject(model, (X, y)))
        assert result.status == status, result.summary()


class Smoother:
    """A CS231n-style numpy model over (N, T, F) sequences: the mean of the inputs so far
    (or, with ``centered``, of a window that reaches two positions ahead), then an affine
    map; a squared-error regression against (N, T, F) targets."""

    def __init__(self, centered: bool, features: int = 4, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.params = {"W": rng.standard_normal((features, features)) * 0.5}
        self.centered = centered

    def _pooled(self, X: np.ndarray) -> np.ndarray:
        if self.centered:
            padded = np.concatenate([X, np.zeros_like(X[:, :2])], axis=1)
            return (padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]) / 3
        return np.cumsum(X, axis=1) / np.arange(1, X.shape[1] + 1)[None, :, None]

    def loss(self, X: np.ndarray, y: np.ndarray | None = None) -> object:
        h = self._pooled(X)
        scores = h @ self.params["W"]
        if y is None:
            return scores
        diff = scores - y
        grad = 2 * np.einsum("ntf,ntg->fg", h, diff) / diff.size
        return float((diff**2).mean()), {"W": grad}


def test_numpy_models_are_checked() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 12, 4))
    y = np.roll(X, -1, axis=1)  # predict the next step
    for centered, status in ((False, "pass"), (True, "fail")):
        result = _causality(nndiag.Subject(Smoother(centered), (X, y), causal=True))
        assert result.status == status, result.summary()
    leak = _causality(nndiag.Subject(Smoother(True), (X, y), causal=True))
    assert {u - t for t, u in leak.metrics["leaking_pairs"]} == {1, 2}  # two ahead


@pytest.mark.parametrize("seed", range(20))
def test_a_raw_minimal_gpt_is_called_for_every_position(seed: int) -> None:
    # forward(idx, targets=None) -> (logits, loss), last position only without targets:
    # recognised, no glue needed; its mask decides causality.
    checks = ["initial_loss", "causality"] + (
        ["overfit_small", "gradient_check"] if seed < 2 else []
    )
    for causal in (True, False):
        torch.manual_seed(seed)
        subject = nndiag.Subject(sm.MiniGPT(causal=causal), sm.next_tokens(seed))
        report = nndiag.diagnose(subject, checks, nndiag.Config(seed=seed))
        assert "model(idx, targets=idx)" in report["initial_loss"].message
        for result in report:
            expected = "fail" if result.check == "causality" and not causal else "pass"
            assert result.status == expected, result.summary()


class GRULanguageModel(nn.Module):
    def __init__(self, vocab: int, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = nn.GRU(width, width, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(idx))[0])


def test_a_vocabulary_as_long_as_the_sequence_is_not_read_as_time() -> None:
    # (N, T, V) with V == T: the class axis has the inputs' length too. A causal GRU passes,
    # a bidirectional one still fails.
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 12, (8, 13), generator=g)
    torch.manual_seed(0)
    causal = GRULanguageModel(12)
    result = _causality(nndiag.Subject(causal, (ids[:, :-1], ids[:, 1:]), loss=sm.token_loss))
    assert result.status == "pass", result.summary()
    torch.manual_seed(0)
    reads_ahead = sm.LSTMLanguageModel(vocab=12, bidirectional=True)
    leak = _causality(nndiag.Subject(reads_ahead, (ids[:, :-1], ids[:, 1:]), loss=sm.token_loss))
    assert leak.status == "fail", leak.summary()


class FeatureGRU(nn.Module):
    """(N, T, F) -> (N, T, F) with F == T, optionally reading the future."""

    def __init__(self, width: int, bidirectional: bool) -> None:
        super().__init__()
        self.rnn = nn.GRU(width, width, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(width * (2 if bidirectional else 1), width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x)[0])


@pytest.mark.parametrize(("bidirectional", "status"), [(False, "pass"), (True, "fail")])
def test_a_float_regressor_whose_width_is_its_length(bidirectional: bool, status: str) -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(16, 8, 8, generator=g)
    torch.manual_seed(0)
    subject = nndiag.Subject(FeatureGRU(8, bidirectional), (X, X.roll(-1, 1)), causal=True)
    result = _causality(subject)
    assert result.status == status, result.summary()


def test_one_score_vector_per_sequence_as_long_as_the_sequence_is_skipped() -> None:
    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = sm.LSTMLanguageModel(vocab=sm.VOCAB)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.lm(idx)[:, -1, : sm.LENGTH]  # C == T classes

    torch.manual_seed(0)
    X, y = sm.next_tokens(0)
    result = _causality(nndiag.Subject(Classifier(), (X, y[:, -1] % sm.LENGTH), causal=True))
    assert result.status == "skip" and "one output per sequence" in result.message


def test_a_tagger_whose_inputs_use_fewer_ids_than_its_tags() -> None:
    # Replacement ids come from the ids the inputs hold: never one the embedding lacks.
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(8, 16)
            self.rnn = nn.GRU(16, 16, batch_first=True)
            self.head = nn.Linear(16, 40)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(self.embed(idx))[0])

    g = torch.Generator().manual_seed(0)
    X = torch.randint(0, 8, (8, 12), generator=g)
    tags = torch.randint(0, 40, (8, 12), generator=g)
    torch.manual_seed(0)
    result = _causality(nndiag.Subject(Tagger(), (X, tags), loss=sm.token_loss, causal=True))
    assert result.status == "pass", result.summary()
