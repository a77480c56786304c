"""gradient_check catches a gradient 1% off in any single parameter tensor and names it.

A parametrization (``handwritten.plant``) leaves the forward alone and scales one tensor's
gradient by 1.01, at each of a model's stratified positions (``handwritten.positions``);
the check must fail with that tensor as ``worst_tensor``, and pass on the unplanted
model. ``benchmarks/gradient_sweep.py`` runs the same over more models, factors and seeds,
next to ``torch.autograd.gradcheck``.
"""

from __future__ import annotations

import functools

import pytest

import nndiag
from tests.real_models import handwritten, models

pytest.importorskip("torchvision")
pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

CHECK = "gradient_check"
FACTOR = 1.01

# model -> (factory, seeds, positions), seeds 0-1 everywhere. About 6 minutes of one CPU
# thread in all on a 2-core machine: relu_mlp (8 tensors) and conv_bn_cnn (10) are planted
# in every tensor (~0.1 and ~0.2 s a diagnosis); the CIFAR ResNet18 at width 16 (16x fewer
# FLOPs than the original's 64, same 62 tensors), torchvision's resnet18, mobilenet_v3_small,
# efficientnet_b0 (3-8 s a failing diagnosis) and the tiny GPT-2 and Llama (~1 s) at 6
# stratified positions. benchmarks/gradient_sweep.py runs 12 and more.
PLAN: dict[str, tuple[handwritten.Factory, tuple[int, ...], int]] = {
    "relu_mlp": (handwritten.relu_mlp, (0, 1), 12),
    "conv_bn_cnn": (handwritten.conv_bn_cnn, (0, 1), 12),
    "cifar_resnet18": (functools.partial(handwritten.cifar_resnet18, width=16), (0, 1), 6),
    "resnet18": (models.resnet18, (0, 1), 6),
    "mobilenet_v3_small": (models.mobilenet_v3_small, (0, 1), 6),
    "efficientnet_b0": (models.efficientnet_b0, (0, 1), 6),
    "gpt2": (models.gpt2, (0, 1), 6),
    "llama": (models.llama, (0, 1), 6),
}


@functools.cache
def _subject(name: str, seed: int) -> nndiag.Subject:
    """Built once per model and seed: at collection (for the positions) and for the tests;
    every test plants in its own copy."""
    factory, _, _ = PLAN[name]
    return factory(seed)


@functools.cache
def _shares(name: str, seed: int) -> dict[str, float]:
    return handwritten.gradient_shares(_subject(name, seed))


def _planted_cases() -> list[object]:
    cases: list[object] = []
    for name, (_, seeds, k) in PLAN.items():
        for seed in seeds:
            for position in handwritten.positions(_subject(name, seed).model, k):
                cases.append(pytest.param(name, seed, position, id=f"{name}-{seed}-{position}"))
    return cases


def _healthy_cases() -> list[object]:
    return [
        pytest.param(name, seed, id=f"{name}-{seed}")
        for name, (_, seeds, _) in PLAN.items()
        for seed in seeds
    ]


def _diagnose(subject: nndiag.Subject, seed: int) -> nndiag.CheckResult:
    return nndiag.diagnose(subject, checks=[CHECK], config=nndiag.Config(seed=seed))[CHECK]


@pytest.mark.parametrize(("name", "seed", "position"), _planted_cases())
def test_one_percent_error_is_caught_and_named(name: str, seed: int, position: str) -> None:
    share = _shares(name, seed)[position]
    if share < handwritten.ZERO_SHARE:
        pytest.skip(
            f"{position} gets {share:.2g} of the gradient norm (a convolution bias before "
            "batch norm in training mode gets none): a scaled zero gradient is still right"
        )
    subject = handwritten.planted_subject(_subject(name, seed), position, FACTOR)
    result = _diagnose(subject, seed)
    failed = handwritten.failed_tensors(result)
    assert result.status == "fail", f"share {share:.2g}: {result.status}: {result.message}"
    assert handwritten.worst_tensor(result) == position, f"failed {failed}: {result.message}"


@pytest.mark.parametrize(("name", "seed"), _healthy_cases())
def test_unplanted_model_passes(name: str, seed: int) -> None:
    result = _diagnose(_subject(name, seed), seed)
    assert result.status == "pass", result.message
