"""The check/backend seam: what a check may ask of a model, in no framework's words.

A check (``nndiag/checks/``) asks questions in the language of the lecture; a backend
(``nndiag/backends/``) answers them in its framework's. This module is the whole vocabulary
between the two and imports no framework: a check imports only this, ``Config`` and
``CheckResult``.

A backend's :class:`Session` offers *primitives* — outputs and losses in train or eval
mode, value and gradients in float64, a training step that reports update sizes, a
regularization setter, activation capture, perturbation of parameters and of inputs — and
takes every setting as an argument: it never reads a check's ``Config`` fields. Arrays that
cross the seam are numpy arrays; batches stay in the backend's own array type and are only
passed back to it.

Isolation: a check runs inside ``session.isolated(check)``, which the runner opens. Every
member marked *inside isolated()* works on nndiag's private copies there and raises
``RuntimeError`` outside it; the others may be called at any time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "IGNORED_TARGET",
    "Batch",
    "Evaluation",
    "LayerRecord",
    "Mode",
    "NonFinite",
    "NormLayer",
    "Objective",
    "Ownership",
    "Session",
    "Sides",
    "Step",
    "Task",
    "Trainer",
    "Vocabulary",
]

Mode = Literal["train", "eval"]
# The target id cross-entropy leaves out (torch's and transformers' default): padding, a
# masked LM's unscored positions, a shifted sequence's last one.
IGNORED_TARGET = -100


@dataclass(frozen=True)
class Batch:
    """Inputs and targets of one batch, in the backend's own array type."""

    X: Any
    y: Any

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Task:
    """What the model is asked to do, learned from one probe forward pass."""

    kind: Literal["classification", "regression"]
    num_classes: int = 0  # classification only
    label_counts: tuple[int, ...] = ()
    # How nndiag read the model and its labels where it did more than take them as given
    # (transformers' labels=input_ids shifted as the model shifts them; a minimal GPT
    # called with targets for every position's logits); empty otherwise.
    reading: str = ""
    # Whether the user's loss reads more of the model's output than the scores (a VAE's
    # mu and logvar): a term of the loss the scores alone do not explain.
    auxiliary: bool = False


@dataclass
class LayerRecord:
    """Per-layer activation statistics, reduced while the forward pass runs.

    ``depth`` orders layers as the forward pass reached them. ``m2`` is the sum of squared
    deviations from the mean (merged per call, so no cancellation in float32). ``fires``
    counts, per unit, the forward calls in which the unit output > 0 for some sample: 0
    means dead (ReLU family only).
    """

    name: str
    kind: str  # relu, tanh, sigmoid, or the function's name for other activations
    depth: int
    units: int
    count: int = 0
    total: float = 0.0
    m2: float = 0.0
    saturated: int = 0
    fires: Any = None  # numpy int array over units, or None
    hist_counts: Any = None
    hist_edges: tuple[float, float] = (0.0, 1.0)
    # The weight layer feeding this activation: name, fan-in and current weight std.
    weight_layer: str | None = None
    fan_in: int | None = None
    weight_std: float | None = None
    # Whether a normalization (batch, layer, group, instance or RMS norm) ran since the
    # previous activation (or the input): the scale of the weights before it does not
    # compound through it.
    normalized: bool = False
    # Whether its output multiplies another tensor of the forward (a squeeze-excitation
    # sigmoid scaling the trunk, a GLU's activation): a gate, whose small or saturated
    # output is its job; None where the backend does not follow the data.
    gate: bool | None = None
    # Whether its output holds one value per unit and sample (no spatial extent): the
    # pooled vector a squeeze-excitation branch works on.
    pooled: bool = False
    # Whether the model returned its output (or a view of it) as the scores: the output
    # activation (a decoder's sigmoid), whose scale initial_loss judges; None where the
    # backend does not follow the data.
    output: bool | None = None

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def std(self) -> float:
        return (self.m2 / self.count) ** 0.5 if self.count else float("nan")

    @property
    def saturated_fraction(self) -> float:
        return self.saturated / self.count if self.count else 0.0


@dataclass(frozen=True)
class Evaluation:
    """One forward pass (and loss) on a batch, in numpy.

    ``outputs`` are the model's per-sample outputs (classes on axis 1), when asked for;
    ``per_sample`` the loss of each of the first rows on its own, when asked for and the
    loss can take single rows.
    """

    loss: float
    outputs: Any = None
    per_sample: Any = None


