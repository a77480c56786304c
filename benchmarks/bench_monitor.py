"""Wall time of a training loop under ``nndiag.monitor`` against the bare loop, in the same
run: a CIFAR-style ResNet (3x32x32 images, batch 32, SGD) and a tiny Hugging Face GPT-2
(batch 16 x 32 tokens, AdamW), at the default sampling (``every=50``) and sampling every
step (``every=1``). One thread, as in the tests.

Run with ``pytest benchmarks/bench_monitor.py -s``. The variants run interleaved, a block
of steps each, so drift hits them alike; the ratios (monitored over bare, medians of the
blocks) go to ``extra_info`` and are printed. Nothing is asserted about time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import nndiag

torch.set_num_threads(1)
STEPS, ROUNDS = 100, 3  # steps per block (two samples at every=50), blocks per variant


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.na, self.nb = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.skip(x) + self.nb(self.b(F.relu(self.na(self.a(x))))))


def _resnet() -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], torch.Tensor]]:
    """A ResNet-20-style CIFAR net (16-32-64 channels, three blocks a stage)."""
    torch.manual_seed(0)
    stages, cin = [], 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        stages += [_Block(cin, cout, stride), _Block(cout, cout, 1), _Block(cout, cout, 1)]
        cin = cout
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), *stages,
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, opt, lambda: F.cross_entropy(model(x), y)


def _gpt2() -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], torch.Tensor]]:
    from nndiag.compat import torchvision_on_cpu

    torchvision_on_cpu()  # transformers imports torchvision: docs/your-project.md
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=256, n_positions=64)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 256, (16, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    return model, opt, lambda: model(input_ids=ids, labels=ids).loss


def _block(model, opt, loss_of, every: int | None) -> float:
    start = time.perf_counter()
    if every is None:
        for _ in range(STEPS):
            opt.zero_grad()
            loss_of().backward()
            opt.step()
    else:
        with nndiag.monitor(model, opt, every=every) as mon:
            for _ in range(STEPS):
                opt.zero_grad()
                loss = loss_of()
                loss.backward()
                opt.step()
                mon.step(loss)
    return time.perf_counter() - start


@pytest.mark.parametrize("which", ["resnet_cifar", "gpt2_tiny"])
def test_monitor_overhead(benchmark: pytest.FixtureRequest, which: str) -> None:
    model, opt, loss_of = _resnet() if which == "resnet_cifar" else _gpt2()
    variants: dict[str, int | None] = {"bare": None, "every_50": 50, "every_1": 1}
    _block(model, opt, loss_of, None)  # warm: allocator, first optimizer step
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, every in variants.items():
            times[name].append(_block(model, opt, loss_of, every))
    benchmark.pedantic(_block, args=(model, opt, loss_of, 50), rounds=1, iterations=1)
    median = {name: statistics.median(t) for name, t in times.items()}
    for name in ("every_50", "every_1"):
        benchmark.extra_info[f"{name}_over_bare"] = round(median[name] / median["bare"], 4)
    print(
        f"\n{which}: bare {median['bare'] / STEPS * 1e3:.1f} ms/step; every=50 "
        f"{median['every_50'] / median['bare']:.3f}x; every=1 "
        f"{median['every_1'] / median['bare']:.3f}x"
    )
