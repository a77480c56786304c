"""Cost of ``diagnose()`` on library models, as multiples of one float32 forward+backward of
the same batch measured in the same run (issue budget: 150x on resnet18, batch 16 at
3x32x32).

Run with ``pytest benchmarks/bench_real_models.py -s``; each benchmark stores its ratio in
``extra_info`` and prints it, with the per-check seconds. Nothing is asserted about time.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from torch import nn

import nndiag
from tests.real_models import models

torch.set_num_threads(1)


def _forward_backward_seconds(subject: nndiag.Subject, repeats: int = 5) -> float:
    model, batch = subject.model, subject.batches[0]
    X, y = batch.X, batch.y
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(X), y).backward()
        times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "vit_tiny"])
def test_default_checks_on_a_library_model(benchmark: pytest.FixtureRequest, name: str) -> None:
    factory = models.vit_tiny if name == "vit_tiny" else models.HEALTHY[name]
    subject = factory(0)
    baseline = _forward_backward_seconds(subject)
    report: dict[str, nndiag.Report] = {}

    def run() -> None:
        report["last"] = nndiag.diagnose(subject)

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    ratio = benchmark.stats.stats.median / baseline
    per_check = {r.check: r.cost.seconds for r in report["last"]}
    benchmark.extra_info.update(ratio=round(ratio, 1), baseline_ms=round(baseline * 1e3, 1))
    benchmark.extra_info.update({f"{k}_s": v for k, v in per_check.items()})
    statuses = {r.check: r.status for r in report["last"]}
    print(f"\n{name}: {ratio:.0f}x one forward+backward ({baseline * 1e3:.0f} ms); {statuses}")


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_causality_on_a_language_model(benchmark: pytest.FixtureRequest, name: str) -> None:
    """``causality`` (two eval forwards of 31 copies of one row, 16 tokens) against one
    forward+backward of the model's own batch of 16 sequences."""
    subject = models.HEALTHY[name](0)
    model, batch = subject.model, subject.batches[0]
    times = []
    for _ in range(6):
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        models.token_loss(model(batch.X), batch.y).backward()
        times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    baseline = statistics.median(times[1:])
    nndiag.diagnose(subject, ["causality"])  # first call: transformers' lazy set-up

    def run() -> None:
        assert nndiag.diagnose(subject, ["causality"])["causality"].status == "pass"

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=0)
    ratio = benchmark.stats.stats.median / baseline
    benchmark.extra_info.update(ratio=round(ratio, 2), baseline_ms=round(baseline * 1e3, 1))
    print(f"\n{name} causality: {ratio:.2f}x one forward+backward ({baseline * 1e3:.1f} ms)")
