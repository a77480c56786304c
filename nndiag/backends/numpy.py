"""numpy backend: models written to the CS231n assignment protocol.

The protocol:

- ``model.params``: dict name -> ``np.ndarray``, read by ``loss`` on every call;
- ``model.loss(X, y=None)``: class scores ``(N, C)`` when ``y`` is None, else
  ``(loss, grads)`` with ``grads`` keyed like ``params``;
- optional ``model.reg``: the regularization strength the loss reads;
- optional ``model.activations(X)``: an ordered mapping name -> post-activation array,
  which enables ``activation_stats`` and ``dead_neurons`` (a name containing ``relu``,
  ``tanh`` or ``sigmoid`` says the kind; otherwise non-negative outputs with exact zeros
  count as ReLU).

As in the torch backend, checks never touch the user's arrays: for the length of a check
``model.params`` holds private copies, and the original arrays go back in ``finally``.
Batch-norm and dropout state kept on the model (``bn_params``, ``dropout_param``) is
restored too, and the global numpy RNG (CS231n dropout draws from it) is reseeded before
each loss evaluation, so every evaluation sees the same dropout mask. Classification
losses are assumed to be softmax cross-entropy, as in the assignments: the expected
initial loss is ln C / the label entropy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from nndiag.backends.base import (
    PROBE_ROWS,
    SessionBase,
    adam_update,
    cut_targets,
    float64_note,
    read_items,
    unpack,
    validate_arrays,
)
from nndiag.backends.capture import Accumulator
from nndiag.backends.state import NumberSnapshot, holders, rng_guard
from nndiag.contract import (
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

__all__ = ["BACKEND", "NumpyBackend", "NumpySession"]

_STATE_ATTRIBUTES = ("bn_params", "dropout_param")
_KINDS = ("relu", "tanh", "sigmoid")


class NumpyBackend:
    """Adapter for CS231n-protocol models (``params`` dict + ``loss(X, y)``)."""

    name = "numpy"

    def accepts(self, model: Any) -> bool:
        params = getattr(model, "params", None)
        return (
            isinstance(params, dict)
            and callable(getattr(model, "loss", None))
            and all(isinstance(v, np.ndarray) for v in params.values())
        )

    def validate_model(self, model: Any, *, optimizer: Any, regularization: Any) -> None:
        if not model.params:
            raise InvalidSubject(
                "model",
                "model.params is empty",
                "store the weights in model.params before diagnosing",
            )
        for name, value in model.params.items():
            if not np.issubdtype(value.dtype, np.floating):
                raise InvalidSubject(
                    "model",
                    f"params[{name!r}] has dtype {value.dtype}: parameters are perturbed "
                    "and trained, which needs floats",
                    f"store it as floats: model.params[{name!r}] = "
                    f"model.params[{name!r}].astype(np.float64)",
                )
        if optimizer is not None and not callable(optimizer) and _rule_config(optimizer) is None:
            raise InvalidSubject(
                "optimizer",
                f"expected an update rule or (rule, optim_config), got {describe(optimizer)}",
                "pass a CS231n-style rule: optimizer=optim.sgd_momentum, or with its "
                "settings as the Solver takes them: optimizer=(optim.sgd_momentum, "
                "{'learning_rate': 1e-2})",
            )
        if regularization not in (None, "reg") and not callable(regularization):
            raise InvalidSubject(
                "regularization",
                f"{regularization!r} is not supported",
                "leave it out: a numeric model.reg is used as the knob",
            )

    def read_batches(self, model: Any, data: Any, limit: int) -> list[Batch]:
        items = read_items(data, limit, lambda v: isinstance(v, np.ndarray), rng_guard())
        return [self._batch(item, i) for i, item in enumerate(items)]

    def _batch(self, item: Any, index: int) -> Batch:
        where, *pair = unpack(item, index)
        X, y = (np.asarray(v) for v in pair)
        validate_arrays(
            where,
            X,
            y,
            lambda v: int((~np.isfinite(v)).sum()) if np.issubdtype(v.dtype, np.floating) else 0,
        )
        return Batch(X, y)

    def session(self, subject: Any, config: Any) -> NumpySession:
        return NumpySession(subject, config)


BACKEND = NumpyBackend()


def _adam(w: np.ndarray, dw: np.ndarray, config: dict[str, Any]) -> tuple[np.ndarray, dict]:
    """Adam as CS231n's ``optim.adam`` writes it (same signature, same defaults)."""
    config.setdefault("learning_rate", 1e-3)
    m = config.setdefault("m", np.zeros_like(w))
    v = config.setdefault("v", np.zeros_like(w))
    config["t"] = t = config.get("t", 0) + 1
    w, config["m"], config["v"] = adam_update(np, w, dw, m, v, t, config["learning_rate"])
    return w, config


