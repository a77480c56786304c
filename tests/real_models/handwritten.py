"""Hand-written CIFAR-10 models, in the style of public model collections (kuangliu's
pytorch-cifar, the PyTorch CIFAR tutorial), and the tools of the gradient sweep.

They are for ``benchmarks/gradient_sweep.py`` and ``test_gradient_sweep.py``: does
``gradient_check`` catch a gradient that is 1% (or 10%) off in any single parameter tensor
of a model written as ``nn.Module`` classes with functional calls (``F.relu``,
``F.avg_pool2d``, an in-place residual ``out += shortcut``), not library classes?

- :func:`plant` registers a parametrization whose forward is the identity and whose
  backward scales the gradient: the forward values stay right, one tensor's gradient is
  wrong by ``factor``.
- :func:`positions` picks the tensors to plant in: a deterministic, stratified sample.
- :func:`unplanted_name` maps the name a planted tensor has in ``named_parameters()``
  (``...parametrizations.<p>.original``) back to its plain name.

Each factory seeds the global generator for the weights (``torch.manual_seed(seed)``) and
draws its data from a private ``torch.Generator().manual_seed(2000 + seed)``, like
``models.py``.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import nndiag
from tests.real_models.models import CLASSES, IMAGE_BATCH, IMAGE_SIZE

MLP_FEATURES = 256
# A tensor whose gradient norm is below this share of the whole gradient's cannot show a
# scale error (a convolution bias right before batch norm gets ~1e-16 in float64).
ZERO_SHARE = 1e-9


# -- data ----------------------------------------------------------------------------------
def _images(seed: int, rows: int = IMAGE_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` images 3x32x32 drawn N(0, 1) and their labels of ``CLASSES`` classes."""
    g = torch.Generator().manual_seed(2000 + seed)
    x = torch.randn(rows, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    return x, torch.randint(0, CLASSES, (rows,), generator=g)


def _features(seed: int, rows: int = IMAGE_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` vectors of ``MLP_FEATURES`` features drawn N(0, 1) and their labels."""
    g = torch.Generator().manual_seed(2000 + seed)
    x = torch.randn(rows, MLP_FEATURES, generator=g)
    return x, torch.randint(0, CLASSES, (rows,), generator=g)


# -- kuangliu/pytorch-cifar ResNet18 ---------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """The CIFAR ResNet: a 3x3 stride-1 stem without max-pool, four stages of blocks (the
    first at full 32x32 resolution), a 4x4 average pool and one linear layer."""

    def __init__(self, num_blocks: list[int], num_classes: int = CLASSES, width: int = 64) -> None:
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(2 * width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(4 * width, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(8 * width, num_blocks[3], stride=2)
        self.linear = nn.Linear(8 * width * BasicBlock.expansion, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        for s in strides:
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes * BasicBlock.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        return self.linear(out)


def cifar_resnet18(seed: int = 0, rows: int = IMAGE_BATCH, width: int = 64) -> nndiag.Subject:
    """kuangliu's ResNet18 (11.2M parameters at ``width=64``, 62 tensors).

    Cost: no stem downsampling, so the first stage runs at 32x32: ~0.56 GFLOPs an image
    forward at width 64, ~16x torchvision's resnet18 on the same 32x32 images. FLOPs scale
    with ``width**2``: width 16 is ~16x cheaper and keeps every tensor (the tests use it).
    """
    torch.manual_seed(seed)
    model = ResNet([2, 2, 2, 2], width=width)
    return nndiag.Subject(model, _images(seed, rows), name="cifar_resnet18")


# -- the PyTorch-tutorial-style CNN, with batch norm -----------------------------------------
class ConvBNNet(nn.Module):
    """Conv(3,16,3)-BN-ReLU-MaxPool-Conv(16,32,3)-BN-ReLU-MaxPool-Flatten-Linear(2048,10);
    the convolutions keep their biases (``padding=1``), right before batch norm."""

    def __init__(self, num_classes: int = CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc = nn.Linear(32 * (IMAGE_SIZE // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        return self.fc(x)


def conv_bn_cnn(seed: int = 0, rows: int = IMAGE_BATCH) -> nndiag.Subject:
    """A small CNN (22k parameters, 10 tensors). Both convolution biases feed batch norm in
    training mode, which subtracts the batch mean: their gradient is zero."""
    torch.manual_seed(seed)
    return nndiag.Subject(ConvBNNet(), _images(seed, rows), name="conv_bn_cnn")


# -- a ReLU MLP ------------------------------------------------------------------------------
class MLP(nn.Module):
    """Flatten, then 256-128-128-64-10 with ReLU between the linear layers."""

    def __init__(self, num_classes: int = CLASSES) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(MLP_FEATURES, 128)
        self.fc2 = nn.Linear(128, 128)
        self.fc3 = nn.Linear(128, 64)
        self.fc4 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = F.relu(self.fc3(x))
        return self.fc4(x)


def relu_mlp(seed: int = 0, rows: int = IMAGE_BATCH) -> nndiag.Subject:
    """The MLP (59k parameters, 8 tensors) on (rows, 256) inputs."""
    torch.manual_seed(seed)
    return nndiag.Subject(MLP(), _features(seed, rows), name="relu_mlp")


Factory = Callable[..., nndiag.Subject]

HANDWRITTEN: dict[str, Factory] = {
    "cifar_resnet18": cifar_resnet18,
    "conv_bn_cnn": conv_bn_cnn,
    "relu_mlp": relu_mlp,
}


# -- planting a gradient error ---------------------------------------------------------------
class _ScaledGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``factor``."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return w.view_as(w)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


class ScaledGrad(nn.Module):
    """A parametrization that leaves the value alone and scales its gradient."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _ScaledGrad.apply(w, self.factor)


def plant(model: nn.Module, tensor_name: str, factor: float) -> nn.Module:
    """Make the gradient of ``tensor_name`` (a name of ``model.named_parameters()``, e.g.
    ``"layer1.0.bn1.bias"``) ``factor`` times too large; the forward is unchanged.

    The parameter is then listed as ``layer1.0.bn1.parametrizations.bias.original``
    (:func:`unplanted_name` maps it back). A weight tied to another module (GPT-2's
    ``wte``/``lm_head``) is scaled only along the path through the module planted in.
    """
    owner_name, _, attr = tensor_name.rpartition(".")
    owner = model.get_submodule(owner_name)
    if not isinstance(getattr(owner, attr, None), nn.Parameter):
        raise ValueError(f"{tensor_name} is not a parameter of {type(model).__name__}")
    parametrize.register_parametrization(owner, attr, ScaledGrad(factor))
    return model


_PLANTED = re.compile(r"(^|\.)parametrizations\.([^.]+)\.original$")


def unplanted_name(name: str) -> str:
    """``a.b.parametrizations.weight.original`` -> ``a.b.weight``; other names unchanged."""
    return _PLANTED.sub(r"\1\2", name)


# -- where to plant --------------------------------------------------------------------------
_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


def _is_norm(module: nn.Module) -> bool:
    """Batch/layer/group/instance norm, and library norms by class name (LlamaRMSNorm)."""
    return isinstance(module, _NORMS) or "norm" in type(module).__name__.lower()


def _middle(names: list[str]) -> list[str]:
    return [names[len(names) // 2]] if names else []


def positions(model: nn.Module, k: int = 12) -> list[str]:
    """A deterministic, stratified sample of ``max(k, required)`` parameter names (all of
    them when the model has no more than ``k``), in ``named_parameters()`` order.

    Always included, when the model has them: the first and the last weight of a non-norm
    layer (the input layer and the head), the weight and the bias of the middle norm layer
    that has each, the middle convolution bias, the first embedding, and the first
    attention projection. The rest are spread evenly over the remaining tensors.
    """
    modules = dict(model.named_modules())
    params = [n for n, p in model.named_parameters() if p.requires_grad]
    if len(params) <= k:
        return params

    def owner(name: str) -> nn.Module:
        return modules[name.rpartition(".")[0]]

    def attr(name: str) -> str:
        return name.rpartition(".")[2]

    layer_weights = [n for n in params if attr(n) == "weight" and not _is_norm(owner(n))]
    norm_weights = [n for n in params if attr(n) == "weight" and _is_norm(owner(n))]
    norm_biases = [n for n in params if attr(n) == "bias" and _is_norm(owner(n))]
    conv_biases = [
        n for n in params if attr(n) == "bias" and isinstance(owner(n), nn.modules.conv._ConvNd)
    ]
    embeddings = [n for n in params if isinstance(owner(n), nn.Embedding)]
    attention = [
        n
        for n in params
        if attr(n) == "weight"
        and not _is_norm(owner(n))
        and re.search(r"attn|attention", n) is not None
    ]
    required = [
        *layer_weights[:1],
        *layer_weights[-1:],
        *_middle(norm_weights),
        *_middle(norm_biases),
        *_middle(conv_biases),
        *embeddings[:1],
        *attention[:1],
    ]
    chosen = set(required)
    rest = [n for n in params if n not in chosen]
    need = max(k - len(chosen), 0)
    chosen.update(rest[int((i + 0.5) * len(rest) / need)] for i in range(need))
    return [n for n in params if n in chosen]


# -- measuring -------------------------------------------------------------------------------
def check_mode(model: nn.Module) -> nn.Module:
    """The modes gradient_check runs the model in: batch norm trains (batch statistics),
    every other module is in eval mode (no dropout)."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            module.train()
    return model


def loss_of(subject: nndiag.Subject, out: Any, y: torch.Tensor) -> torch.Tensor:
    """The subject's loss, or nndiag's default cross-entropy, on (N, C) or (N, T, C)."""
    out = getattr(out, "logits", out)  # a transformers ModelOutput
    if subject.loss is not None:
        return subject.loss(out, y)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def gradient_shares(subject: nndiag.Subject) -> dict[str, float]:
    """Each trainable tensor's gradient norm over the whole gradient's, from one float64
    backward on a copy in :func:`check_mode` (the modes and batch gradient_check uses).

    A tensor whose share is ~0 cannot show a scale error: a convolution bias right before
    batch norm in training mode (the batch mean removes it) gets exactly zero.
    """
    model = check_mode(copy.deepcopy(subject.model).double())
    batch = subject.batches[0]
    X = batch.X.double() if batch.X.is_floating_point() else batch.X
    loss_of(subject, model(X), batch.y).backward()
    norms = {
        n: float(p.grad.norm()) if p.grad is not None else 0.0
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    total = math.sqrt(sum(v * v for v in norms.values())) or 1.0
    return {n: v / total for n, v in norms.items()}


def planted_subject(subject: nndiag.Subject, tensor_name: str, factor: float) -> nndiag.Subject:
    """A copy of ``subject`` whose model has :func:`plant` at ``tensor_name``."""
    model = plant(copy.deepcopy(subject.model), tensor_name, factor)
    batch = subject.batches[0]
    return nndiag.Subject(model, (batch.X, batch.y), loss=subject.loss, name=subject.name)


def failed_tensors(result: nndiag.CheckResult) -> list[str]:
    """The tensors a gradient_check result fails, by their unplanted names."""
    rows = result.evidence.get("tensors", []) if result.evidence else []
    return [unplanted_name(r["name"]) for r in rows if r.get("status") == "fail"]


def worst_tensor(result: nndiag.CheckResult) -> str | None:
    """``metrics["worst_tensor"]`` by its unplanted name."""
    worst = (result.metrics or {}).get("worst_tensor")
    return unplanted_name(worst) if worst else None


def named(result: nndiag.CheckResult, planted: str) -> str:
    """Whether a result names the planted tensor: ``worst`` (it is ``worst_tensor``),
    ``listed`` (among the failed tensors, not the worst), ``other`` (it fails, naming other
    tensors only) or ``-`` (it does not fail)."""
    if result.status != "fail":
        return "-"
    if worst_tensor(result) == planted:
        return "worst"
    return "listed" if planted in failed_tensors(result) else "other"
