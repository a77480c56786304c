"""The torch backend's session: one diagnose run of one ``torch.nn.Module`` subject."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from nndiag.backends import PER_SAMPLE_ROWS
from nndiag.backends.base import (
    PROBE_ROWS,
    SessionBase,
    check_default_targets,
    cut_targets,
    float64_note,
)
from nndiag.backends.state import NumberSnapshot, holders, references, rng_guard
from nndiag.backends.torch import inputs
from nndiag.backends.torch.capture import Recorder
from nndiag.backends.torch.kinks import Winners, changed
from nndiag.backends.torch.numerics import NonFiniteWatch
from nndiag.contract import (
    IGNORED_TARGET,
    Batch,
    Evaluation,
    LayerRecord,
    Mode,
    NonFinite,
    NormLayer,
    Ownership,
    Sides,
    Step,
    Task,
    Vocabulary,
)
from nndiag.errors import InvalidSubject, ModelError, describe

__all__ = ["TorchSession", "rng_devices", "torch_rng_guard"]

_FLOAT16_EPS = 1e-4  # nndiag's Adam on float16 parameters


def rng_devices(model: nn.Module) -> list[int]:
    """The CUDA devices the model's parameters sit on, whose generators a check guards."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def _seed(seed: int, devices: list[int]) -> None:
    """Seed the generators a model on these devices draws from. Not ``torch.manual_seed``:
    without CUDA initialized it queues a CUDA seeding with a formatted stack, ~2 ms a call."""
    torch.default_generator.manual_seed(seed)
    for index in devices:
        torch.cuda.default_generators[index].manual_seed(seed)


@contextmanager
def torch_rng_guard(devices: list[int], seed: int | None = None) -> Iterator[None]:
    """Leave torch, numpy and ``random`` generators exactly as they were."""
    with rng_guard(), torch.random.fork_rng(devices=devices):
        if seed is not None:
            _seed(seed, devices)
        yield


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array, off its device and graph (bfloat16, which numpy lacks,
    as float32)."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _next_labels(y: torch.Tensor) -> torch.Tensor:
    """``y`` shifted left by one position, the last position ignored (-100)."""
    return torch.cat([y[:, 1:], torch.full_like(y[:, :1], IGNORED_TARGET)], dim=1)


def generates_without_encoder(model: nn.Module) -> bool | None:
    """True when the model, or a module inside it, is a text generator with no encoder (a
    transformers causal LM: ``can_generate()``, not encoder-decoder) or a decoder by its
    config (``is_decoder``); None when nothing says so."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or getattr(config, "is_encoder_decoder", False):
            continue
        can_generate = getattr(module, "can_generate", None)
        if getattr(config, "is_decoder", False) or (callable(can_generate) and can_generate()):
            return True
    return None


class _Out(NamedTuple):
    """One forward pass: what the model returned, and the scores tensor in it."""

    raw: Any
    scores: torch.Tensor


def _layout(t: torch.Tensor) -> str:
    """A tensor's dtype, shape and memory layout, for messages about what a loss got."""
    layout = "contiguous" if t.is_contiguous() else f"not contiguous, strides {t.stride()}"
    return f"a {str(t.dtype).removeprefix('torch.')} tensor of shape {tuple(t.shape)}, {layout}"


def classes_last(output: torch.Tensor, target: torch.Tensor) -> bool:
    """Token-level outputs: (N, T, V) scores for (N, T) class ids (classes on the last axis,
    as language models give them); (N, C, ...) scores keep classes on axis 1."""
    if output.ndim != target.ndim + 1 or target.ndim < 2:
        return False
    channel_first = output.shape[0] == target.shape[0] and output.shape[2:] == target.shape[1:]
    return not channel_first and output.shape[:-1] == target.shape


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over axis 1, or over the last axis for token-level outputs; targets of
    -100 (transformers' ignore index) do not count."""
    target = target.long()  # labels of any integer dtype (int32, uint8) are class ids
    if classes_last(output, target):
        return nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))
    return nn.functional.cross_entropy(output, target)


def _default_loss(y: torch.Tensor) -> Any:
    if not y.is_floating_point():
        return cross_entropy

    def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.shape != target.shape and output.numel() == target.numel():
            output = output.reshape(target.shape)  # (N, 1) outputs for (N,) targets
        return nn.functional.mse_loss(output, target)

    return mse


def _owners(model: nn.Module, loss: Any) -> list[nn.Module]:
    """Every module whose tensors a check swaps and restores: the model's, and those of
    the modules a loss is or refers to (``nn.CrossEntropyLoss(weight=...)`` in a closure),
    whose tensors must follow the model into float64 and back."""
    found = (
        [loss]
        if isinstance(loss, nn.Module)
        else [m for m in references(loss) if isinstance(m, nn.Module)]
    )
    owners = list(model.modules())
    seen = {id(m) for m in owners}
    for module in found:
        for m in module.modules():
            if id(m) not in seen:
                seen.add(id(m))
                owners.append(m)
    return owners