@dataclass(frozen=True)
class Step:
    """One optimizer step: the loss and accuracy measured before it, and (when measured)
    per trainable tensor the norm of the update it applied, of the weights before it and
    of the gradient the step used (None where no gradient reached the tensor)."""

    loss: float
    accuracy: float | None
    updates: Mapping[str, float] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)
    grads: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class NonFinite:
    """Where a NaN/Inf first appeared: the producing operation, not one that passed it on.

    ``stage`` is ``forward`` (an operation of the model), ``loss`` (the loss of finite
    outputs) or ``backward`` (a gradient of finite values). ``where`` is the layer or
    parameter in the backend's naming; ``op`` the operation (``log``, ``sqrt``, ``div``).
    """

    stage: Literal["forward", "loss", "backward"]
    where: str
    op: str
    count: int = 0
    total: int = 0


@dataclass(frozen=True)
class NormLayer:
    """A layer that normalizes with the statistics of the batch in train mode, as the
    user's model has it set up.

    ``momentum`` is the share of a batch's statistics that one train-mode forward blends
    into the running ones (torch's convention: CS231n's ``momentum=0.9`` is 0.1 here); 0
    leaves them as they are, None means a cumulative average. ``tracks`` is False for a
    layer that keeps no running statistics, so it normalizes with the batch's statistics in
    evaluation mode too. ``frozen`` marks a layer left in evaluation mode while the rest of
    the user's model is in training mode (frozen statistics, common when fine-tuning).
    """

    name: str
    momentum: float | None
    tracks: bool = True
    frozen: bool = False
    setting: str = ""  # the momentum in the backend's words: "momentum=0.1", ...


@dataclass(frozen=True)
class Vocabulary:
    """The backend's own words for what hints talk about, so that a check's advice reads
    right in every framework."""

    framework: str  # "torch", "numpy", "jax"
    custom_backward: str  # where a hand-written gradient lives
    cut_graph: str  # how a gradient gets cut
    summed_loss: str  # how a loss ends up summed over the batch
    eval_mode: str  # what evaluation mode means for this backend
    he_init: str  # a call that draws He-initialized weights
    xavier_init: str  # a call that draws Xavier-initialized weights
    # input_stats' fixes: standardizing inputs with the measured statistics ({mean} and
    # {std} are filled in), and evening out imbalanced labels.
    standardize: str = "X = (X - {mean}) / {std}"
    rebalance: str = "weight the loss by inverse class frequency, or resample the classes"
    # causality's fix: masking the attention scores of later positions.
    causal_mask: str = "add a mask of -inf above the diagonal (np.triu) to the scores"


@dataclass(frozen=True)
class Ownership:
    """Which trainable tensors the subject's own optimizer holds.

    ``unowned`` are trainable tensors (in the backend's naming) it does not hold: they get
    gradients that no step applies. ``stale`` are the shapes of tensors it holds that are
    not the model's (a layer replaced after the optimizer was built leaves its old tensors
    there).
    """

    optimizer: str  # description, e.g. "SGD instance (the subject's optimizer)"
    unowned: tuple[str, ...] = ()
    stale: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class Sides:
    """The loss at +h and -h along a direction, and how many winners of the forward's
    non-smooth operations (a ReLU's side, a max-pool's argmax, a clamp's piece, a
    comparison's outcome) differ between the two points (``crossings``), and between the
    objective's own point and each of them (``up_changed``, ``down_changed``): a
    difference is evidence about a smooth segment only where none changed. None where the
    backend cannot record winners."""

    up: float
    down: float
    crossings: int | None
    up_changed: int | None = None
    down_changed: int | None = None


