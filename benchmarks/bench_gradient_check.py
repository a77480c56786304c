"""Cost of a passing ``gradient_check`` as multiples of one float32 forward+backward of the
subject's own batch, measured in the same run (issue budget: 10x), on library and
hand-written CNNs and a vision transformer at batch 16, 32 and 64.

The check differentiates 4 rows whatever the batch, so its seconds stay flat while the
baseline grows with the batch. Run with ``pytest benchmarks/bench_gradient_check.py -s``;
each benchmark stores its ratio in ``extra_info`` and prints it. Nothing is asserted about
time; the verdict must be a pass.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import nndiag
from benchmarks.bench_real_models import _forward_backward_seconds
from tests.real_models import handwritten, models

torch.set_num_threads(1)


def _images(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2000)
    x = torch.randn(rows, 3, models.IMAGE_SIZE, models.IMAGE_SIZE, generator=g)
    return x, torch.randint(0, models.CLASSES, (rows,), generator=g)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: models._vision("resnet18", 0),
    "cifar_resnet18": lambda: handwritten.cifar_resnet18(0).model,
    "efficientnet_b0": lambda: models._vision("efficientnet_b0", 0),
    "vit_tiny": lambda: models._timm(
        "vit_tiny_patch16_224", 0, img_size=models.IMAGE_SIZE, patch_size=4
    ),
}


@pytest.mark.parametrize("rows", [16, 32, 64])
@pytest.mark.parametrize("name", list(MODELS))
def test_passing_gradient_check_cost(
    benchmark: pytest.FixtureRequest, name: str, rows: int
) -> None:
    model = MODELS[name]()
    X, y = _images(rows)
    subject = nndiag.Subject(model, (X, y))
    nndiag.diagnose(subject, ["gradient_check"])  # warm: the first run pays one-off set-up
    baseline = _forward_backward_seconds(subject)
    found: dict[str, nndiag.CheckResult] = {}

    def run() -> None:
        found["last"] = nndiag.diagnose(subject, ["gradient_check"])["gradient_check"]

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    result = found["last"]
    assert result.status == "pass", result.summary()
    ratio = benchmark.stats.stats.median / baseline
    benchmark.extra_info.update(ratio=round(ratio, 1), baseline_ms=round(baseline * 1e3, 1))
    benchmark.extra_info.update(forward=result.cost.forward, backward=result.cost.backward)
    print(
        f"\n{name} batch {rows}: {ratio:.1f}x one forward+backward ({baseline * 1e3:.0f} ms); "
        f"{result.cost.forward} forward / {result.cost.backward} backward passes on 4 rows"
    )
