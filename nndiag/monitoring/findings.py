"""What the monitor measures during training, as plain typed data: framework-free, so the
rules read findings from any backend (and from any door: a plain loop, Lightning, the
Hugging Face Trainer)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from nndiag.contract import LayerRecord

__all__ = ["History", "LayerSample", "Sample", "layer_sample"]

_START = 5  # steps whose mean is the starting loss


@dataclass(frozen=True)
class LayerSample:
    """One activation layer on a sampled step's first training forward."""

    name: str
    kind: str  # relu, tanh, sigmoid, or the function's name
    dead: float | None  # fraction of units that fired for no sample (ReLU family only)
    std: float
    gate: bool = False  # its output multiplies another tensor: small or flat by design


def layer_sample(record: LayerRecord) -> LayerSample:
    """A layer's sample from the activation statistics a backend captured."""
    dead = None
    if record.kind == "relu" and record.fires is not None:
        dead = float((record.fires == 0).mean())
    return LayerSample(record.name, record.kind, dead, record.std, bool(record.gate))


@dataclass(frozen=True)
class Sample:
    """The statistics of one sampled training step.

    Attributes:
        step: The step (``mon.step`` calls before it).
        ratios: Per weight matrix (2-D and up), ``||w_after - w_before|| / ||w_before||``
            over the optimizer's step.
        still: Tensors that had a nonzero gradient and did not change.
        unheld: Of ``still``, those no optimizer parameter group holds.
        grad_norm: The gradients' global L2 norm, None when none was there to read.
        nonfinite_grads: Tensors whose gradient holds NaN or Inf.
        layers: Activation statistics, in the order the forward reached them.
        lr: The optimizer's learning rate (its first group's), None without one.
    """

    step: int
    ratios: dict[str, float] = field(default_factory=dict)
    still: tuple[str, ...] = ()
    unheld: tuple[str, ...] = ()
    grad_norm: float | None = None
    nonfinite_grads: tuple[str, ...] = ()
    layers: tuple[LayerSample, ...] = ()
    lr: float | None = None

    @property
    def median_ratio(self) -> float | None:
        values = sorted(v for v in self.ratios.values() if math.isfinite(v))
        return values[len(values) // 2] if values else None


@dataclass
class History:
    """Everything measured so far: the loss and learning rate of every step, the sampled
    steps' statistics and the validations."""

    losses: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    validations: list[tuple[int, float]] = field(default_factory=list)  # (step, value)
    higher_is_better: bool = False
    lrs: list[float | None] = field(default_factory=list)  # the optimizer's, per step

    @property
    def step(self) -> int:
        """The latest step (-1 before the first)."""
        return len(self.losses) - 1

    def start(self, before: int | None = None) -> float | None:
        """The loss at init: the mean of the first few finite losses (a fast first descent
        does not count), of those before step ``before`` when given."""
        first = []
        for v in itertools.islice(self.losses, before):  # stops at the first few
            if math.isfinite(v):
                first.append(v)
                if len(first) == _START:
                    break
        return sum(first) / len(first) if first else None

    def sample_now(self) -> Sample | None:
        """The sample of the latest step, when that step was sampled."""
        if self.samples and self.samples[-1].step == self.step:
            return self.samples[-1]
        return None

    def lr_note(self) -> str:
        """``the learning rate (now 0.1; 0.001 at the start)``, or what is known of it."""
        known = [lr for lr in self.lrs if lr is not None]
        if not known:
            return "the learning rate"
        if known[-1] == known[0]:
            return f"the learning rate ({known[-1]:.3g})"
        return f"the learning rate (now {known[-1]:.3g}; {known[0]:.3g} at the start)"
