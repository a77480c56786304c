"""Small healthy and broken torch models, each with the data it is diagnosed on.

Every builder takes a seed and returns an ``nndiag.Subject``; the broken ones carry the bug
named in their docstring and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import nndiag

IN, WIDTH, CLASSES, N = 32, 64, 10, 128


def _classification(seed: int, n: int = N, features: int = IN) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(n, features, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def _mlp(
    depth: int,
    act: type[nn.Module],
    init: Callable[[torch.Tensor], None] | None,
    width: int = WIDTH,
    features: int = IN,
    bias: bool = True,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    fan = features
    for _ in range(depth - 1):
        linear = nn.Linear(fan, width, bias=bias)
        if init is not None:
            init(linear.weight)
            if bias:
                nn.init.zeros_(linear.bias)
        layers += [linear, act()]
        fan = width
    layers.append(nn.Linear(fan, CLASSES))
    return nn.Sequential(*layers)


def _he(w: torch.Tensor) -> None:
    nn.init.kaiming_normal_(w, nonlinearity="relu")


def _xavier(w: torch.Tensor) -> None:
    nn.init.normal_(w, std=1 / math.sqrt(w.shape[1]))


def _gaussian(std: float) -> Callable[[torch.Tensor], None]:
    return lambda w: nn.init.normal_(w, std=std)


# -- healthy -----------------------------------------------------------------------------
def he_relu_mlp(seed: int = 0) -> nndiag.Subject:
    torch.manual_seed(seed)
    return nndiag.Subject(_mlp(5, nn.ReLU, _he), _classification(seed), name="he_relu_mlp")


def default_relu_mlp(seed: int = 0) -> nndiag.Subject:
    """PyTorch's default init: healthy, though up to ~27% of deep units start dead."""
    torch.manual_seed(seed)
    return nndiag.Subject(_mlp(5, nn.ReLU, None), _classification(seed), name="default_mlp")


def xavier_tanh_mlp(seed: int = 0) -> nndiag.Subject:
    torch.manual_seed(seed)
    return nndiag.Subject(_mlp(5, nn.Tanh, _xavier), _classification(seed), name="xavier_tanh_mlp")


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


def cnn_batchnorm(seed: int = 0) -> nndiag.Subject:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(1000 + seed)
    X = torch.randn(64, 3, 16, 16, generator=g)
    y = torch.randint(0, CLASSES, (64,), generator=g)
    return nndiag.Subject(SmallCNN(), (X, y), name="cnn_batchnorm")


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, CLASSES)
        with torch.no_grad():
            self.head.weight.mul_(0.1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def tiny_transformer(seed: int = 0) -> nndiag.Subject:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(1000 + seed)
    tokens = torch.randint(0, 50, (64, 8), generator=g)
    y = torch.randint(0, CLASSES, (64,), generator=g)
    return nndiag.Subject(TinyTransformer(), (tokens, y), name="tiny_transformer")


def regression_mlp(seed: int = 0) -> nndiag.Subject:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(1000 + seed)
    X = torch.randn(N, 8, generator=g)
    y = torch.sin(X[:, :1] * 2) + 0.5 * X[:, 1:2]
    y = (y - y.mean()) / y.std()
    model = nn.Sequential(
        nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    return nndiag.Subject(model, (X, y), name="regression_mlp")


class L2Net(nn.Module):
    """An MLP whose loss adds strength * sum of squared weights, read from ``l2``."""

    def __init__(self, ignore_knob: bool = False) -> None:
        super().__init__()
        self.body = _mlp(3, nn.ReLU, _he)
        self.l2 = 1e-4
        self.ignore_knob = ignore_knob
        self._frozen_l2 = self.l2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def penalty(self) -> torch.Tensor:
        strength = self._frozen_l2 if self.ignore_knob else self.l2
        return (
            0.5
            * strength
            * sum((p**2).sum() for n, p in self.named_parameters() if n.endswith("weight"))
        )


def _l2_subject(model: L2Net, seed: int, name: str) -> nndiag.Subject:
    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y) + model.penalty()

    return nndiag.Subject(model, _classification(seed), loss=loss, regularization="l2", name=name)


def l2_mlp(seed: int = 0) -> nndiag.Subject:
    """Healthy: the loss reads its L2 strength from ``model.l2``."""
    torch.manual_seed(seed)
    return _l2_subject(L2Net(), seed, "l2_mlp")


HEALTHY = {
    f.__name__: f
    for f in (
        he_relu_mlp,
        default_relu_mlp,
        xavier_tanh_mlp,
        cnn_batchnorm,
        tiny_transformer,
        regression_mlp,
        l2_mlp,
    )
}


# -- broken ------------------------------------------------------------------------------
def small_init_tanh(seed: int = 0) -> nndiag.Subject:
    """Lecture demo: W = 0.01 N(0,1) in a deep tanh net; activations collapse."""
    torch.manual_seed(seed)
    model = _mlp(8, nn.Tanh, _gaussian(0.01), width=100, bias=False)
    return nndiag.Subject(model, _classification(seed), name="small_init_tanh")


def large_init_tanh(seed: int = 0) -> nndiag.Subject:
    """Lecture demo: W = 1.0 N(0,1) in a deep tanh net; units saturate at +-1."""
    torch.manual_seed(seed)
    model = _mlp(8, nn.Tanh, _gaussian(1.0), width=100, bias=False)
    return nndiag.Subject(model, _classification(seed), name="large_init_tanh")


def xavier_deep_relu(seed: int = 0) -> nndiag.Subject:
    """Lecture demo: Xavier init under ReLU halves the variance each layer."""
    torch.manual_seed(seed)
    model = _mlp(14, nn.ReLU, _xavier, width=100, bias=False)
    return nndiag.Subject(model, _classification(seed), name="xavier_deep_relu")


def dead_relu(seed: int = 0) -> nndiag.Subject:
    """The second hidden layer's bias is -10: its ReLUs never fire."""
    torch.manual_seed(seed)
    model = _mlp(4, nn.ReLU, _he)
    with torch.no_grad():
        model[2].bias.fill_(-10.0)
    return nndiag.Subject(model, _classification(seed), name="dead_relu")


class DoubleSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _mlp(3, nn.ReLU, _he)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).softmax(dim=1)  # cross-entropy applies log-softmax again


