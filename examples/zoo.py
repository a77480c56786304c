"""Models and data of the example project: one healthy of each kind, and four with a bug
from CS231n's "babysitting the learning process" list planted on purpose."""

from __future__ import annotations

import torch
from torch import nn

import nndiag

CLASSES = 5
FEATURES = 20


def blobs(n: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs: one centre per class, unit noise; standardized per feature, as the
    lecture preprocesses (nndiag's input_stats warns otherwise)."""
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(CLASSES, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    X = centres[y] + torch.randn(n, FEATURES, generator=g)
    return (X - X.mean(0)) / X.std(0), y


def images(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 one-channel images, pixel intensities in [0, 1]; the class is a bright row."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    X = 0.3 * torch.rand(n, 1, 8, 8, generator=g)
    X[torch.arange(n), 0, y + 1] += 0.7
    return X, y


class MLP(nn.Module):
    """Two hidden ReLU layers; ``loss`` adds L2 regularization of strength ``self.reg``."""

    def __init__(self, hidden: int = 64, reg: float = 1e-4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(FEATURES, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, CLASSES),
        )
        self.reg = reg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        l2 = sum((p**2).sum() for n, p in self.named_parameters() if n.endswith("weight"))
        return nn.functional.cross_entropy(scores, y) + 0.5 * self.reg * l2


class BatchMixer(MLP):
    """Bug: standardizes each feature with the statistics of the batch, inside forward.
    Every prediction depends on the other samples of its batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - x.mean(0)) / (x.std(0, correction=0) + 1e-5))


class _BrokenReLU(torch.autograd.Function):
    """Bug: a hand-written ReLU whose backward forgets the mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad  # should be grad * (x > 0)


class CustomBackward(MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        h = _BrokenReLU.apply(net[0](x))
        h = _BrokenReLU.apply(net[2](h))
        return net[4](h)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(8 * 4 * 4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def seeded(model_class: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return model_class()


def convnet() -> nndiag.Subject:
    """A plain function returning a Subject: listed in pyproject.toml, no decorator. Its
    name is the subject's name in test ids and reports."""
    return nndiag.Subject(seeded(ConvNet), images(), name="convnet")