class Objective(Protocol):
    """The subject's loss on one batch as a function of its trainable tensors, in the
    dtype the objective was opened with (float64 for the gradient check)."""

    names: list[str]
    note: str  # said in the result, e.g. that float32 parameters were promoted
    # Relative precision of the least precise dtype the loss is computed in: float64's
    # eps, or float32's for a model that rounds parts of its forward to float32 (the
    # norms of many transformers) inside the float64 copy.
    resolution: float

    @property
    def shapes(self) -> Mapping[str, tuple[int, ...]]:
        """Each tensor's shape, by name (read-only: a backend may keep any mapping)."""

    def value_and_grad(self) -> tuple[float, dict[str, Any]]:
        """Loss and analytic gradients (numpy; None where no gradient reached)."""

    def value(self, shifts: Mapping[str, Any], scale: float = 1.0) -> float:
        """Loss with each named tensor shifted by ``scale`` times the given numpy array
        (``scale`` saves the check a tensor-sized temporary per evaluation); the point is
        left as it was."""

    def sides(self, shifts: Mapping[str, Any], h: float) -> Sides:
        """The loss at the point shifted by +h and by -h times ``shifts``, with the
        winners of every non-smooth operation compared between the two (two forward
        passes)."""

    def move(self, shifts: Mapping[str, Any]) -> None:
        """Shift the point itself (on nndiag's private copy)."""

    def values(self) -> dict[str, Any]:
        """The tensors' current values, as numpy arrays (read-only views where the backend
        can give them)."""


class Trainer(Protocol):
    """An optimizer over nndiag's private copies of the trainable tensors."""

    optimizer: str  # description stated in results, e.g. "Adam(lr=0.001) (nndiag's default)"

    @property
    def lr(self) -> float | None:
        """The learning rate it steps with (the first parameter group's), or None where the
        backend can neither read nor set it (an optax optimizer built without
        ``optax.inject_hyperparams``): a rate asked for and not applied is None too."""

    def step(self, *, measure: bool = False, batch: Batch | None = None) -> Step:
        """One optimizer step, on ``batch`` when given (minibatches: the optimizer's state
        carries over), else on the trainer's batch. With ``measure``, the step also
        reports per-tensor update and weight norms (a norm per tensor per step: off when
        not needed)."""

    def evaluate(self, batch: Batch) -> Evaluation:
        """The trained weights' loss and outputs on ``batch``, with the model in its
        evaluation mode, without gradients (a validation pass)."""

    def unchanged(self) -> list[str]:
        """Names of trainable tensors whose values never changed."""

    def frozen_changed(self) -> list[str]:
        """Names of the tensors no optimizer should change (parameters that take no
        gradient, buffers other than batch statistics) whose values changed since the
        trainer was opened; empty where the backend has no such tensors."""

    def capture(self, batch: Batch, *, bins: int) -> list[LayerRecord]:
        """Activation statistics of every activation function over ``batch`` at the
        trainer's current weights (after the steps taken so far; never cached, unlike
        :meth:`Session.capture`), with ``bins``-bin histograms. One forward pass."""


