"""Cost of the checks, as multiples of baselines measured in the same run.

Run with ``pytest benchmarks/bench_core.py``; each benchmark stores its ratio in
``extra_info`` (shown with ``--benchmark-json``) and prints it.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from collections.abc import Callable

import pytest
import torch
from torch import nn

import nndiag
from nndiag.core import Runner

torch.set_num_threads(2)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3072, 100),
        nn.ReLU(),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3072, generator=g), torch.randint(0, 10, (n,), generator=g)


def _median(fn: Callable[[], object], repeats: int = 15) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _forward_backward(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(X), y).backward()

    return step


def _report(benchmark: pytest.FixtureRequest, name: str, baseline: float) -> None:
    ratio = benchmark.stats.stats.median / baseline
    benchmark.extra_info[name] = round(ratio, 2)
    print(f"\n{name}: {ratio:.1f}x (baseline {baseline * 1e3:.2f} ms)")


def test_default_checks_on_the_mlp(benchmark: pytest.FixtureRequest) -> None:
    """Issue target: <= 3 s for the six checks on 3072-100x4-10, batch 64, 2 cores."""
    model, (X, y) = _mlp(), _data(64)
    baseline = _median(_forward_backward(model, X, y))
    subject = nndiag.Subject(model, (X, y))
    benchmark.pedantic(lambda: nndiag.diagnose(subject), rounds=3, iterations=1, warmup_rounds=1)
    _report(benchmark, "diagnose_vs_forward_backward", baseline)
    benchmark.extra_info["diagnose_seconds"] = round(benchmark.stats.stats.median, 3)


def test_gradient_check_vs_gradcheck_fast_mode(benchmark: pytest.FixtureRequest) -> None:
    """Issue target: no more than torch.autograd.gradcheck(fast_mode=True), same model.

    The two are timed interleaved, 15 rounds each, so that both see the same machine: on
    a shared 2-core machine back-to-back timings drift by 2x within a minute.
    """
    model, (X, y) = _mlp(), _data(32)
    model64, X64 = _mlp().double(), X.double()
    names = [n for n, _ in model64.named_parameters()]
    inputs = tuple(p.detach().requires_grad_() for p in model64.parameters())

    def loss_of(*tensors: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model64, dict(zip(names, tensors)), (X64,))
        return nn.functional.cross_entropy(out, y)

    def fast() -> None:
        torch.autograd.gradcheck(loss_of, inputs, fast_mode=True, eps=1e-6, atol=1e-5, rtol=1e-3)

    runner = Runner(nndiag.Subject(model, (X, y)))
    ours: list[float] = []
    theirs: list[float] = []

    def interleaved() -> None:
        start = time.perf_counter()
        fast()
        theirs.append(time.perf_counter() - start)
        start = time.perf_counter()
        runner.run("gradient_check")
        ours.append(time.perf_counter() - start)

    benchmark.pedantic(interleaved, rounds=15, iterations=1, warmup_rounds=1)
    fb = _median(_forward_backward(model64, X64, y))
    median = statistics.median(ours) / statistics.median(theirs)
    best = min(ours) / min(theirs)
    benchmark.extra_info.update(
        {
            "gradient_check_vs_gradcheck_fast_median": round(median, 2),
            "gradient_check_vs_gradcheck_fast_min": round(best, 2),
            "gradient_check_vs_float64_forward_backward": round(statistics.median(ours) / fb, 1),
            "gradcheck_fast_vs_float64_forward_backward": round(statistics.median(theirs) / fb, 1),
        }
    )
    print(
        f"\ngradient_check vs gradcheck(fast_mode): {median:.2f}x (medians), {best:.2f}x "
        f"(minima); vs a float64 forward+backward: {statistics.median(ours) / fb:.1f}x "
        f"(gradcheck {statistics.median(theirs) / fb:.1f}x)"
    )


def _lecture_net() -> nn.Sequential:
    """The lecture's initialization demo: 10 tanh layers of 500 units, no bias."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(10):
        layers += [nn.Linear(500, 500, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("net, batch", [("mlp", 64), ("mlp", 512), ("lecture", 1000)])
def test_activation_capture_overhead(
    benchmark: pytest.FixtureRequest, net: str, batch: int
) -> None:
    """Issue target: capture adds <= 30% to a bare forward; memory flat in the batch."""
    from nndiag.backends.torch.capture import Recorder

    if net == "mlp":
        model, (X, _) = _mlp(), _data(batch)
    else:
        model, X = (
            _lecture_net(),
            torch.randn(batch, 500, generator=torch.Generator().manual_seed(0)),
        )

    def bare() -> None:
        with torch.no_grad():
            model(X)

    def captured() -> list:
        recorder = Recorder(model, 40)
        with torch.no_grad(), recorder:
            model(X)
        return recorder.layers()

    baseline = _median(bare, repeats=30)
    benchmark.pedantic(captured, rounds=30, iterations=1, warmup_rounds=2)
    _report(benchmark, "capture_vs_bare_forward", baseline)
    tracemalloc.start()
    layers = captured()
    kept = sum(x.hist_counts.nbytes + (0 if x.fires is None else x.fires.nbytes) for x in layers)
    tracemalloc.stop()
    benchmark.extra_info["kept_bytes"] = kept
    print(f"statistics kept: {kept} bytes for batch {batch}")
