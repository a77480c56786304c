"""Sequence models written the way their users write them, for the sequence checks.

``MiniGPT`` follows the popular minimal-GPT layout: a causal self-attention that keeps a
lower-triangular ``bias`` buffer and fills the scores above it with -inf before the
softmax, pre-norm blocks, tied token embeddings, and ``forward(idx, targets=None) ->
(logits, loss)`` that returns only the last position's logits when no targets are given.
``causal=False`` is the planted bug: the mask is never applied. ``LSTMLanguageModel`` is a
word-level LSTM LM, run uni- or bidirectionally (the bidirectional one reads the future).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import nndiag

VOCAB, LENGTH, ROWS = 64, 16, 8


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, length: int, causal: bool) -> None:
        super().__init__()
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)
        self.heads, self.causal = heads, causal
        self.register_buffer(
            "bias", torch.tril(torch.ones(length, length)).view(1, 1, length, length)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        if self.causal:
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, length: int, causal: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, length, causal)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class MiniGPT(nn.Module):
    def __init__(
        self, vocab: int = VOCAB, length: int = LENGTH, width: int = 32, causal: bool = True
    ) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(length, width)
        self.h = nn.ModuleList([Block(width, 2, length, causal) for _ in range(2)])
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:  # inference: only the last position
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


class EveryPosition(nn.Module):
    """The glue a ``forward(idx, targets=None) -> (logits, loss)`` model needs: called
    with targets, such a model returns the logits of every position."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx, idx)[0]


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int = VOCAB, width: int = 32, bidirectional: bool = False) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, width)
        self.rnn = nn.LSTM(width, width, batch_first=True, bidirectional=bidirectional)
        self.decoder = nn.Linear(width * (2 if bidirectional else 1), vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.rnn(self.encoder(idx))[0])


def next_tokens(seed: int, rows: int = ROWS, length: int = LENGTH) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(4000 + seed)
    ids = torch.randint(0, VOCAB, (rows, length + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def token_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def minigpt(seed: int, causal: bool = True) -> nndiag.Subject:
    torch.manual_seed(seed)
    model = EveryPosition(MiniGPT(causal=causal))
    return nndiag.Subject(model, next_tokens(seed), loss=token_loss)


def lstm(seed: int, bidirectional: bool = False) -> nndiag.Subject:
    torch.manual_seed(seed)
    model = LSTMLanguageModel(bidirectional=bidirectional)
    return nndiag.Subject(model, next_tokens(seed), loss=token_loss)