class Session(Protocol):
    """One diagnose run on one subject; nothing it does outlives ``isolated()``."""

    task: Task
    has_regularization: bool
    causal: bool | None  # Subject(causal=...): the user's word on autoregression
    stochastic_eval: bool  # Subject(stochastic_eval=True): eval mode samples by design
    framework: str  # name and version, e.g. "torch 2.13.0"
    words: Vocabulary

    def passes(self) -> tuple[int, int]:
        """Forward and backward passes of the model so far."""

    def isolated(self, check: str) -> AbstractContextManager[None]:
        """Private copies swapped in; batch-statistics layers in training mode and every
        random layer off (dropout is regularization); seeded generators; on
        exit everything of the user's is restored exactly. Model exceptions raised inside
        are :class:`~nndiag.errors.ModelError` naming ``check`` and the call."""

    def rows(self, n: int) -> Batch:
        """The first ``n`` samples, across the stored batches."""

    def take(self, batch: Batch, index: Sequence[int]) -> Batch:
        """The rows ``index`` of ``batch``, in that order (repeats allowed): a batch whose
        other rows are perturbed while one row stays as it is."""

    def arrays(self, batch: Batch) -> tuple[Any, Any]:
        """The batch's inputs and targets as numpy arrays (inputs None when they are not
        one array, e.g. a dict of token tensors)."""

    def sequence(self, batch: Batch) -> Any:
        """The inputs read along a sequence axis (axis 1) as a numpy array: the inputs when
        they are one array, a dict's ``input_ids``; None when there is no such array."""

    def with_sequence(self, batch: Batch, values: Any) -> Batch:
        """``batch`` with :meth:`sequence` replaced by ``values`` (numpy, same rows and
        dtype); a shorter sequence cuts the other per-position inputs and the targets."""

    def real_positions(self, batch: Batch) -> Any:
        """Which positions of :meth:`sequence` are real tokens (numpy bool, its shape) when
        an attention mask marks some as padding; None otherwise."""

    def model_causal(self) -> bool | None:
        """Whether the model says it is autoregressive (it generates and has no encoder);
        None when it does not say."""

    def set_regularization(self, strength: float) -> None:
        """Set the subject's regularization strength. Inside isolated()."""

    def evaluate(
        self,
        batch: Batch,
        *,
        mode: Mode = "train",
        outputs: bool = False,
        per_sample: bool = False,
        seed: int | None = None,
    ) -> Evaluation:
        """Forward pass and loss without gradients. ``mode="eval"`` runs the model in its
        evaluation mode for this call only. Random draws are seeded with ``seed`` (the
        run's seed when None), so two calls with the same seed see the same randomness.
        Inside isolated()."""

    def loss_of(self, batch: Batch, outputs: Any) -> float:
        """The subject's loss of given outputs (numpy, shaped like ``evaluate``'s) against
        the batch's targets. Inside isolated()."""

    def objective(
        self, batch: Batch, *, dtype: str = "float64"
    ) -> AbstractContextManager[Objective]:
        """The loss as a function of the trainable tensors, on copies in ``dtype``.
        Inside isolated()."""

    def trainer(
        self,
        batch: Batch,
        *,
        lr: float | None = None,
        default_lr: float = 1e-3,
        restore: bool = False,
    ) -> AbstractContextManager[Trainer]:
        """An optimizer on ``batch``: the subject's own (with its learning rate replaced by
        ``lr`` when given), else Adam at ``lr`` or ``default_lr``. It starts from the
        private copies as they are; with ``restore``, they are put back as they were
        (parameters and buffers, e.g. batch-norm running statistics) when the block ends,
        and random draws start from the run's seed, so that several trainers opened one
        after another all start from the same weights and see the same randomness.
        Inside isolated()."""

    def capture(self, *, rows: int, bins: int) -> list[LayerRecord]:
        """Activation statistics of every activation function over the first ``rows``
        samples, with ``bins``-bin histograms (computed once per session and arguments)."""

    def input_gradients(self, batch: Batch, row: int, *, mode: Mode = "eval") -> Any:
        """Per input row, the largest gradient magnitude of a fixed random projection of
        output row ``row`` (numpy, one value per row), or None where the inputs cannot be
        differentiated (token ids). Inside isolated()."""

    def find_nonfinite(self, batch: Batch, *, mode: Mode = "train") -> NonFinite | None:
        """Forward, loss and backward on ``batch`` watched for the first operation that
        turns finite values into NaN/Inf. Inside isolated()."""

    def batch_statistics_layers(self) -> list[str]:
        """Names of layers that normalize with statistics of the batch in train mode."""

    def norm_layers(self) -> list[NormLayer]:
        """The batch-statistics layers with their settings, as the user's model has them
        (the same layers as ``batch_statistics_layers``)."""

    def stored_batches(self) -> list[Batch]:
        """The batches of the subject's data the run holds, as the data yielded them."""

    def running_statistics(self) -> dict[str, tuple[Any, Any]] | None:
        """Per layer that tracks them, the running mean and variance now (numpy copies, of
        nndiag's private copies); a statistic a layer has not made yet is None (CS231n
        layers make theirs in their first train-mode forward). None when the backend keeps
        no running statistics at all. Inside isolated()."""

    def warm(self, batches: Sequence[Batch]) -> None:
        """Running statistics reset and set to the average over one train-mode forward
        (without gradients) per batch, each batch weighing the same whatever the layers'
        momentum, which is put back after. Inside isolated()."""

    def ownership(self) -> Ownership | None:
        """Which trainable tensors the subject's own optimizer holds (an optimizer factory
        is called on the private copies), or None when nndiag's default optimizer or a
        per-tensor update rule steps every trainable tensor. Inside isolated()."""

    def weights(self) -> dict[str, Any]:
        """The weight matrix of every layer that multiplies its input by trainable weights
        (dense and convolution layers; embedding tables are left out), keyed by the name
        :class:`LayerRecord` ``weight_layer`` gives it, as a read-only numpy array of shape
        ``(units, fan_in)``: one row per output unit (a convolution's output channel, its
        kernel flattened), whatever the backend's own layout. In the order the backend
        lists its layers, the output layer last. The user's current values; may be called
        at any time (the JAX backend learns how each weight is applied from the capture
        pass, running one of a single row when none ran yet)."""
