"""Gates are found by what the graph does, not by class or attribute names: an activation
whose output multiplies another tensor (a squeeze-excitation sigmoid scaling the trunk, a
GLU's activation, a gated attention output) is left out of the scale and dead-unit rules,
with the pooled branch feeding a squeeze-excitation gate. Hand-written blocks, as model
collections write them, are silent when healthy; a real init bug still fails."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nndiag

CHECKS = ["activation_stats", "dead_neurons", "init_scale"]


class InlineSEBlock(nn.Module):
    """A pre-activation residual block with squeeze-excitation written inline, as CIFAR
    model collections write SENet: ``out = out * w`` after ``w = sigmoid(fc2(...))``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c), nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        w = F.avg_pool2d(out, out.size(2))
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(w))))
        return out * w + x


class SqueezeExcite(nn.Module):
    """Squeeze-excitation as a module of its own, written by hand."""

    def __init__(self, c: int, act: Callable[[torch.Tensor], torch.Tensor] = F.relu) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Linear(c, max(c // 4, 2)), nn.Linear(max(c // 4, 2), c)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3))
        s = torch.sigmoid(self.expand(self.act(self.reduce(s))))
        return x * s[:, :, None, None]


class MBConv(nn.Module):
    """An EfficientNet/MobileNet block by hand: expand, depthwise, squeeze-excite, project."""

    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        hidden = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden))
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
        )
        self.se = SqueezeExcite(hidden, F.silu)
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.depthwise(F.silu(self.expand(x))))
        return x + self.project(self.se(h))


class ConvNet(nn.Module):
    def __init__(self, block: Callable[[int], nn.Module], c: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.blocks = nn.Sequential(*[block(c) for _ in range(depth)])
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(F.relu(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


class SwiGLU(nn.Module):
    """Llama's MLP by hand: ``down(silu(gate(x)) * up(x))``, pre-norm and residual."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.gate, self.up, self.down = (
            nn.Linear(d, 2 * d),
            nn.Linear(d, 2 * d),
            nn.Linear(2 * d, d),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class GatedOutput(nn.Module):
    """A gated attention-style output: ``proj(x) * sigmoid(gate(x))``, pre-norm, residual."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.proj, self.gate = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.proj(h) * torch.sigmoid(self.gate(h))


class MLPNet(nn.Module):
    def __init__(self, block: Callable[[int], nn.Module], d: int = 32, depth: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(16, d)
        self.blocks = nn.Sequential(*[block(d) for _ in range(depth)])
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x)))


def _images(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, 3, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g)


def _vectors(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(128, 16, generator=g), torch.randint(0, 10, (128,), generator=g)


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], tuple[torch.Tensor, ...]]]] = {
    "inline_se": (lambda: ConvNet(InlineSEBlock), _images),
    "mbconv_se": (lambda: ConvNet(MBConv), _images),
    "swiglu": (lambda: MLPNet(SwiGLU), _vectors),
    "gated_output": (lambda: MLPNet(GatedOutput), _vectors),
}


def _report(name: str, seed: int, model: nn.Module | None = None) -> nndiag.Report:
    build, data = MODELS[name]
    torch.manual_seed(seed)
    subject = nndiag.Subject(model or build(), data(seed), name=name)
    return nndiag.diagnose(subject, CHECKS, nndiag.Config(seed=seed))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", list(MODELS))
def test_hand_written_gates_are_silent_when_healthy(name: str, seed: int) -> None:
    report = _report(name, seed)
    for result in report:
        assert result.status in ("pass", "skip"), result.summary()
    assert report["activation_stats"].metrics["gates_left_out"] > 0


def test_the_gate_is_found_by_its_multiplication_not_its_name() -> None:
    # The inline block's sigmoid is named after the residual block ("blocks.0.sigmoid"):
    # no "gate" or "scale" in it. The squeeze branch's ReLU (pooled) is left out with it;
    # the trunk's ReLUs in the same block stay judged.
    report = _report("inline_se", 0)
    assert report["activation_stats"].metrics["gates_left_out"] == 8  # 4 gates, 4 branches
    rows = {r["name"]: r["gate_branch"] for r in report["dead_neurons"].evidence["layers"]}
    assert rows["blocks.0.relu#3"] and not rows["blocks.0.relu"] and not rows["blocks.0.relu#2"]


def test_a_real_bug_beside_the_gates_still_fails() -> None:
    # A large negative bias before a trunk ReLU kills it: dead_neurons names that layer.
    model = MODELS["inline_se"][0]()
    with torch.no_grad():
        model.blocks[1].bn2.bias.fill_(-10.0)
    report = _report("inline_se", 0, model)
    result = report["dead_neurons"]
    assert result.status == "fail" and "blocks.1.relu#2" in result.message, result.summary()


def test_a_jax_gate_is_found_by_its_multiplication() -> None:
    # The same rule in the jaxpr: a sigmoid whose output multiplies the trunk, with no
    # name saying so; the trunk's ReLUs stay judged.
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(0)

    def dense(fan_in: int, fan_out: int) -> dict[str, Any]:
        std = np.sqrt(2 / fan_in)
        return {"W": jnp.asarray(rng.normal(0, std, (fan_in, fan_out)), dtype=jnp.float32)}

    params = {"a": dense(16, 64), "b": dense(64, 64), "g": dense(64, 64), "out": dense(64, 10)}

    def apply(p: dict[str, Any], x: Any) -> Any:
        h = jax.nn.relu(x @ p["a"]["W"])
        h = jax.nn.relu(h @ p["b"]["W"])
        return (h * jax.nn.sigmoid(h @ p["g"]["W"])) @ p["out"]["W"]

    X, y = (t.numpy() for t in _vectors(0))
    subject = nndiag.Subject((apply, params), (X, y), name="jax_gated")
    report = nndiag.diagnose(subject, ["activation_stats", "dead_neurons"])
    assert report["activation_stats"].metrics["gates_left_out"] == 1, report["activation_stats"]
    rows = {r["name"]: r["gate_branch"] for r in report["dead_neurons"].evidence["layers"]}
    assert rows and not any(rows.values())  # the ReLUs: not pooled into a gate's branch
    for result in report:
        assert result.status == "pass", result.summary()