def _captured_tensors(loss: Any) -> list[tuple[Callable[[Any], None], torch.Tensor]]:
    """Floating tensors a loss function closes over or is bound to (closure cells,
    ``functools.partial`` keywords), each with a setter: for the float64 objective they
    are replaced by float64 copies and then given back, never modified."""
    found: list[tuple[Callable[[Any], None], torch.Tensor]] = []

    def floating(value: Any) -> bool:
        return (
            isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and not isinstance(value, nn.Parameter)
            and value.dtype != torch.float64
        )

    for cell in getattr(loss, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if floating(value):
            found.append((partial(setattr, cell, "cell_contents"), value))
    keywords = getattr(loss, "keywords", None)
    if isinstance(keywords, dict):
        for key, value in keywords.items():
            if floating(value):
                found.append((partial(keywords.__setitem__, key), value))
    return found


class _Snapshot:
    """Everything a check could change on the user's side, to restore exactly."""

    def __init__(self, model: nn.Module, loss: Any) -> None:
        self.modules = list(model.modules())
        owners: list[Any] = _owners(model, loss)
        if not isinstance(loss, nn.Module) and hasattr(loss, "__dict__"):
            owners.append(loss)  # a loss object may hold the strength
        self.training = [(m, m.training) for m in self.modules]
        # Plain-number attributes: where a regularization setter keeps its strength.
        self.numbers = [
            (o, k, v)
            for o in owners
            for k, v in vars(o).items()
            if isinstance(v, (int, float, torch.Tensor)) and not k.startswith("__")
        ]
        self.slots = []
        for owner in owners:
            if not isinstance(owner, nn.Module):
                continue
            tensors = [
                *owner.named_parameters(recurse=False, remove_duplicate=False),
                *owner.named_buffers(recurse=False, remove_duplicate=False),
            ]
            for name, t in tensors:
                grad = t.grad
                self.slots.append(
                    (
                        owner,
                        name,
                        t,
                        t.detach().clone(),
                        t.requires_grad,
                        grad,
                        None if grad is None else grad.detach().clone(),
                    )
                )

    def restore(self) -> None:
        for owner, name, tensor, values, requires_grad, grad, grad_values in self.slots:
            if getattr(owner, name) is not tensor:
                setattr(owner, name, tensor)
            with torch.no_grad():
                if tensor.dtype != values.dtype or tensor.shape != values.shape:
                    tensor.data = values
                elif not torch.equal(tensor, values):
                    tensor.copy_(values)
            if tensor.requires_grad != requires_grad:
                tensor.requires_grad_(requires_grad)
            if tensor.grad is not grad:
                tensor.grad = grad
            # grad_values is None exactly when grad is
            if grad is not None and grad_values is not None and not torch.equal(grad, grad_values):
                with torch.no_grad():
                    grad.copy_(grad_values)
        for owner, key, value in self.numbers:
            if vars(owner).get(key, value) is not value:
                setattr(owner, key, value)
        for module, training in self.training:
            module.training = training


WORDS = Vocabulary(
    framework="torch",
    custom_backward="custom autograd Functions and hand-written backward code",
    cut_graph="a .detach(), .data, .item() or numpy round trip",
    summed_loss="reduction='sum'",
    eval_mode="eval mode (model.eval())",
    he_init="nn.init.kaiming_normal_(w, nonlinearity='relu')",
    xavier_init="nn.init.xavier_normal_(w)",
    standardize="transforms.Normalize(mean={mean}, std={std}) (torchvision; on tensors: X = (X - "
    "mean) / std)",
    rebalance="nn.CrossEntropyLoss(weight=...) with inverse class frequencies, or a "
    "WeightedRandomSampler",
    causal_mask="F.scaled_dot_product_attention(q, k, v, is_causal=True), or "
    "scores.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float('-inf')) "
    "before the softmax; nn.LSTM/nn.GRU without bidirectional=True",
)


class TorchSession(SessionBase):
    """One diagnose run of one subject on the torch backend."""

    model: nn.Module
    words = WORDS
    _classes_last = False
    _user_modes: dict[int, bool] = {}  # noqa: RUF012  (replaced per run, never mutated)

    def __init__(self, subject: Any, config: Any) -> None:
        super().__init__(subject, config)
        self.loss_fn = subject.loss or _default_loss(self.batches[0].y)
        self.has_regularization = subject.regularization is not None
        self.framework = f"torch {torch.__version__}"
        self._devices = rng_devices(self.model)
        # The user's trainable tensors, by id: inside isolation only a stale reference
        # reaches them.
        self._originals = {id(p): n for n, p in self.model.named_parameters() if p.requires_grad}
        self._ran: list[str] = []  # weight layers in the order the last capture ran them
        self._every_position = False  # see _last_position_only
        # A user's loss gets what forward returned; one that only takes the scores gets
        # those (decided once, by the probe).
        self._loss_takes_raw = subject.loss is not None
        self._structured = False  # forward returns more than one tensor (set by the probe)
        self._auxiliary = False  # ... and the loss reads more of it than the scores
        self._reading = [self._shift_own_labels(), self._decoder_inputs()]
        with self.isolated("validation"):
            self.task = self._probe()
        reading = "; ".join(r for r in self._reading if r)
        self.task = dataclasses.replace(self.task, reading=reading, auxiliary=self._auxiliary)

    def _decoder_inputs(self) -> str:
        """transformers' encoder-decoders build their decoder inputs from ``labels``; given
        ``(input_ids, labels)``, nndiag builds them the same way (the model's own
        ``prepare_decoder_input_ids_from_labels``) and passes them with the ids."""
        prepare = getattr(self.model, "prepare_decoder_input_ids_from_labels", None)
        config = getattr(self.model, "config", None)
        if not callable(prepare) or not getattr(config, "is_encoder_decoder", False):
            return ""
        if not all(
            isinstance(b.X, torch.Tensor) and b.y.ndim == 2 and not b.y.is_floating_point()
            for b in self.batches
        ):
            return ""
        with self.calling("model", "model.prepare_decoder_input_ids_from_labels(labels=y)"):
            self.batches = [
                Batch({"input_ids": b.X, "decoder_input_ids": prepare(labels=b.y)}, b.y)
                for b in self.batches
            ]
        return (
            "decoder inputs built from the labels as the model builds them "
            "(prepare_decoder_input_ids_from_labels: the labels shifted right)"
        )

    def _shift_own_labels(self) -> str:
        """transformers' causal LMs take ``labels=input_ids`` and shift inside the model:
        with nndiag's own loss, such labels are shifted the same way (the label at t+1
        for the output at t, the last position ignored), and the note says so. Labels
        that are the inputs of a model that does not generate stay: a copy task, which
        initial_loss reports."""
        if self.subject.loss is not None or not self.model_causal():
            return ""
        for batch in self.batches:
            ids = inputs.sequence(batch.X)
            if ids is None or ids.shape != batch.y.shape or batch.y.is_floating_point():
                return ""
            kept = batch.y != IGNORED_TARGET  # a collator's -100 on padding
            if not bool(kept.any()) or not torch.equal(ids[kept], batch.y[kept]):
                return ""
        self.batches = [Batch(b.X, _next_labels(b.y)) for b in self.batches]
        return (
            "the labels are the input ids (transformers' labels=input_ids): scored as the "
            "model scores them, the output at position t against the token at t+1"
        )

    # -- calls into the user's code ----------------------------------------------------
    def _run_model(self, X: Any) -> _Out:
        self._forward += 1
        call = "model(**X)" if isinstance(X, Mapping) else "model(X)"
        if self._every_position:
            call = "model(X, targets=X)"
        with self.calling("model", call):
            if self._every_position:  # targets only shape the output: any ids will do
                out = self.model(X, targets=X.contiguous())
            else:
                out = inputs.call(self.model, X)
        found = inputs.logits(out)
        if found is None:
            raise InvalidSubject(
                "model",
                f"forward returned {describe(out)}, not a tensor",
                "return the logits/predictions tensor from forward (a ModelOutput with "
                ".logits, a dict with 'logits' or a tuple led by it work too), or wrap the "
                "model in a module that does",
            )
        return _Out(out, found)

    def _run_loss(self, out: _Out, y: torch.Tensor, built: str = "") -> torch.Tensor:
        """The loss of one forward's output; ``built`` describes an output nndiag made
        (perturbed scores) rather than the model, for the message if the loss raises."""
        given = out.raw if self._loss_takes_raw else out.scores
        call, fix = "loss(output, y)", None
        if built:
            call = f"loss(output, y) on an output nndiag built ({built})"
            fix = (
                "the loss runs on the model's own output but not on this one: let it take "
                "any tensor of that shape and dtype (.reshape rather than .view), or leave "
                "this check out for the subject"
            )
        with self.calling("loss", call, fix):
            loss = self.loss_fn(given, y)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else describe(loss)
            raise InvalidSubject(
                "loss",
                f"returned {shape}, not a scalar tensor",
                "reduce the loss to a scalar (reduction='mean' or .mean())",
            )
        return loss.reshape(())

    def _backward_pass(self, loss: torch.Tensor) -> None:
        self._backward += 1
        if not loss.requires_grad:
            return  # nothing reaches any parameter; callers see every grad as None
        with self.calling("model", "loss.backward()"):
            loss.backward()

    # -- isolation ---------------------------------------------------------------------
    @contextmanager
    def isolated(self, check: str) -> Iterator[None]:
        snapshot = _Snapshot(self.model, self.loss_fn)
        knob = self.subject.regularization
        holding = NumberSnapshot(holders(self.loss_fn, knob if callable(knob) else None))
        default_dtype = torch.get_default_dtype()
        if not self._inside:  # the user's modes, for norm_layers() inside the check
            self._user_modes = {id(m): training for m, training in snapshot.training}
        try:
            with torch_rng_guard(self._devices, self.config.seed), torch.enable_grad():
                self._train_mode()
                with self._clones() as self._private, self.entered():
                    yield
        except ModelError as exc:
            exc.check = check
            raise
        finally:
            torch.set_default_dtype(default_dtype)
            snapshot.restore()
            holding.restore()

    def _train_mode(self) -> None:
        """The checks' training mode: batch-statistics layers (and hook-based spectral
        norms) train, every other module is in eval mode. Randomness is regularization
        and off: not only nn.Dropout, but the attention dropout, stochastic depth and
        layer drop that modules (Hugging Face attention, timm DropPath, torchvision
        StochasticDepth) decide from their own ``training`` flag."""
        self.model.eval()
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) or _power_iterates(module):
                module.train()

    @contextmanager
    def _clones(self) -> Iterator[_Private]:
        """Swap a private clone into every parameter and buffer slot (tied tensors stay
        tied) for the length of a check."""
        made: dict[int, torch.Tensor] = {}
        swapped: list[tuple[nn.Module, str, torch.Tensor]] = []
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

        def clone(t: torch.Tensor, parameter: bool) -> torch.Tensor:
            if id(t) not in made:
                c = t.detach().clone()
                made[id(t)] = nn.Parameter(c, requires_grad=t.requires_grad) if parameter else c
            return made[id(t)]

        try:
            for owner in _owners(self.model, self.loss_fn):
                for name, p in list(owner.named_parameters(recurse=False, remove_duplicate=False)):
                    swapped.append((owner, name, p))
                    setattr(owner, name, clone(p, True))
                for name, b in list(owner.named_buffers(recurse=False, remove_duplicate=False)):
                    swapped.append((owner, name, b))
                    setattr(owner, name, clone(b, False))
            yield _Private(
                {n: made[id(p)] for n, p in trainable},  # type: ignore[misc]
                list(made.values()),
                made,
            )
        finally:
            for owner, name, original in reversed(swapped):
                setattr(owner, name, original)

    # -- probe and losses --------------------------------------------------------------
    def _probe(self) -> Task:
        if not self._private.trainable:
            raise InvalidSubject(
                "model",
                "every parameter has requires_grad=False (frozen after the Subject was made?)",
                "unfreeze the layers to diagnose (p.requires_grad_(True))",
            )
        batch = self.rows(min(len(self.batches[0]), PROBE_ROWS))
        watch = _OriginalsWatch(self._originals)
        with torch.no_grad(), watch:
            out = self._run_model(batch.X)
            if self._last_position_only(out.scores, batch):
                self._every_position = True
                out = self._run_model(batch.X)
            if len(out.scores) != len(batch.y):
                raise InvalidSubject(
                    "model",
                    f"output has {len(out.scores)} rows for {len(batch.y)} samples "
                    f"(read from {inputs.logits_source(out.raw)})",
                    "return one output row per input sample",
                )
            task = self._task(out)
            self._structured = not isinstance(out.raw, torch.Tensor)
            self._first_loss(out, batch.y)
        if watch.read:
            raise InvalidSubject(
                "model",
                f"forward reads {', '.join(sorted(watch.read))} through a reference nndiag "
                "cannot swap (a tensor kept in a list, dict or plain attribute): the checks "
                "would measure and train copies the forward never uses",
                "read weights through their modules in forward (self.fc.weight), not "
                "through a cached reference",
            )
        return task

    def _first_loss(self, out: _Out, y: torch.Tensor) -> None:
        """The user's loss on what forward returned; a loss written for the scores alone
        (``F.cross_entropy``) on a model that returns a tuple gets the scores, and the
        report says so."""
        if not self._loss_takes_raw or isinstance(out.raw, torch.Tensor):
            self._run_loss(out, y)
            return
        try:
            whole = self._run_loss(out, y)
        except ModelError as error:
            # Only the errors of a loss handed a type it does not take (a tuple's missing
            # .view, F.cross_entropy of a tuple): a bug inside the loss stays the user's.
            if not isinstance(error.original, (TypeError, AttributeError)):
                raise
            self._loss_takes_raw = False
            try:
                self._run_loss(out, y)
            except ModelError:
                self._loss_takes_raw = True
                raise error from None
            self._reading.append(
                f"the loss takes the scores alone: {inputs.logits_source(out.raw)} (given "
                f"the whole output it raised {type(error.original).__name__})"
            )
            return
        # Whether the loss reads more than the scores (a VAE's KL term on mu and logvar).
        moved = self._run_loss(_Out(inputs.with_others(out.raw, lambda t: t + 1.0), out.scores), y)
        self._auxiliary = not torch.equal(moved, whole)

    def _last_position_only(self, out: torch.Tensor, batch: Batch) -> bool:
        """A minimal GPT's ``forward(idx, targets=None) -> (logits, loss)`` returns the
        last position's logits alone without targets: with a ``targets`` parameter, (N, 1,
        V) outputs for (N, T) labels and ids, the model is called as ``model(idx,
        targets=idx)`` for every position's logits (its own loss is not read)."""
        y, X = batch.y, batch.X
        if not isinstance(X, torch.Tensor) or X.ndim != 2 or y.shape != X.shape:
            return False
        if out.ndim != 3 or out.shape[1] != 1 or X.shape[1] < 2:
            return False
        try:
            takes = "targets" in inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            return False
        if takes:
            self._reading.append(
                "forward(idx) returned the last position's logits alone: called as "
                "model(idx, targets=idx) for every position's (its own loss not read)"
            )
        return takes

    def _task(self, found: _Out) -> Task:
        ys, out = [b.y for b in self.batches], found.scores
        if ys[0].is_floating_point():
            if self.subject.loss is None:
                # the probe's rows: out holds at most PROBE_ROWS of the first batch
                check_default_targets(_numpy(ys[0][: len(out)]), tuple(out.shape))
            return Task("regression")
        self._classes_last = classes_last(out, ys[0])
        classes = out.shape[-1] if self._classes_last else (out.shape[1] if out.ndim > 1 else 0)
        if out.ndim < 2 or classes < 2:
            raise InvalidSubject(
                "data",
                f"integer labels {tuple(ys[0].shape)} need class scores: (N, C) for (N,) "
                f"labels, (N, C, ...) or (N, T, V) for per-position labels; nndiag read "
                f"{inputs.logits_source(found.raw)}, of shape {tuple(out.shape)}",
                "output one score per class at every labelled position, or pass float targets",
            )
        counted = [y[y != IGNORED_TARGET].cpu().numpy() for y in ys]  # transformers' ignore index
        return self.classification(classes, counted)

    _concat = staticmethod(inputs.concat)

    @staticmethod
    def _head(X: Any, n: int) -> Any:
        return inputs.rows(X, slice(0, n))

    def _to_axis1(self, out: torch.Tensor) -> torch.Tensor:
        """Outputs with classes on axis 1, as the contract hands them to checks."""
        return out.movedim(-1, 1) if self._classes_last else out

    def set_regularization(self, strength: float) -> None:
        self.require_isolated("set_regularization")
        knob = self.subject.regularization
        with self.calling("regularization", f"regularization(model, {strength:g})"):
            if isinstance(knob, str):
                current = getattr(self.model, knob)
                if isinstance(current, torch.Tensor):  # a new tensor: the user's stays as is
                    setattr(self.model, knob, torch.full_like(current, strength))
                else:
                    setattr(
                        self.model,
                        knob,
                        type(current)(strength) if isinstance(current, float) else float(strength),
                    )
            elif knob is not None:
                knob(self.model, strength)

    def take(self, batch: Batch, index: Any) -> Batch:
        rows = torch.as_tensor(list(index), dtype=torch.long, device=batch.y.device)
        return Batch(inputs.rows(batch.X, rows), batch.y[rows])

    def arrays(self, batch: Batch) -> tuple[Any, Any]:
        X = _numpy(batch.X) if isinstance(batch.X, torch.Tensor) else None  # a dict: None
        return X, _numpy(batch.y)

    def sequence(self, batch: Batch) -> Any:
        found = inputs.sequence(batch.X)
        return None if found is None else _numpy(found)

    def with_sequence(self, batch: Batch, values: Any) -> Batch:
        old = inputs.sequence(batch.X)
        assert old is not None, "with_sequence() on a batch sequence() found no sequence in"
        new = torch.as_tensor(np.asarray(values), dtype=old.dtype, device=old.device)
        return Batch(
            inputs.with_sequence(batch.X, new), cut_targets(batch.y, old.shape[1], new.shape[1])
        )

    def model_causal(self) -> bool | None:
        return generates_without_encoder(self.model)

    def real_positions(self, batch: Batch) -> Any:
        found = inputs.real_positions(batch.X)
        return None if found is None else _numpy(found)

    @contextmanager
    def _mode(self, mode: Mode, seed: int | None, member: str) -> Iterator[None]:
        """The model in ``mode`` for the block (dropout stays off in train mode), random
        draws seeded; the check's train mode is put back after."""
        self.require_isolated(member)
        modes = [(m, m.training) for m in self.model.modules()]
        _seed(self.config.seed if seed is None else seed, self._devices)
        if mode == "eval":
            self.model.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training

    def evaluate(
        self,
        batch: Batch,
        *,
        mode: Mode = "train",
        outputs: bool = False,
        per_sample: bool = False,
        seed: int | None = None,
    ) -> Evaluation:
        with self._mode(mode, seed, "evaluate"), torch.no_grad():
            out = self._run_model(batch.X)
            mean = float(self._run_loss(out, batch.y))
            per = self._per_sample(out, batch.y) if per_sample else None
        shown = self._to_axis1(out.scores.detach()).double().cpu().numpy() if outputs else None
        return Evaluation(mean, shown, per)

    def _per_sample(self, out: _Out, y: torch.Tensor) -> Any:
        """The loss of each of the first rows alone; None for a loss that cannot take
        single rows (no noise estimate then)."""
        given = out.raw if self._loss_takes_raw else out.scores
        n, rows = len(out.scores), min(len(y), PER_SAMPLE_ROWS)
        try:
            return np.array(
                [
                    float(self.loss_fn(inputs.output_rows(given, slice(i, i + 1), n), y[i : i + 1]))
                    for i in range(rows)
                ]
            )
        except Exception:
            return None

    def loss_of(self, batch: Batch, outputs: Any) -> float:
        self.require_isolated("loss_of")
        dtype = batch.X.dtype if inputs.float_inputs(batch.X) else torch.get_default_dtype()
        array = np.ascontiguousarray(outputs)
        if not array.flags.writeable:  # a broadcast constant: torch wants its own copy
            array = array.copy()
        scores = torch.as_tensor(array, dtype=dtype, device=batch.y.device)
        if self._classes_last:
            # Laid out as the model returns them: a loss that calls .view() on them works
            # here as it does on the model's own output.
            scores = scores.movedim(1, -1).contiguous()
        built, raw = _layout(scores), scores
        with torch.no_grad():
            if self._loss_takes_raw and self._structured:
                # The rest of what forward returns (a VAE's mu and logvar) as the model
                # gives it on these rows, in the checks' train mode as evaluate() runs it.
                with self._mode("train", None, "loss_of"):
                    model_out = self._run_model(batch.X).raw
                raw = inputs.with_logits(model_out, scores)
                built = f"{inputs.logits_source(model_out)}, its scores replaced by {built}"
            return float(self._run_loss(_Out(raw, scores), batch.y, built))

    def input_gradients(self, batch: Batch, row: int, *, mode: Mode = "eval") -> Any:
        if not inputs.float_inputs(batch.X):
            return None
        n = len(batch)
        with self._mode(mode, None, "input_gradients"):
            X = batch.X.detach().clone().requires_grad_(True)
            out = self._run_model(X).scores
            if not out.requires_grad:
                return None
            g = torch.Generator().manual_seed(0)  # the projection: never the user's RNG
            weights = torch.randn(out.shape[1:], generator=g, dtype=torch.float64)
            target = (out[row] * weights.to(out.device, out.dtype)).sum()
            self.count(backward=1)
            with self.calling("model", "backward of model(X) to its inputs"):
                (grad,) = torch.autograd.grad(target, X, allow_unused=True)
        if grad is None:
            return np.zeros(n)
        return grad.detach().abs().reshape(n, -1).amax(1).double().cpu().numpy()

    def find_nonfinite(self, batch: Batch, *, mode: Mode = "train") -> NonFinite | None:
        """Only NaN/Inf that reach the outputs, the loss or a parameter's gradient count:
        a model may make an -inf on purpose and mask it away (T5's log of a zero
        relative position, attention masks)."""
        with self._mode(mode, None, "find_nonfinite"), NonFiniteWatch(self.model) as watch:
            out = self._run_model(batch.X)
            if not bool(torch.isfinite(out.scores).all()):
                bad = int((~torch.isfinite(out.scores)).sum())
                return (
                    watch.found
                    or watch.fallback
                    or NonFinite(
                        "forward", "the model's output", "forward", bad, out.scores.numel()
                    )
                )
            loss = self._run_loss(out, batch.y)
            if not bool(torch.isfinite(loss)):
                return NonFinite("loss", "the loss", getattr(self.loss_fn, "__name__", "loss"))
            if mode != "train" or not loss.requires_grad:
                return None
            watch.found = watch.fallback = None  # what forward masked away does not count
            watch.watch_backward(loss)
            self.count(backward=1)
            params = dict(self._private.trainable)
            with self.calling("model", "loss.backward()"):
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            broken = [
                (n, g) for (n, g) in zip(params, grads) if g is not None and not _all_finite(g)
            ]
            if not broken:
                return None
            name, grad = broken[0]
            bad = int((~torch.isfinite(grad)).sum())
            return watch.found or NonFinite(
                "backward", name, "gradient of the parameter", bad, grad.numel()
            )

    def batch_statistics_layers(self) -> list[str]:
        return [
            name or type(m).__name__
            for name, m in self.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)  # InstanceNorm mixes no rows
        ]

    # -- gradient check ----------------------------------------------------------------
    @contextmanager
    def objective(self, batch: Batch, *, dtype: str = "float64") -> Iterator[_Objective]:
        self.require_isolated("objective")
        if dtype != "float64":
            raise ValueError(f"the torch objective runs in float64, not {dtype}")
        X = batch.X.double() if inputs.float_inputs(batch.X) else batch.X
        y = batch.y.double() if batch.y.is_floating_point() else batch.y
        # Tensors the model creates inside forward follow the default dtype.
        torch.set_default_dtype(torch.float64)
        private = self._private
        dtypes = [t.dtype for t in private.tensors]
        note = float64_note(str(p.dtype).removeprefix("torch.") for p in private.trainable.values())
        captured = _captured_tensors(self.loss_fn)
        try:  # the private clones themselves go to float64: no second copy of the model
            for t in private.tensors:
                if t.is_floating_point():
                    t.data = t.data.double()
            for put, value in captured:  # e.g. a class-weight tensor the loss closes over
                put(value.double())
            objective = _Objective(self, private.trainable, X, y)
            objective.resolution = objective.precision()
            objective.note = " ".join(filter(None, [note, _kept_note(objective.casts.kept)]))
            yield objective
        finally:
            for put, value in captured:
                put(value)
            for t, original in zip(private.tensors, dtypes):
                t.data = t.data.to(original)
                t.grad = None

    # -- training ----------------------------------------------------------------------
    @contextmanager
    def trainer(
        self,
        batch: Batch,
        *,
        lr: float | None = None,
        default_lr: float = 1e-3,
        restore: bool = False,
    ) -> Iterator[_Trainer]:
        self.require_isolated("trainer")
        params = self._private.trainable
        saved = [t.detach().clone() for t in self._private.tensors] if restore else []
        if restore:  # each run sees the same random draws
            _seed(self.config.seed, self._devices)
        try:
            optimizer, described = self._optimizer(list(params.values()), lr, default_lr)
            yield _Trainer(self, params, optimizer, described, batch)
        finally:
            with torch.no_grad():  # the clones themselves: tied tensors stay tied
                for tensor, values in zip(self._private.tensors, saved):
                    tensor.copy_(values)
                    tensor.grad = None

    def _optimizer(
        self, params: list[nn.Parameter], lr: float | None, default_lr: float
    ) -> tuple[torch.optim.Optimizer, str]:
        made, described = self._subject_optimizer(params, default_lr)
        if lr is not None:
            for group in made.param_groups:
                group["lr"] = lr
            described = f"{type(made).__name__}(lr={lr:g}) (learning rate set by the check)"
        return made, described

    def _subject_optimizer(
        self, params: list[nn.Parameter], default_lr: float
    ) -> tuple[torch.optim.Optimizer, str]:
        given = self.subject.optimizer
        if given is None:
            lr = default_lr
            if any(p.dtype == torch.float16 for p in params):
                # Adam's eps 1e-8 is 0 in float16 (its smallest normal is 6e-5): a zero
                # second moment would divide by 0. nndiag's choice must not be the bug.
                adam = torch.optim.Adam(params, lr=lr, eps=_FLOAT16_EPS)
                return adam, f"Adam(lr={lr:g}, eps={_FLOAT16_EPS:g}) (nndiag's default)"
            return torch.optim.Adam(params, lr=lr), f"Adam(lr={lr:g}) (nndiag's default)"
        if isinstance(given, torch.optim.Optimizer):  # copy class and settings, never step it
            settings = {
                k: v
                for k, v in given.defaults.items()
                if k in ("lr", "momentum", "betas", "eps", "nesterov", "alpha")
            }
            shown = ", ".join(f"{k}={v}" for k, v in settings.items())
            # Only the settings the class takes: AdamW's defaults hold a
            # decoupled_weight_decay that its constructor does not accept.
            accepted = inspect.signature(type(given).__init__).parameters
            copied = {k: v for k, v in given.defaults.items() if k in accepted}
            try:
                made = type(given)(params, **copied)
            except TypeError as exc:  # a subclass whose constructor takes other arguments
                raise InvalidSubject(
                    "optimizer",
                    f"{type(given).__name__} cannot be rebuilt from its defaults on nndiag's "
                    f"copies ({exc})",
                    f"pass a factory: optimizer=lambda params: {type(given).__name__}(params, ...)",
                ) from None
            return made, f"{type(given).__name__}({shown}) (the subject's optimizer settings)"
        with self.calling("optimizer", "optimizer(params)"):
            made = given(params)
        if not isinstance(made, torch.optim.Optimizer):
            raise InvalidSubject(
                "optimizer",
                f"the factory returned {describe(made)}",
                "return a torch.optim.Optimizer built on the given params",
            )
        made_lr = made.param_groups[0].get("lr")
        return made, f"{type(made).__name__}(lr={made_lr}) (the subject's optimizer)"

    # -- activations -------------------------------------------------------------------
    def _capture_layers(self, rows: int, bins: int) -> list[LayerRecord]:
        recorder = Recorder(self.model, bins)
        left = rows
        with torch.no_grad():
            for batch in self.batches:
                if left <= 0:
                    break
                with recorder:
                    recorder.returned(self._run_model(inputs.rows(batch.X, slice(0, left))).scores)
                left -= len(batch)
        self._ran = list(recorder.ran)
        return recorder.layers()

    # -- batch normalization -----------------------------------------------------------
    def _norms(self) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
        return [
            (name or type(m).__name__, m)
            for name, m in self.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]

    def norm_layers(self) -> list[NormLayer]:
        modes = self._user_modes if self._inside else {}
        training = modes.get(id(self.model), self.model.training)
        return [
            NormLayer(
                name,
                None if m.momentum is None else float(m.momentum),
                tracks=m.track_running_stats and m.running_mean is not None,
                frozen=bool(training and not modes.get(id(m), m.training)),
                setting=f"momentum={m.momentum}",
            )
            for name, m in self._norms()
        ]

    def running_statistics(self) -> dict[str, tuple[Any, Any]] | None:
        self.require_isolated("running_statistics")
        return {
            name: (
                None if m.running_mean is None else _numpy(m.running_mean).copy(),
                None if m.running_var is None else _numpy(m.running_var).copy(),
            )
            for name, m in self._norms()
            if m.track_running_stats and m.running_mean is not None
        }

    def warm(self, batches: Sequence[Batch]) -> None:
        """``momentum=None`` on the private layers for the block: torch's cumulative
        average, 1/k for the k-th forward."""
        self.require_isolated("warm")
        layers = [m for _, m in self._norms() if m.track_running_stats]
        momenta = [m.momentum for m in layers]
        try:
            for m in layers:
                m.reset_running_stats()  # the private clones: zeros, ones, 0 batches
                m.momentum = None
            for batch in batches:
                with self._mode("train", None, "warm"), torch.no_grad():
                    self._run_model(batch.X)
        finally:
            for m, momentum in zip(layers, momenta):
                m.momentum = momentum

    # -- optimizer ownership -----------------------------------------------------------
    def ownership(self) -> Ownership | None:
        """An optimizer instance is compared with the user's own tensors (identity), a
        factory's optimizer with the private copies it was given or reached through the
        model."""
        self.require_isolated("ownership")
        given = self.subject.optimizer
        if given is None:
            return None
        private = self._private
        if isinstance(given, torch.optim.Optimizer):
            held_by = given
            described = f"{type(given).__name__} instance (the subject's optimizer)"
        else:
            held_by, described = self._subject_optimizer(list(private.trainable.values()), 0.0)
        clones = {id(c): c for c in private.sources.values()}
        owned: set[int] = set()
        stale: list[tuple[int, ...]] = []
        for group in held_by.param_groups:
            for t in group["params"]:
                clone = clones.get(id(t))
                if clone is None:  # the user's own tensor (an instance built on the model)
                    clone = private.sources.get(id(t))
                if clone is None:
                    stale.append(tuple(t.shape))
                else:
                    owned.add(id(clone))
        unowned = tuple(n for n, p in private.trainable.items() if id(p) not in owned)
        return Ownership(described, unowned, tuple(stale))

    def weights(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, module in self.model.named_modules():
            if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                continue  # rows are tokens, not units
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.ndim < 2 or not weight.requires_grad:
                continue
            w = weight.detach()
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                w = w.transpose(0, 1)  # (in, out, ...): units on axis 1
            elif type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
                w = w.t()  # transformers' GPT-2 layer stores (in, out)
            matrix = _numpy(w.reshape(w.shape[0], -1))
            matrix.setflags(write=False)  # a view of the user's tensor
            found[name] = matrix
        # Once a capture ran, in the order the layers ran: a module may declare its head
        # before its body, and the output layer is the one that runs last.
        order = {name: i for i, name in enumerate(self._ran)}
        return dict(sorted(found.items(), key=lambda item: order.get(item[0], -1)))


def _statistics(module: nn.Module) -> bool:
    """A module whose buffers are estimates refreshed in training mode, not weights: batch
    statistics (BatchNorm's running mean and variance) and spectral norm's power iterates."""
    return isinstance(module, nn.modules.batchnorm._NormBase) or _power_iterates(module)


class _Private(NamedTuple):
    """The clones swapped into the model during a check."""

    trainable: dict[str, nn.Parameter]  # by parameter name
    tensors: list[torch.Tensor]  # every cloned parameter and buffer
    sources: dict[int, torch.Tensor]  # id of the user's tensor -> its clone


class _Objective:
    """The loss on one batch as a float64 function of the trainable clones."""

    note = ""
    resolution = 2.0**-52

    def __init__(
        self,
        session: TorchSession,
        params: Mapping[str, nn.Parameter],
        X: torch.Tensor,
        y: torch.Tensor,
    ) -> None:
        self.session = session
        self.params = dict(params)
        self.names = list(self.params)
        self.shapes = {n: tuple(p.shape) for n, p in self.params.items()}
        self.base = {n: p.detach().clone() for n, p in self.params.items()}
        self.X, self.y = X, y
        self.casts = _Float64Casts()
        self._winners: list[torch.Tensor] | None = None  # at the point, once asked for
        # Rows whose gradient autograd zeroes by design while forward reads them: an
        # nn.Embedding's padding_idx row. Shifts leave them alone and their gradient is not
        # compared, or every batch holding the padding token would look like a wrong one.
        self.held = {
            f"{name}.weight" if name else "weight": m.padding_idx
            for name, m in session.model.named_modules()
            if isinstance(m, nn.Embedding) and m.padding_idx is not None
        }

    def precision(self) -> float:
        """The eps of the least precise floating dtype any operation of one forward pass
        produces (one extra forward, no gradient)."""
        with torch.no_grad(), _DtypeWatch() as watch:
            self._loss()
        return max(torch.finfo(d).eps for d in watch.dtypes) if watch.dtypes else 2.0**-52

    def _shift(self, name: str, shift: Any, device: torch.device) -> torch.Tensor:
        tensor = torch.from_numpy(shift).to(device)
        row = self.held.get(name)
        if row is not None:
            tensor = tensor.clone() if tensor.data_ptr() == shift.ctypes.data else tensor
            tensor[row] = 0
        return tensor

    def _loss(self) -> torch.Tensor:
        _seed(self.session.config.seed, self.session._devices)  # same dropout mask each time
        with self.casts:
            return self.session._run_loss(self.session._run_model(self.X), self.y)

    def values(self) -> dict[str, Any]:
        found = {n: b.cpu().numpy() for n, b in self.base.items()}
        for array in found.values():  # views of the point: a check must not write them
            array.setflags(write=False)
        return found

    def move(self, shifts: Mapping[str, Any]) -> None:
        self._winners = None
        with torch.no_grad():
            for name, shift in shifts.items():
                self.base[name] += self._shift(name, shift, self.base[name].device)
                self.params[name].copy_(self.base[name])

    def value_and_grad(self) -> tuple[float, dict[str, Any]]:
        for p in self.params.values():
            p.grad = None
        loss = self._loss()
        self.session._backward_pass(loss)
        # No copy: the next call drops these .grad tensors rather than accumulating.
        grads = {
            n: None if p.grad is None else p.grad.detach().cpu().numpy()
            for n, p in self.params.items()
        }
        for name, row in self.held.items():
            # A held row is out of the check on both sides: a weight tied to an output
            # layer (BERT's decoder) gives it a gradient that no shift of it measures.
            grad = grads.get(name)
            if grad is not None:
                grad[row] = 0
        return loss.item(), grads

    def sides(self, shifts: Mapping[str, Any], h: float) -> Sides:
        if self._winners is None:  # the point's own, once per point
            with Winners() as here:
                self.value({})
            self._winners = here.winners
        with Winners() as up:
            high = self.value(shifts, h)
        with Winners() as down:
            low = self.value(shifts, -h)
        return Sides(
            high,
            low,
            changed(up.winners, down.winners),
            changed(self._winners, up.winners),
            changed(self._winners, down.winners),
        )

    def value(self, shifts: Mapping[str, Any], scale: float = 1.0) -> float:
        with torch.no_grad():
            for name, shift in shifts.items():  # one fused pass, no temporaries
                p = self.params[name]
                torch.add(
                    self.base[name], self._shift(name, shift, p.device), alpha=scale, out=p.data
                )
            try:
                return float(self._loss())
            finally:
                for name in shifts:
                    self.params[name].copy_(self.base[name])


def _kept_note(kept: Mapping[str, int]) -> str:
    """The result's note on lower-precision casts that ran in float64 (one forward's)."""
    if not kept:
        return ""
    shown = ", ".join(sorted(kept)[:3]) + (", ..." if len(kept) > 3 else "")
    return (
        f"The forward asks for float32 or lower in {sum(kept.values())} place(s) ({shown}): "
        "the check computed them in float64."
    )


def _power_iterates(module: nn.Module) -> bool:
    """A module under the hook-based ``torch.nn.utils.spectral_norm``: it refines its
    singular-vector estimate only in training mode, and in eval mode from a fresh init the
    estimate is far off (weights many times too large)."""
    from torch.nn.utils.spectral_norm import SpectralNorm

    return any(isinstance(hook, SpectralNorm) for hook in module._forward_pre_hooks.values())


def _norm(t: torch.Tensor) -> float:
    """The 2-norm, again in float64 where float32 squares underflowed to 0 (entries below
    ~1e-19 that are not all zero)."""
    norm = float(t.detach().norm())
    return float(t.detach().double().norm()) if norm == 0 and bool(t.any()) else norm


def _all_finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


_LOWER = (torch.float32, torch.float16, torch.bfloat16)
_CASTS = (torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16)


class _Float64Casts(TorchFunctionMode):
    """Keeps a float64 forward in float64 where the model asks for a lower float dtype: a
    cast (``x.float()``, ``x.to(torch.float32)``) or a ``dtype=`` argument (``softmax(...,
    dtype=torch.float32)``). transformers' RMSNorm, T5's variance and eager attention's
    softmax compute in float32 whatever the model's dtype; their rounding, 1e-7 relative,
    would swamp the centered differences of a float64 check. Counts what it kept."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: dict[str, int] = {}

    def _keep(self, what: str) -> None:
        self.kept[what] = self.kept.get(what, 0) + 1

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in _CASTS:
            self._keep(f"Tensor.{func.__name__}()")
            return torch.Tensor.double(*args[:1])
        if kwargs.get("dtype") in _LOWER:
            self._keep(f"{getattr(func, '__name__', 'a call')}(dtype={kwargs['dtype']})")
            kwargs["dtype"] = torch.float64
        if func is torch.Tensor.to:
            lowered = [isinstance(a, torch.dtype) and a in _LOWER for a in args]
            if any(lowered):
                self._keep("Tensor.to(<lower float>)")
                args = tuple(torch.float64 if low else a for a, low in zip(args, lowered))
        return func(*args, **kwargs)


class _DtypeWatch(TorchFunctionMode):
    """Collects the floating dtypes that operations produce."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            self.dtypes.add(out.dtype)
        return out


class _OriginalsWatch(TorchFunctionMode):
    """Names the user's own parameters that operations read while private clones are
    swapped in: a forward that reaches them holds references nndiag cannot swap."""

    def __init__(self, originals: Mapping[int, str]) -> None:
        super().__init__()
        self.originals = originals
        self.read: set[str] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        for value in (*args, *(kwargs or {}).values()):
            for item in value if isinstance(value, (list, tuple)) else (value,):
                name = self.originals.get(id(item))
                if name is not None:
                    self.read.add(name)
        return func(*args, **(kwargs or {}))


class _Trainer:
    def __init__(
        self,
        session: TorchSession,
        params: Mapping[str, nn.Parameter],
        optimizer: torch.optim.Optimizer,
        described: str,
        batch: Batch,
    ) -> None:
        self.session = session
        self.params = dict(params)
        self.opt = optimizer
        self.optimizer = described
        self.batch = batch
        self.start = {n: p.detach().clone() for n, p in self.params.items()}
        self.classify = session.task.kind == "classification"
        # Tensors no step may change: parameters without gradients, and buffers that are
        # not statistics (each counted once: tied tensors share a name).
        model = session.model
        fixed = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
        for prefix, module in model.named_modules():
            if not _statistics(module):
                fixed += [
                    (f"{prefix}.{n}" if prefix else n, b)
                    for n, b in module.named_buffers(recurse=False)
                ]
        self.fixed = {n: (t, t.detach().clone()) for n, t in fixed if t is not None}

    def step(self, *, measure: bool = False, batch: Batch | None = None) -> Step:
        batch = self.batch if batch is None else batch
        before = {n: p.detach().clone() for n, p in self.params.items()} if measure else {}
        self.opt.zero_grad(set_to_none=True)
        out = self.session._run_model(batch.X)
        loss = self.session._run_loss(out, batch.y)
        accuracy = None
        if self.classify:
            y = batch.y
            axis = -1 if self.session._classes_last else 1
            kept = y != IGNORED_TARGET
            hits = out.scores.detach().argmax(axis) == y
            accuracy = hits[kept].float().mean().item() if bool(kept.any()) else None
        value = loss.item()
        if math.isfinite(value):
            self.session._backward_pass(loss)
            with self.session.calling("optimizer", "optimizer.step()"):
                self.opt.step()
        if not measure:
            return Step(value, accuracy)
        updates = {n: float((p.detach() - before[n]).norm()) for n, p in self.params.items()}
        weights = {n: float(w.norm()) for n, w in before.items()}
        grads = {n: None if p.grad is None else _norm(p.grad) for n, p in self.params.items()}
        return Step(value, accuracy, updates, weights, grads)

    def evaluate(self, batch: Batch) -> Evaluation:
        # The trained tensors are the private copies in the model's slots.
        return self.session.evaluate(batch, mode="eval", outputs=True)

    def unchanged(self) -> list[str]:
        return [n for n, p in self.params.items() if torch.equal(p.detach(), self.start[n])]

    def frozen_changed(self) -> list[str]:
        return [
            n
            for n, (t, start) in self.fixed.items()
            if t.shape != start.shape or not torch.equal(t.detach(), start)
        ]

    @property
    def lr(self) -> float | None:
        value = self.opt.param_groups[0].get("lr") if self.opt.param_groups else None
        try:
            return None if value is None else float(value)  # a tensor rate too
        except (TypeError, ValueError):
            return None

    def capture(self, batch: Batch, *, bins: int) -> list[LayerRecord]:
        # The model holds the trained clones themselves: one forward of them, recorded.
        recorder = Recorder(self.session.model, bins)
        with torch.no_grad(), recorder:
            recorder.returned(self.session._run_model(batch.X).scores)
        return recorder.layers()
