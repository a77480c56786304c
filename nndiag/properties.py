"""Assertions about a torch model on any batch, for your own Hypothesis tests (nndiag's
own ``batch_independence`` and ``numerics`` checks run on every backend through
``diagnose()``; these helpers let a ``@given`` test probe batches it generates).

Every helper leaves the model exactly as it found it: the mode of each submodule, buffers
(BatchNorm running statistics), ``.grad`` of parameters and the global RNGs. Each raises
``AssertionError`` with a summary (never a tensor dump) and the next step.

Example::

    from hypothesis import given, settings
    from nndiag import strategies as nst
    from nndiag.properties import assert_batch_independent, assert_finite_outputs

    @settings(max_examples=25, deadline=None)
    @given(X=nst.batches(subject, max_size=16))
    def test_rows_are_independent(X):
        assert_finite_outputs(model, X)
        assert_batch_independent(model, X)

Importing this module imports no framework; torch and hypothesis load when called.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import torch

    from nndiag.checks.batch_independence import Leak
    from nndiag.config import Config
    from nndiag.results import CheckResult

__all__ = [
    "assert_batch_independent",
    "assert_finite_outputs",
    "assert_gradients_match",
    "assert_initial_loss_near_expected",
]


# A row's gradient counts as leaking into another row above this fraction of its own:
# an independent model gives exact zeros, so any float noise is far below it.
_LEAK_TOLERANCE = 1e-6
# Perturbation fallback (non-float inputs): output change allowed, relative to its size.
_PERTURB_RTOL = 1e-5
# Output rows probed per batch: first, middle, last (a batch-mixing bug shows in all).
_PROBED_ROWS = 3

_ADVICE_LEAK = (
    "A model must treat each sample on its own: look for a reduction or normalization over "
    "dim 0 (x.mean(0), x.std(0), softmax(dim=0), a sum over the batch), a view/reshape/"
    "transpose that moves data across the batch dimension, or a normalization layer that "
    "uses batch statistics in eval mode (track_running_stats=False)."
)
_ADVICE_FINITE = (
    "Guard the operation that overflows or divides: add an epsilon to log, sqrt and "
    "divisions, clamp what goes into exp, and use log_softmax / logsumexp rather than exp "
    "followed by log."
)


# -- model plumbing ----------------------------------------------------------------------------
class _Counter:
    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0


def _require_module(model: Any) -> None:
    from torch import nn

    if not isinstance(model, nn.Module):
        from nndiag.errors import describe

        raise TypeError(f"expected a torch.nn.Module, got {describe(model)}")


@contextmanager
def _inference(model: Any) -> Iterator[None]:
    """Eval mode and private RNG for the block; every module's mode and every buffer are put
    back exactly afterwards."""
    import torch

    _require_module(model)
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            model.eval()
            yield
    finally:
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for buffer, values in buffers:
                if not torch.equal(buffer, values):
                    buffer.copy_(values)


def _tensors(out: Any) -> list[torch.Tensor]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    return []


def _per_row(out: Any, n: int) -> list[torch.Tensor]:
    found = [
        t
        for t in _tensors(out)
        if t.ndim >= 1 and t.shape[0] == n and (t.is_floating_point() or t.is_complex())
    ]
    if not found:
        raise TypeError(
            f"the model's output has no floating-point tensor with one row per "
            f"input row ({n}); return per-sample outputs"
        )
    return found


def _batch_norms(model: Any) -> list[str]:
    from torch import nn

    return [
        name or type(m).__name__
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._NormBase)
    ]


def _bn_note(model: Any) -> str:
    if not _batch_norms(model):
        return ""
    return (
        ", where BatchNorm uses its running statistics (in training mode it mixes the "
        "rows of a batch by design)"
    )


def _probed_rows(n: int) -> list[int]:
    return sorted({0, n // 2, n - 1})[:_PROBED_ROWS]


# -- batch independence ------------------------------------------------------------------------
def _find_leak(model: Any, X: torch.Tensor, counter: _Counter) -> Leak | None:
    """The first output row that depends on another input row, or None. Runs in the
    caller's mode (see :func:`_inference`)."""
    import torch

    n = int(X.shape[0])
    if n < 2:
        return None
    if X.is_floating_point():
        Xc = X.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            counter.forward += 1
            outputs = [t for t in _per_row(model(Xc), n) if t.requires_grad]
        if outputs:
            return _leak_by_gradient(Xc, outputs, n, counter)
    return _leak_by_perturbation(model, X, n, counter)