def double_softmax(seed: int = 0) -> nndiag.Subject:
    torch.manual_seed(seed)
    return nndiag.Subject(DoubleSoftmax(), _classification(seed), name="double_softmax")


class _LeakyBackwardReLU(torch.autograd.Function):
    """ReLU whose backward also lets through 10% of the gradient of negative inputs."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.where(x > 0, 1.0, 0.1).to(grad.dtype)


class WrongBackward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN, WIDTH)
        self.fc2 = nn.Linear(WIDTH, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(_LeakyBackwardReLU.apply(self.fc1(x)))


def wrong_backward(seed: int = 0) -> nndiag.Subject:
    torch.manual_seed(seed)
    return nndiag.Subject(WrongBackward(), _classification(seed), name="wrong_backward")


class DetachedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN, WIDTH)
        self.fc2 = nn.Linear(WIDTH, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)).detach())  # cuts fc1 off the graph


def detached(seed: int = 0) -> nndiag.Subject:
    torch.manual_seed(seed)
    return nndiag.Subject(DetachedMLP(), _classification(seed), name="detached")


def ignored_knob(seed: int = 0) -> nndiag.Subject:
    """The loss uses a strength frozen at construction; setting ``l2`` does nothing."""
    torch.manual_seed(seed)
    return _l2_subject(L2Net(ignore_knob=True), seed, "ignored_knob")


def huge_last_layer(seed: int = 0) -> nndiag.Subject:
    torch.manual_seed(seed)
    model = _mlp(3, nn.ReLU, _he)
    with torch.no_grad():
        model[-1].weight.mul_(100.0)
    return nndiag.Subject(model, _classification(seed), name="huge_last_layer")


# bug -> the check that must fail on it
BROKEN = {
    "small_init_tanh": (small_init_tanh, "activation_stats"),
    "large_init_tanh": (large_init_tanh, "activation_stats"),
    "xavier_deep_relu": (xavier_deep_relu, "activation_stats"),
    "dead_relu": (dead_relu, "dead_neurons"),
    "double_softmax": (double_softmax, "overfit_small"),
    "wrong_backward": (wrong_backward, "gradient_check"),
    "detached": (detached, "gradient_check"),
    "ignored_knob": (ignored_knob, "regularization_loss"),
    "huge_last_layer": (huge_last_layer, "initial_loss"),
}
