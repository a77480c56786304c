"""Models with the loss lines of popular public code, copied as written there: PyTorch's
VAE example (``forward`` returns ``(recon, mu, logvar)``, a BCE + KL loss on [0, 1]
pixels), its MNIST example (``log_softmax`` then ``nll_loss``), an autoencoder's MSE, a
regression's smooth L1 and a multi-label ``BCEWithLogitsLoss``. Narrow, so that every
default check runs in about a second.

Each ``*_subject(seed)`` builds a healthy subject; ``bug=`` plants one of the other checks'
bugs in the same model: ``"dead"`` (a first-layer bias of -10: every ReLU unit dead) or
``"mixer"`` (each row's input gets the batch mean: rows see each other).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import nndiag

PIXELS, ROWS = 64, 64
BUGS = ("dead", "mixer")


class VAE(nn.Module):
    """PyTorch's examples/vae/main.py, 784-400-20 narrowed to 64-32-4."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(PIXELS, 32)
        self.fc21 = nn.Linear(32, 4)
        self.fc22 = nn.Linear(32, 4)
        self.fc3 = nn.Linear(4, 32)
        self.fc4 = nn.Linear(32, PIXELS)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x.view(-1, PIXELS))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(
    recon_x: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """As in examples/vae/main.py: reconstruction + KL divergence, summed over the batch."""
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, PIXELS), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


class BetaVAELoss:
    """The same loss with the KL term weighted by ``beta`` (a beta-VAE's knob): given to
    nndiag as the regularization knob, so that ``overfit_small`` can turn the KL term off
    as the lecture turns regularization off."""

    def __init__(self, beta: float = 1.0) -> None:
        self.beta = beta

    def __call__(self, output: tuple[torch.Tensor, ...], data: torch.Tensor) -> torch.Tensor:
        recon_batch, mu, logvar = output  # the example's `recon_batch, mu, logvar = model(data)`
        BCE = F.binary_cross_entropy(recon_batch, data.view(-1, PIXELS), reduction="sum")
        KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return BCE + self.beta * KLD


class MnistNet(nn.Module):
    """examples/mnist's head: log-probabilities out, ``F.nll_loss`` as the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


class AutoEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(PIXELS, 64), nn.ReLU(), nn.Linear(64, 16))
        self.decoder = nn.Sequential(
            nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, PIXELS), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _pixels(g: torch.Generator) -> torch.Tensor:
    """Soft [0, 1] "images" from six patterns, most values near 0 or 1 as MNIST's are."""
    patterns = torch.randn(6, PIXELS, generator=g)
    codes = torch.randn(ROWS, 6, generator=g)
    return torch.sigmoid(3 * codes @ patterns / 6**0.5)


def _first_linear(model: nn.Module) -> nn.Linear:
    return next(m for m in model.modules() if isinstance(m, nn.Linear))


def _planted(model: nn.Module, bug: str | None) -> nn.Module:
    if bug == "dead":
        with torch.no_grad():
            _first_linear(model).bias.fill_(-10.0)
        return model
    if bug == "mixer":
        return _Mixer(model)
    assert bug is None, bug
    return model


class _Mixer(nn.Module):
    """Adds the batch's mean input to every row: outputs depend on the other rows."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> Any:
        return self.inner(x + x.mean(0, keepdim=True))


def vae_subject(seed: int, bug: str | None = None) -> nndiag.Subject:
    torch.manual_seed(seed)
    x = _pixels(torch.Generator().manual_seed(seed))
    loss = BetaVAELoss()
    return nndiag.Subject(
        _planted(VAE(), bug),
        (x, x),
        loss=loss,
        regularization=lambda model, beta: setattr(loss, "beta", beta),
        stochastic_eval=True,
        name="vae",
    )


def nll_subject(seed: int, bug: str | None = None) -> nndiag.Subject:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(ROWS, 16, generator=g)
    y = (X @ torch.randn(16, 5, generator=g)).argmax(1)
    return nndiag.Subject(_planted(MnistNet(), bug), (X, y), loss=F.nll_loss, name="nll")


def autoencoder_subject(seed: int, bug: str | None = None) -> nndiag.Subject:
    torch.manual_seed(seed)
    x = _pixels(torch.Generator().manual_seed(seed))
    model = _planted(AutoEncoder(), bug)
    return nndiag.Subject(model, (x, x), loss=nn.MSELoss(), name="autoencoder")


def smooth_l1_subject(seed: int, bug: str | None = None) -> nndiag.Subject:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(ROWS, 8, generator=g)
    y = torch.sin(X[:, :1]) + 0.5 * X[:, 1:2] ** 2 + 0.1 * torch.randn(ROWS, 1, generator=g)
    model = _planted(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)), bug)
    return nndiag.Subject(model, (X, y), loss=F.smooth_l1_loss, name="smooth_l1")


def multilabel_subject(seed: int, bug: str | None = None) -> nndiag.Subject:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(ROWS, 16, generator=g)
    y = (X @ torch.randn(16, 5, generator=g) > 0.5).float()
    model = _planted(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5)), bug)
    return nndiag.Subject(model, (X, y), loss=nn.BCEWithLogitsLoss(), name="multilabel")


SUBJECTS: dict[str, Callable[..., nndiag.Subject]] = {
    "vae": vae_subject,
    "nll": nll_subject,
    "autoencoder": autoencoder_subject,
    "smooth_l1": smooth_l1_subject,
    "multilabel": multilabel_subject,
}