WORDS = Vocabulary(
    framework="numpy",
    custom_backward="the hand-written backward in loss() (the grads it returns)",
    cut_graph="a gradient left out of grads, or one that skips a layer",
    summed_loss="a data loss not divided by N",
    eval_mode="test mode (loss(X) without y)",
    he_init="np.sqrt(2 / fan_in) * np.random.randn(fan_in, fan_out)",
    xavier_init="np.random.randn(fan_in, fan_out) / np.sqrt(fan_in)",
    standardize="X = (X - mean) / std with the training set's mean {mean} and std {std} "
    "(for (N, D) data: X -= X.mean(axis=0); X /= X.std(axis=0))",
    rebalance="resample the classes, or weight each sample's loss by 1 / its class frequency",
)


def _softmax_loss(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample softmax cross-entropy, the assignments' classification loss."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return log_norm - shifted[np.arange(len(y)), y.astype(np.int64)]


def _bad(values: Any) -> tuple[int, int]:
    a = np.asarray(values)
    if not np.issubdtype(a.dtype, np.floating):
        return 0, a.size
    return int((~np.isfinite(a)).sum()), a.size


class NumpySession(SessionBase):
    """One diagnose run of one CS231n-protocol subject."""

    words = WORDS

    def __init__(self, subject: Any, config: Any) -> None:
        super().__init__(subject, config)
        self.has_regularization = isinstance(
            getattr(self.model, "reg", None), (int, float)
        ) or callable(subject.regularization)
        self.framework = f"numpy {np.__version__}"
        with self.isolated("validation"):
            self.task = self._probe()

    # -- calls into the user's code ----------------------------------------------------
    def _scores(self, X: np.ndarray) -> np.ndarray:
        self._forward += 1
        with self.calling("model", "model.loss(X)"):
            scores = self.model.loss(X)
        if not isinstance(scores, np.ndarray) or scores.shape[:1] != X.shape[:1]:
            raise InvalidSubject(
                "model",
                f"loss(X) returned {describe(scores)}, not scores of shape ({len(X)}, C)",
                "return the class scores when y is None",
            )
        return scores

    def _loss(
        self,
        X: np.ndarray,
        y: np.ndarray,
        grads: bool = False,
        reseed: bool = False,
        seed: int | None = None,
    ) -> tuple[float, Any]:
        self._forward += 1
        self._backward += int(grads)
        if reseed or seed is not None:  # the same random draws in every evaluation
            np.random.seed(self.config.seed if seed is None else seed)
        # NotImplementedError too: an unfinished assignment
        with self.calling("model", "model.loss(X, y)"):
            returned = self.model.loss(X, y)
        if not (isinstance(returned, tuple) and len(returned) == 2):
            raise InvalidSubject(
                "model",
                f"loss(X, y) returned {describe(returned)}, not (loss, grads)",
                "return (loss, grads) when y is given",
            )
        loss, found = returned
        if loss is None or np.ndim(loss) != 0:
            raise InvalidSubject(
                "loss",
                f"model.loss(X, y) returned a loss of shape {np.shape(loss)}, not a scalar",
                "average the loss",
            )
        if grads and not isinstance(found, dict):
            raise InvalidSubject(
                "model",
                f"the gradients are {describe(found)}, not a dict",
                "return grads as a dict keyed like model.params",
            )
        if grads:
            for name, grad in found.items():
                shape, expected = np.shape(grad), np.shape(self.model.params.get(name, grad))
                if grad is not None and shape != expected:
                    raise InvalidSubject(
                        "model",
                        f"loss(X, y) returned grads[{name!r}] of shape {shape} for "
                        f"params[{name!r}] of shape {expected}",
                        "return each gradient with its parameter's shape (a transposed dW?)",
                    )
        return float(loss), found

    # -- isolation ---------------------------------------------------------------------
    @contextmanager
    def isolated(self, check: str) -> Iterator[None]:
        params = self.model.params
        originals = dict(params)
        values = {k: v.copy() for k, v in params.items()}
        state = {
            a: copy.deepcopy(getattr(self.model, a))
            for a in _STATE_ATTRIBUTES
            if hasattr(self.model, a)
        }
        knob = self.subject.regularization
        holding = NumberSnapshot(holders(knob if callable(knob) else None, extra=(self.model,)))
        dropout = getattr(self.model, "dropout_param", None)
        with rng_guard():
            try:
                np.random.seed(self.config.seed)
                for name, value in originals.items():  # private copies, as in the torch backend
                    params[name] = value.copy()
                if isinstance(dropout, dict):  # dropout is regularization: off, whatever loss sets
                    self.model.dropout_param = _PinnedMode(dropout, mode="test")
                with self.entered():
                    yield
            except ModelError as exc:
                exc.check = check
                raise
            finally:
                params.clear()
                params.update(originals)
                for name, value in originals.items():
                    if not np.array_equal(value, values[name], equal_nan=True):
                        np.copyto(value, values[name])
                if isinstance(dropout, dict):
                    self.model.dropout_param = dropout
                for attribute, saved in state.items():
                    _restore_in_place(self.model, attribute, saved)
                holding.restore()

    # -- probe and losses --------------------------------------------------------------
    def _probe(self) -> Task:
        first = self.rows(min(len(self.batches[0]), PROBE_ROWS))
        scores = self._scores(first.X)  # the loss itself may be unfinished: checks say so
        ys = [b.y for b in self.batches]
        if np.issubdtype(ys[0].dtype, np.floating):
            return Task("regression")
        return self.classification(scores.shape[1] if scores.ndim == 2 else 0, ys)

    _concat = staticmethod(np.concatenate)

    def set_regularization(self, strength: float) -> None:
        self.require_isolated("set_regularization")
        knob = self.subject.regularization
        with self.calling("regularization", f"regularization(model, {strength:g})"):
            if callable(knob):
                knob(self.model, strength)
            else:
                self.model.reg = float(strength)

    def take(self, batch: Batch, index: Any) -> Batch:
        rows = np.asarray(list(index), dtype=np.int64)
        return Batch(batch.X[rows], batch.y[rows])

    def arrays(self, batch: Batch) -> tuple[Any, Any]:
        return batch.X, batch.y

    def sequence(self, batch: Batch) -> Any:
        X = self.arrays(batch)[0]
        return X if X is not None and X.ndim >= 2 else None

    def with_sequence(self, batch: Batch, values: Any) -> Batch:
        new = np.asarray(values, dtype=batch.X.dtype)
        return Batch(new, cut_targets(batch.y, batch.X.shape[1], new.shape[1]))

    def evaluate(
        self,
        batch: Batch,
        *,
        mode: Mode = "train",
        outputs: bool = False,
        per_sample: bool = False,
        seed: int | None = None,
    ) -> Evaluation:
        """Train mode is ``loss(X, y)``; eval mode scores ``loss(X)`` (the protocol's test
        mode) with the softmax / squared-error loss the assignments use."""
        self.require_isolated("evaluate")
        seed = self.config.seed if seed is None else seed
        scores = None
        if mode == "eval":
            np.random.seed(seed)
            scores = self._scores(batch.X)
            loss = self.loss_of(batch, scores)
        else:
            loss, _ = self._loss(batch.X, batch.y, seed=seed)
        per = None
        if per_sample and self.task.kind == "classification":
            if scores is None:
                np.random.seed(seed)
                scores = self._scores(batch.X)
            per = _softmax_loss(np.asarray(scores, np.float64), batch.y)
        if outputs and scores is None:
            np.random.seed(seed)
            scores = self._scores(batch.X)
        shown = np.asarray(scores, np.float64) if outputs else None
        return Evaluation(loss, shown, per)

    def loss_of(self, batch: Batch, outputs: Any) -> float:
        scores = np.asarray(outputs, dtype=np.float64)
        if self.task.kind == "classification":
            return float(_softmax_loss(scores, batch.y).mean())
        y = np.asarray(batch.y, dtype=np.float64)
        return float(((scores.reshape(y.shape) - y) ** 2).mean())

    def input_gradients(self, batch: Batch, row: int, *, mode: Mode = "eval") -> Any:
        return None  # the protocol returns no gradient with respect to X

    def find_nonfinite(self, batch: Batch, *, mode: Mode = "train") -> NonFinite | None:
        """Activations (when ``model.activations`` exists) in depth order, then the scores,
        the loss and each gradient: the protocol shows no finer operations."""
        self.require_isolated("find_nonfinite")
        np.random.seed(self.config.seed)
        activations = getattr(self.model, "activations", None)
        if callable(activations):
            with self.calling("model", "model.activations(X)"):
                found = activations(batch.X)
            self.count(forward=1)
            for name, values in found.items():
                bad, total = _bad(values)
                if bad:
                    return NonFinite("forward", str(name), "activation", bad, total)
        bad, total = _bad(self._scores(batch.X))
        if bad:
            return NonFinite("forward", "the scores of loss(X)", "forward", bad, total)
        if mode == "eval":
            return None
        loss, grads = self._loss(batch.X, batch.y, grads=True, reseed=True)
        if not math.isfinite(loss):
            return NonFinite("loss", "loss(X, y)", "data loss or regularization term", 1, 1)
        for name in self.model.params:
            grad = grads.get(name) if isinstance(grads, dict) else None
            bad, total = _bad(grad) if grad is not None else (0, 0)
            if bad:
                return NonFinite(
                    "backward", str(name), f"hand-written gradient of {name}", bad, total
                )
        return None

    def batch_statistics_layers(self) -> list[str]:
        bn = getattr(self.model, "bn_params", None)
        if isinstance(bn, list):
            return [f"bn_params[{i}]" for i in range(len(bn))]
        return ["bn_params"] if isinstance(bn, dict) and bn else []

    # -- gradient check ----------------------------------------------------------------
    @contextmanager
    def objective(self, batch: Batch, *, dtype: str = "float64") -> Iterator[_Objective]:
        self.require_isolated("objective")
        if dtype != "float64":
            raise ValueError(f"the numpy objective runs in float64, not {dtype}")
        X = batch.X.astype(np.float64) if np.issubdtype(batch.X.dtype, np.floating) else batch.X
        params = self.model.params
        note = float64_note(str(v.dtype) for v in params.values())
        for name in list(params):
            params[name] = params[name].astype(np.float64)  # a copy, in float64
        objective = _Objective(self, X, batch.y)
        objective.note = note
        yield objective

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
        params = self.model.params
        saved = {k: v.copy() for k, v in params.items()} if restore else {}
        state = {}  # batch-norm running statistics the steps update
        if restore and hasattr(self.model, "bn_params"):
            state["bn_params"] = copy.deepcopy(self.model.bn_params)
        if restore:  # each run sees the same random draws (dropout the model applies)
            np.random.seed(self.config.seed)
        try:
            yield _Trainer(self, batch, lr, default_lr)
        finally:
            for name, value in saved.items():  # the private arrays themselves
                if params.get(name) is not None and params[name].shape == value.shape:
                    np.copyto(params[name], value)
                else:
                    params[name] = value
            for attribute, kept in state.items():
                _restore_in_place(self.model, attribute, kept)

    # -- activations -------------------------------------------------------------------
    def _capture_layers(self, rows: int, bins: int) -> list[LayerRecord]:
        return self._activations_of(self.rows(rows).X, bins)

    def _activations_of(self, X: np.ndarray, bins: int) -> list[LayerRecord]:
        """Statistics of ``model.activations(X)`` at the current ``params``."""
        activations: Callable[[np.ndarray], Mapping[str, Any]] | None = getattr(
            self.model, "activations", None
        )
        if not callable(activations):
            return []  # the activation checks skip, saying why
        stats = Accumulator(bins)
        self._forward += 1
        with self.calling("model", "model.activations(X)"):
            found = activations(X)
        weights = [(k, v) for k, v in self.model.params.items() if v.ndim >= 2]
        for index, (name, value) in enumerate(found.items()):
            a = np.asarray(value)
            a = np.moveaxis(a, 1, -1) if a.ndim == 4 else a  # (N, C, H, W): units = channels
            a = a.reshape(-1, a.shape[-1]) if a.ndim >= 2 else a.reshape(-1, 1)
            weight = None
            if index < len(weights):  # CS231n order: W1 feeds the first activation, ...
                wname, w = weights[index]
                weight = (
                    wname,
                    int(np.prod(w.shape[:-1]) if w.ndim == 2 else np.prod(w.shape[1:])),
                    float(w.std()),
                )
            stats.add(str(name), _kind(str(name), a), a, weight, normalized=self._normalizes())
        return stats.layers()

    # -- batch normalization -----------------------------------------------------------
    def _norms(self) -> list[tuple[str, dict[str, Any]]]:
        """The ``bn_params`` dicts of batch normalization: CS231n's carry a ``mode`` (its
        layer normalization keeps empty dicts there, with no running statistics)."""
        bn = getattr(self.model, "bn_params", None)
        found = list(enumerate(bn)) if isinstance(bn, list) else []
        named = [(f"bn_params[{i}]", p) for i, p in found]
        if isinstance(bn, dict):
            named = [("bn_params", bn)]
        return [
            (name, p)
            for name, p in named
            if isinstance(p, dict) and ("mode" in p or "running_mean" in p)
        ]

    def norm_layers(self) -> list[NormLayer]:
        # CS231n's batchnorm_forward: running = momentum * running + (1 - momentum) * batch
        return [
            NormLayer(
                name,
                1.0 - float(p.get("momentum", 0.9)),
                setting=f"bn_param['momentum'] = {p.get('momentum', 0.9)}",
            )
            for name, p in self._norms()
        ]

    def running_statistics(self) -> dict[str, tuple[Any, Any]] | None:
        self.require_isolated("running_statistics")

        def copied(value: Any) -> Any:
            return None if value is None else np.array(value, dtype=np.float64)

        return {
            name: (copied(p.get("running_mean")), copied(p.get("running_var")))
            for name, p in self._norms()
        }

    def warm(self, batches: Sequence[Batch]) -> None:
        """The CS231n layers blend with a fixed momentum: it is set to ``1 - 1/k`` for the
        k-th forward (the first one takes the batch's statistics, whatever they held), a
        cumulative average."""
        self.require_isolated("warm")
        layers = [p for _, p in self._norms()]
        momenta = [p.get("momentum") for p in layers]
        try:  # the first forward's momentum of 0 drops what the statistics held
            for k, batch in enumerate(batches, start=1):
                for p in layers:
                    p["momentum"] = 1.0 - 1.0 / k
                self._loss(batch.X, batch.y, reseed=True)
        finally:
            for p, momentum in zip(layers, momenta):
                if momentum is None:
                    p.pop("momentum", None)
                else:
                    p["momentum"] = momentum

    def ownership(self) -> Ownership | None:
        self.require_isolated("ownership")
        return None  # the update rule is applied to every entry of model.params

    def _normalizes(self) -> bool:
        """Batch or layer normalization between the layers (the assignments'
        ``normalization`` setting, or batch-norm state kept on the model)."""
        setting = getattr(self.model, "normalization", None)
        return bool(self.batch_statistics_layers()) or setting in ("batchnorm", "layernorm")

    def weights(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, value in self.model.params.items():
            if value.ndim < 2:
                continue
            # CS231n layouts: affine (fan_in, units), convolution (F, C, HH, WW)
            matrix = value.T.view() if value.ndim == 2 else value.reshape(len(value), -1).view()
            matrix.flags.writeable = False
            found[name] = matrix
        return found


def _rule_config(optimizer: Any) -> tuple[Any, dict[str, Any]] | None:
    """``(rule, optim_config)`` of an optimizer given as the CS231n Solver takes them (an
    update rule and its settings dict, e.g. a ``learning_rate``), else None."""
    if (
        isinstance(optimizer, tuple)
        and len(optimizer) == 2
        and callable(optimizer[0])
        and isinstance(optimizer[1], dict)
    ):
        rate = optimizer[1].get("learning_rate", 1.0)
        if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
            return optimizer[0], dict(optimizer[1])
    return None


class _PinnedMode(dict):
    """A copy of ``dropout_param`` whose ``mode`` stays put: assignment-style losses set
    ``mode = 'train'`` on every call with labels."""

    def __init__(self, original: dict[str, Any], mode: str) -> None:
        super().__init__(original)
        super().__setitem__("mode", mode)

    def __setitem__(self, key: str, value: Any) -> None:
        if key != "mode":
            super().__setitem__(key, value)


def _kind(name: str, values: np.ndarray) -> str:
    lowered = name.lower()
    for kind in _KINDS:
        if kind in lowered:
            return kind
    if values.size and values.min() >= 0 and (values == 0).any():
        return "relu"
    return "other"


def _restore_in_place(model: Any, attribute: str, saved: Any) -> None:
    """Put saved values back into the user's own dicts/lists, keeping their identity."""
    current = getattr(model, attribute)
    if isinstance(current, dict) and isinstance(saved, dict):
        current.clear()
        current.update(saved)
    elif isinstance(current, list) and isinstance(saved, list) and len(current) == len(saved):
        for now, was in zip(current, saved):
            if isinstance(now, dict) and isinstance(was, dict):
                now.clear()
                now.update(was)
    else:
        setattr(model, attribute, saved)


class _Objective:
    """The loss on one batch as a float64 function of ``model.params`` (private copies)."""

    note = ""
    resolution = 2.0**-52  # float64 throughout

    def __init__(self, session: NumpySession, X: np.ndarray, y: np.ndarray) -> None:
        self.session = session
        self.params = session.model.params
        self.names = list(self.params)
        self.shapes = {n: tuple(v.shape) for n, v in self.params.items()}
        self.base = {n: v.copy() for n, v in self.params.items()}
        self.X, self.y = X, y
        self._here: list[np.ndarray] | None = None  # winners at the point, once asked for

    def values(self) -> dict[str, Any]:
        return dict(self.base)

    def move(self, shifts: Mapping[str, Any]) -> None:
        self._here = None
        for name, shift in shifts.items():
            self.base[name] += shift
            np.copyto(self.params[name], self.base[name])

    def value_and_grad(self) -> tuple[float, dict[str, Any]]:
        loss, grads = self.session._loss(self.X, self.y, grads=True, reseed=True)
        return loss, {
            n: None if grads.get(n) is None else np.asarray(grads[n], np.float64)
            for n in self.names
        }

    def sides(self, shifts: Mapping[str, Any], h: float) -> Sides:
        """Winners are the zero pattern of ``model.activations(X)`` (a ReLU's off units):
        the protocol exposes no other non-smooth operation, and without the method the
        crossings are unknown."""
        up, at_up = self.value(shifts, h), self._zeros(shifts, h)
        down, at_down = self.value(shifts, -h), self._zeros(shifts, -h)
        if self._here is None:  # the point's own, once per point
            self._here = self._zeros({}, 0.0)
        here = self._here
        if at_up is None or at_down is None or here is None:
            return Sides(up, down, None)
        return Sides(
            up, down, _changed(at_up, at_down), _changed(here, at_up), _changed(here, at_down)
        )

    def _zeros(self, shifts: Mapping[str, Any], scale: float) -> list[np.ndarray] | None:
        activations = getattr(self.session.model, "activations", None)
        if not callable(activations):
            return None
        with self._shifted(shifts, scale), self.session.calling("model", "model.activations(X)"):
            found = activations(self.X)
        return [np.asarray(a) == 0 for a in found.values()]

    @contextmanager
    def _shifted(self, shifts: Mapping[str, Any], scale: float) -> Iterator[None]:
        for name, shift in shifts.items():
            np.multiply(shift, scale, out=self.params[name])
            self.params[name] += self.base[name]
        try:
            yield
        finally:
            for name in shifts:
                np.copyto(self.params[name], self.base[name])

    def value(self, shifts: Mapping[str, Any], scale: float = 1.0) -> float:
        with self._shifted(shifts, scale):
            return self.session._loss(self.X, self.y, reseed=True)[0]


def _changed(first: list[np.ndarray], second: list[np.ndarray]) -> int:
    return sum(int((a != b).sum()) for a, b in zip(first, second))


class _Trainer:
    """Steps ``model.params`` (private copies) with a CS231n-style update rule."""

    def __init__(
        self, session: NumpySession, batch: Batch, lr: float | None, default_lr: float
    ) -> None:
        self.session = session
        self.batch = batch
        self.params = session.model.params
        rule, settings = _rule_config(session.subject.optimizer) or (
            session.subject.optimizer,
            {},
        )
        self.rule = rule or _adam
        if lr is None:  # the subject's optim_config rate, else the check's default
            lr = float(settings.get("learning_rate", default_lr))
        self._lr = float(lr)
        self.configs: dict[str, dict[str, Any]] = {
            n: {**copy.deepcopy(settings), "learning_rate": lr} for n in self.params
        }
        name = getattr(self.rule, "__name__", type(self.rule).__name__)
        self.optimizer = (
            f"adam(learning_rate={lr:g}) (nndiag's default)"
            if self.rule is _adam
            else f"{name}(learning_rate={lr:g})"
        )
        self.start = {n: v.copy() for n, v in self.params.items()}

    def step(self, *, measure: bool = False, batch: Batch | None = None) -> Step:
        batch = self.batch if batch is None else batch
        X, y = batch.X, batch.y
        before = {n: v.copy() for n, v in self.params.items()} if measure else {}
        accuracy = None
        if self.session.task.kind == "classification":
            accuracy = float((self.session._scores(X).argmax(axis=1) == y).mean())
        loss, grads = self.session._loss(X, y, grads=True)
        if math.isfinite(loss):
            for name in self.params:
                grad = grads.get(name)
                if grad is None:
                    continue
                with self.session.calling("optimizer", "optimizer(w, dw, config)"):
                    updated, self.configs[name] = self.rule(
                        self.params[name], grad, self.configs[name]
                    )
                np.copyto(self.params[name], updated)
        if not measure:
            return Step(loss, accuracy)
        updates = {n: float(np.linalg.norm(v - before[n])) for n, v in self.params.items()}
        norms = {  # None: loss() returned no gradient for the parameter
            n: None if grads.get(n) is None else float(np.linalg.norm(np.asarray(grads[n])))
            for n in self.params
        }
        return Step(
            loss,
            accuracy,
            updates,
            {n: float(np.linalg.norm(w)) for n, w in before.items()},
            norms,
        )

    def evaluate(self, batch: Batch) -> Evaluation:
        # The trained arrays are the private copies in model.params.
        return self.session.evaluate(batch, mode="eval", outputs=True)

    def unchanged(self) -> list[str]:
        return [n for n, v in self.params.items() if np.array_equal(v, self.start[n])]

    def frozen_changed(self) -> list[str]:
        return []  # every entry of model.params is trained

    @property
    def lr(self) -> float | None:
        return self._lr

    def capture(self, batch: Batch, *, bins: int) -> list[LayerRecord]:
        return self.session._activations_of(batch.X, bins)  # params hold the trained copies