def _leak_by_gradient(
    Xc: torch.Tensor, outputs: list[torch.Tensor], n: int, counter: _Counter
) -> Leak | None:
    import torch

    from nndiag.checks.batch_independence import Leak

    g = torch.Generator().manual_seed(0)  # projection weights: never the caller's RNG
    weights = [
        torch.randn(t.shape[1:], generator=g, dtype=torch.float64).to(t.device, t.dtype)
        for t in outputs
    ]
    for i in _probed_rows(n):
        # outputs is non-empty, so the sum is a tensor, never the start value 0
        target = cast("torch.Tensor", sum((t[i] * w).real.sum() for t, w in zip(outputs, weights)))
        counter.backward += 1
        (grad,) = torch.autograd.grad(target, Xc, retain_graph=True, allow_unused=True)
        if grad is None:
            continue
        per_row = grad.detach().abs().reshape(n, -1).amax(1).double().cpu()
        own = float(per_row[i])
        per_row[i] = 0.0
        j = int(per_row.argmax())
        leak = float(per_row[j])
        if leak > 0 and leak > _LEAK_TOLERANCE * own:
            return Leak(i, j, leak, own, "gradient")
    return None


def _leak_by_perturbation(model: Any, X: torch.Tensor, n: int, counter: _Counter) -> Leak | None:
    import torch

    from nndiag.checks.batch_independence import Leak

    with torch.no_grad():
        counter.forward += 1
        base = [t.detach() for t in _per_row(model(X), n)]
        for i in _probed_rows(n):
            changed = X.clone()
            changed[torch.arange(n) != i] = X[i]  # every other row becomes a copy of row i
            differs = [j for j in range(n) if j != i and not torch.equal(changed[j], X[j])]
            if not differs:
                continue
            counter.forward += 1
            after = _per_row(model(changed), n)
            for before, now in zip(base, after):
                diff = float((now[i] - before[i]).abs().max())
                size = float(before[i].abs().max())
                if diff > _PERTURB_RTOL * max(size, 1e-12):
                    return Leak(i, differs[0], diff, size, "perturbation")
    return None


def assert_batch_independent(model: Any, X: Any) -> None:
    """Assert that output row ``i`` never depends on input row ``j != i``.

    For float inputs, a random projection of output rows 0, n//2 and n-1 is
    back-propagated to the inputs: any gradient on another row is a dependence (exact zeros
    are expected; the tolerance is 1e-6 of the row's own gradient). For other inputs
    (token ids) the other rows are replaced and the output row compared. The model runs in
    eval mode, where BatchNorm uses its running statistics.

    Args:
        model: A ``torch.nn.Module``; left exactly as it was.
        X: A batch (tensor or array); 2+ rows are needed to find a dependence.

    Raises:
        AssertionError: an output row depends on another input row.
        TypeError: the model is not a torch module or gives no per-row output.
    """
    import torch

    X = torch.as_tensor(X)
    with _inference(model):
        leak = _find_leak(model, X, _Counter())
    if leak is not None:
        raise AssertionError(
            f"{leak.sentence()} Batch of {len(X)} rows, "
            f"checked in eval mode{_bn_note(model)}. {_ADVICE_LEAK}"
        )


# -- finite outputs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _NonFinite:
    bad: int
    total: int
    nan: int
    rows: tuple[int, ...]
    first_module: str | None

    def sentence(self) -> str:
        rows = ", ".join(map(str, self.rows[:5])) + (", ..." if len(self.rows) > 5 else "")
        where = (
            f"; the first module whose output is not finite is {self.first_module!r}"
            if self.first_module
            else ""
        )
        return (
            f"{self.bad} of {self.total} output values are not finite ({self.nan} NaN, "
            f"{self.bad - self.nan} infinite), in row(s) {rows}{where}."
        )


