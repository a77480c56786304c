"""Training runs for the monitor's validation: healthy runs that must stay silent, and
planted faults that must be flagged by the right rule soon after their onset. Tiny models
and data, CPU, a fraction of a second each; seeded, so every run is the same everywhere.

Used by tests/monitoring/test_suite.py and benchmarks/monitor_suite.py (the precision,
recall and delay table of docs/monitor.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

import nndiag
from nndiag.monitoring import Monitor, TrainingWarning

STEPS, EVERY, BATCH = 200, 10, 32


@dataclass(frozen=True)
class Run:
    """A recipe: build (model, optimizer, scheduler-or-None, data) from a seed. ``required``
    is the rule that must flag the fault (None: a healthy run, which must stay silent),
    ``also`` rules that name the same cause and may fire before it, ``onset`` the step the
    fault starts at."""

    name: str
    build: Callable[[int], tuple[nn.Module, torch.optim.Optimizer, object, object]]
    required: str | None = None
    also: frozenset[str] = frozenset()
    onset: int = 0
    steps: int = STEPS


def _classes(seed: int, n: int = 8192, features: int = 20, classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x @ torch.randn(features, classes, generator=g)).argmax(1)
    return x, y


def _images(seed: int, n: int = 8192):
    """Labels a conv net with global pooling can learn: from each image's channel means and
    its mean of squares (texture)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    x = x + torch.randn(n, 3, 1, 1, generator=g)
    features = torch.cat([x.mean((2, 3)), x.pow(2).mean((2, 3))], 1)
    return x, (features @ torch.randn(6, 4, generator=g)).argmax(1)


def _tokens(seed: int, n: int = 8192, vocab: int = 16, length: int = 13):
    g = torch.Generator().manual_seed(seed)
    nxt = torch.randint(0, vocab, (vocab, 2), generator=g)  # each token has two successors
    seq = [torch.randint(0, vocab, (n,), generator=g)]
    for _ in range(length - 1):
        pick = torch.randint(0, 2, (n,), generator=g)
        seq.append(nxt[seq[-1], pick])
    ids = torch.stack(seq, 1)
    return ids[:, :-1], ids[:, 1:]


def _mlp(width: int = 64) -> nn.Module:
    return nn.Sequential(
        nn.Linear(20, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 5)
    )


class _Block(nn.Module):
    """A hand-written residual block (conv-BN-ReLU-conv-BN, identity shortcut)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = (
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
        )
        self.na, self.nb = nn.BatchNorm2d(c), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.nb(self.b(F.relu(self.na(self.a(x))))))


class _Attention(nn.Module):
    """A hand-written causal self-attention block with a GELU MLP (pre-norm)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.n1(x)).chunk(3, -1)
        x = x + self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        return x + self.mlp(self.n2(x))


class _LM(nn.Module):
    def __init__(self, vocab: int = 16, d: int = 32) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.zeros(12, d))
        self.block, self.head = _Attention(d), nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(ids) + self.pos[: ids.shape[1]]))


def healthy_mlp(seed: int):
    torch.manual_seed(seed)
    model = _mlp()
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), None, _classes(seed)


def healthy_cnn(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )  # fmt: skip
    return model, torch.optim.Adam(model.parameters(), lr=1e-3), None, _images(seed)


def healthy_resnet(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        _Block(8), _Block(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, opt, None, _images(seed)


def healthy_lm(seed: int):
    torch.manual_seed(seed)
    model = _LM()
    return model, torch.optim.AdamW(model.parameters(), lr=3e-3), None, _tokens(seed)


def lr_x100_at_150(seed: int):
    model, opt, _, data = healthy_mlp(seed)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 100.0 if s >= 150 else 1.0)
    return model, opt, sched, data


def relu_dying(seed: int):
    torch.manual_seed(seed)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 60.0 if s >= 100 else 1.0)
    return model, opt, sched, _classes(seed)


def layer_left_out(seed: int):
    torch.manual_seed(seed)
    model = _mlp()
    held = [p for n, p in model.named_parameters() if not n.startswith("2.")]
    return model, torch.optim.SGD(held, lr=0.05, momentum=0.9), None, _classes(seed)