def _find_nonfinite(model: Any, X: torch.Tensor, counter: _Counter) -> _NonFinite | None:
    import torch

    names = {m: name for name, m in model.named_modules() if m is not model}
    first: list[str] = []

    def watch(module: Any, args: Any, output: Any) -> None:
        if first:
            return
        for t in _tensors(output):
            if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
                first.append(names[module])
                return

    handles = [m.register_forward_hook(watch) for m in names]
    try:
        with torch.no_grad():
            counter.forward += 1
            outputs = _per_row(model(X), int(X.shape[0]))
    finally:
        for handle in handles:
            handle.remove()
    bad = nan = total = 0
    rows: set[int] = set()
    for t in outputs:
        finite = torch.isfinite(t)
        total += t.numel()
        if bool(finite.all()):
            continue
        bad += int((~finite).sum())
        nan += int(torch.isnan(t).sum())
        rows.update(int(r) for r in (~finite).reshape(len(t), -1).any(1).nonzero().flatten())
    if not bad:
        return None
    return _NonFinite(bad, total, nan, tuple(sorted(rows)), first[0] if first else None)


def assert_finite_outputs(model: Any, X: Any) -> None:
    """Assert that every output value of ``model(X)`` is finite (no NaN, no inf).

    Runs in eval mode, without gradients. A forward hook on each submodule names the first
    module whose output is not finite.

    Args:
        model: A ``torch.nn.Module``; left exactly as it was.
        X: A batch (tensor or array).

    Raises:
        AssertionError: some output value is NaN or infinite.
        TypeError: the model is not a torch module or gives no per-row output.
    """
    import torch

    X = torch.as_tensor(X)
    with _inference(model):
        found = _find_nonfinite(model, X, _Counter())
    if found is not None:
        raise AssertionError(
            f"{found.sentence()} Batch of {len(X)} rows, checked in eval mode. {_ADVICE_FINITE}"
        )


# -- helpers over nndiag's checks -------------------------------------------------------------
def _run_check(check: str, model: Any, X: Any, y: Any, loss: Any, config: Config) -> CheckResult:
    from nndiag.core import diagnose
    from nndiag.subject import Subject

    subject = Subject(model, (X, y), loss=loss, name=type(model).__name__)
    return diagnose(subject, [check], config)[check]


def _raise_unless_ok(result: CheckResult) -> None:
    if result.status == "fail":
        raise AssertionError(result.summary())
    if result.status == "error":
        text = f"{result.check} could not run: {result.message}"
        raise AssertionError(f"{text}\nHint: {result.hint}" if result.hint else text)


def assert_gradients_match(model: Any, X: Any, y: Any, loss: Any = None, *, seed: int = 0) -> None:
    """Assert that the model's analytic gradients match centered differences (float64).

    Runs nndiag's ``gradient_check`` on every row of ``X``; a ``warn`` (an error small
    enough to be a kink of ReLU or max-pool) passes.

    Args:
        model: A ``torch.nn.Module``; checked on a float64 copy of its parameters.
        X: Inputs.
        y: Targets (class ids or float targets).
        loss: ``loss(output, y) -> scalar``. Default: cross-entropy for class ids, mean
            squared error for float targets.
        seed: Seed of the random directions (default 0).

    Raises:
        AssertionError: a gradient is wrong, or the check could not run (the model or the
            loss raised).
        InvalidSubject: ``X``/``y``/``loss`` cannot be used (e.g. labels out of range).
    """
    from nndiag.config import Config

    config = Config(seed=seed, gradient_batch=max(len(X), 1))
    _raise_unless_ok(_run_check("gradient_check", model, X, y, loss, config))


def assert_initial_loss_near_expected(
    model: Any, X: Any, y: Any, loss: Any = None, *, tolerance: float | None = None
) -> None:
    """Assert that the untrained model's loss is near what an uninformative model scores
    (about ln C for C classes; CS231n, lecture 5).

    Runs nndiag's ``initial_loss`` check; a ``warn`` passes. The allowance grows with the
    noise of small batches, but a batch of a few rows is noisy: draw 16 or more.

    Args:
        model: A ``torch.nn.Module``; left exactly as it was.
        X: Inputs.
        y: Targets.
        loss: As in :func:`assert_gradients_match`.
        tolerance: Relative deviation that fails. Default: ``Config.initial_loss_fail``.

    Raises:
        AssertionError: the loss is too far from the expected value, or is not finite.
        InvalidSubject: ``X``/``y``/``loss`` cannot be used.
    """
    from nndiag.config import Config

    config = Config()
    if tolerance is not None:
        config = config.replace(
            initial_loss_fail=float(tolerance),
            initial_loss_warn=min(config.initial_loss_warn, float(tolerance)),
        )
    _raise_unless_ok(_run_check("initial_loss", model, X, y, loss, config))