class _Half(nn.Module):
    """float16 logits scaled past float16's range (65504) once the weights grow."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp().half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net(x.half()) * 4000).float()


def float16_overflow(seed: int):
    torch.manual_seed(seed)
    model = _Half()
    return model, torch.optim.SGD(model.parameters(), lr=0.05), None, _classes(seed)


class _RNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(16, 32), nn.Linear(64, 16)
        self.rnn = nn.RNN(32, 64, batch_first=True, nonlinearity="relu")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(ids))[0])


class _Gain:
    """In place of a scheduler: after step ``at`` the recurrent weights' gain triples, as
    when an RNN's recurrent matrix grows past a spectral radius of 1."""

    def __init__(self, rnn: nn.RNN, at: int) -> None:
        self.rnn, self.at, self.steps = rnn, at, 0

    def step(self) -> None:
        self.steps += 1
        if self.steps == self.at:
            with torch.no_grad():
                self.rnn.weight_hh_l0.mul_(3.0)


def exploding_rnn(seed: int):
    torch.manual_seed(seed)
    model = _RNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, _Gain(model.rnn, 100), _tokens(seed)


def memorising(seed: int):
    torch.manual_seed(seed)
    model = _mlp(256)
    x, y = _classes(seed, n=1024)
    g = torch.Generator().manual_seed(seed + 1000)
    y = torch.where(
        torch.rand(1024, generator=g) < 0.3, torch.randint(0, 5, (1024,), generator=g), y
    )
    return model, torch.optim.Adam(model.parameters(), lr=3e-3), "tiny", (x, y)


def rate_decayed(seed: int):
    torch.manual_seed(seed)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / 20))
    return model, opt, sched, _classes(seed)


HEALTHY = (
    Run("mlp", healthy_mlp),
    Run("cnn_bn", healthy_cnn),
    Run("resnet", healthy_resnet),
    Run("lm", healthy_lm),
)
_DIVERGED = frozenset({"nonfinite", "loss_spike", "gradient_norm", "update_ratio"})
FAULTS = (
    Run("lr_x100_at_150", lr_x100_at_150, "loss_spike", _DIVERGED, 150),
    Run("relu_dying", relu_dying, "dying_units", frozenset({"update_ratio"}), 100),
    Run("layer_left_out", layer_left_out, "update_ratio", onset=0),
    Run("float16_overflow", float16_overflow, "nonfinite", onset=0),
    Run("exploding_rnn", exploding_rnn, "gradient_norm", _DIVERGED, 100),
    Run("memorising", memorising, "generalization_gap", onset=0, steps=400),
    Run("rate_decayed", rate_decayed, "loss_flat", onset=20),
)


def false_alarms(run: Run, found: dict[str, int]) -> dict[str, int]:
    """Rules that fired where they should not: any in a healthy run; in a faulty one,
    any before the onset, or outside the fault's causes before the required rule fired
    (after it, a rule reads the fault's consequences: the loss of a net whose units died
    stops falling)."""
    if run.required is None:
        return dict(found)
    flagged = found.get(run.required)
    return {
        rule: step
        for rule, step in found.items()
        if step < run.onset
        or (rule != run.required and rule not in run.also and (flagged is None or step < flagged))
    }


def train(run: Run, seed: int) -> Monitor:
    """Train ``run`` at ``seed`` under the monitor (``on_fatal="warn"``, silenced), with a
    validation every 20 steps on rows the training never sees."""
    model, opt, sched, (x, y) = run.build(seed)
    train_rows = 32 if sched == "tiny" else len(x) // 2
    g = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainingWarning)
        with nndiag.monitor(model, opt, name=run.name, every=EVERY) as mon:
            for step in range(run.steps):
                i = torch.randint(0, train_rows, (BATCH,), generator=g)
                opt.zero_grad()
                out = model(x[i])
                loss = loss_fn(out.flatten(0, -2), y[i].flatten())
                loss.backward()
                opt.step()
                if sched is not None and sched != "tiny":
                    sched.step()
                mon.step(loss)
                if step % 20 == 19:
                    with torch.no_grad():
                        model.eval()
                        val = model(x[-512:])
                        model.train()
                    mon.validate(loss_fn(val.flatten(0, -2), y[-512:].flatten()))
    return mon


def fired(mon: Monitor) -> dict[str, int]:
    """The rules that fired, with the step each first fired at."""
    return {r.check: r.metrics["step"] for r in mon.report.results if r.status in ("warn", "fail")}
