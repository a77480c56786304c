"""``Subject``: the validated bundle of a model and what nndiag needs to diagnose it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, overload

from nndiag.errors import InvalidSubject, describe

if TYPE_CHECKING:
    from nndiag.backends import Batch

__all__ = ["MAX_BATCHES", "MAX_ROWS", "Subject", "SubjectFactory", "subject"]

# Batches a Subject reads from an iterable ``data``; checks use at most Config.max_batches.
MAX_BATCHES = 8
# Rows a Subject keeps of each batch (views of the user's arrays, not copies): every check
# reads at most Config.max_samples (512) of them, so a 200,000-row array costs nothing.
MAX_ROWS = 4096


class Subject:
    """A model with one or more batches of data, and optionally its loss, optimizer and
    regularization knob. Validated once, here; the model itself is never modified.

    Args:
        model: A ``torch.nn.Module``; a CS231n-style object with ``params`` and
            ``loss(X, y)``; or a JAX ``(apply_fn, params)`` pair.
        data: One batch ``(X, y)`` or an iterable of such batches (a DataLoader works);
            the first batches are read once and kept.
        loss: ``loss(output, y) -> scalar``. Default: cross-entropy for integer labels,
            mean squared error for float targets.
        optimizer: ``optimizer(params) -> Optimizer`` used by ``overfit_small`` and
            ``learning_rate``, or an optimizer instance whose class and settings are
            copied (never stepped); for numpy models a CS231n update rule, or
            ``(rule, optim_config)`` with its ``learning_rate``; for JAX an optax
            optimizer. Default: Adam at ``Config.overfit_lr``.
        regularization: ``regularization(model, strength)`` that sets the strength the loss
            uses, or the name of a numeric model attribute holding it; for JAX also
            ``penalty(params) -> scalar``, added as ``strength * penalty``.
        name: Shown in reports and test ids. Default: the model's class name.
        causal: Whether the output at sequence position t may depend only on inputs at
            positions <= t (an autoregressive model), for the ``causality`` check.
            Default: read from the data (targets are the inputs shifted by one) or the
            model (a model that generates text and has no encoder); ``False`` turns the
            check off.
        stochastic_eval: The model samples in evaluation mode by design (a VAE's
            reparameterization, a stochastic policy): ``numerics`` then reports two
            differing eval passes as information, not a fail. Default: False.

    Raises:
        InvalidSubject: an argument is unusable; the message names it and the fix.
        BackendUnavailable: the model's framework is not installed.
    """

    def __init__(
        self,
        model: Any,
        data: Any,
        loss: Callable[[Any, Any], Any] | None = None,
        optimizer: Any = None,
        regularization: Callable[[Any, float], None] | str | None = None,
        name: str | None = None,
        causal: bool | None = None,
        stochastic_eval: bool = False,
    ) -> None:
        from nndiag.backends import backend_for
        from nndiag.backends.base import check_consistent

        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise InvalidSubject(
                "name",
                f"expected a non-empty str, got {describe(name)}",
                "pass name='my_model' or leave it out",
            )
        if loss is not None and not callable(loss):
            raise InvalidSubject(
                "loss",
                f"expected a callable, got {describe(loss)}",
                "pass loss=torch.nn.CrossEntropyLoss() or a function (output, y) -> scalar",
            )
        if regularization is not None and not (
            callable(regularization) or isinstance(regularization, str)
        ):
            raise InvalidSubject(
                "regularization",
                f"expected a callable or str, got {describe(regularization)}",
                "pass the name of the model attribute holding the strength, or a function "
                "(model, strength) -> None that sets it",
            )
        if causal is not None and not isinstance(causal, bool):
            raise InvalidSubject(
                "causal",
                f"expected True, False or None, got {describe(causal)}",
                "pass causal=True for a model that must not see later positions",
            )
        if not isinstance(stochastic_eval, bool):
            raise InvalidSubject(
                "stochastic_eval",
                f"expected True or False, got {describe(stochastic_eval)}",
                "pass stochastic_eval=True for a model that samples in eval mode by design",
            )
        self.causal = causal
        self.stochastic_eval = stochastic_eval
        self.backend = backend_for(model)
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.regularization = regularization
        default = getattr(self.backend, "default_name", lambda m: type(m).__name__)
        self.name = name if name is not None else default(model)
        self.backend.validate_model(model, optimizer=optimizer, regularization=regularization)
        self.batches: list[Batch] = self.backend.read_batches(model, data, MAX_BATCHES)
        check_consistent(self.batches)

    @property
    def num_samples(self) -> int:
        return sum(len(b.y) for b in self.batches)

    def __repr__(self) -> str:
        return (
            f"Subject(name={self.name!r}, model={type(self.model).__name__}, "
            f"batches={len(self.batches)}, samples={self.num_samples})"
        )


class SubjectFactory:
    """A function returning a :class:`Subject`, marked for ``pytest --nndiag``.

    Calling it calls the function. ``checks`` and ``options`` (``Config`` fields) apply to
    this subject only.
    """

    def __init__(
        self,
        func: Callable[[], Subject],
        name: str | None,
        checks: tuple[str, ...] | None,
        options: Mapping[str, Any],
    ) -> None:
        functools.update_wrapper(self, func)
        self.func = func
        self.name = name or func.__name__
        self.checks = checks
        self.options = dict(options)

    def __call__(self) -> Subject:
        made = self.func()
        if not isinstance(made, Subject):
            raise InvalidSubject(
                self.name,
                f"the factory returned {describe(made)}",
                "return nndiag.Subject(model, data, ...) from the decorated function",
            )
        return made

    def __repr__(self) -> str:
        return f"<nndiag subject factory {self.name!r}>"


@overload
def subject(func: Callable[[], Subject], /) -> SubjectFactory: ...
@overload
def subject(
    *, name: str | None = None, checks: Any = None, **options: Any
) -> Callable[[Callable[[], Subject]], SubjectFactory]: ...


def subject(
    func: Callable[[], Subject] | None = None,
    /,
    *,
    name: str | None = None,
    checks: Any = None,
    **options: Any,
) -> Any:
    """Mark a function that builds a :class:`Subject`, for ``pytest --nndiag``.

    Use bare (``@nndiag.subject``) or with arguments
    (``@nndiag.subject(name="mlp", checks=["dead_neurons"], dead_warn=0.3)``).
    """
    if isinstance(checks, str):
        checks = tuple(c.strip() for c in checks.split(",") if c.strip())
    elif checks is not None:
        checks = tuple(checks)
    if options:
        from nndiag.config import Config

        Config.from_mapping(options)  # unknown keys fail here, at decoration time

    def wrap(f: Callable[[], Subject]) -> SubjectFactory:
        if not callable(f):
            raise TypeError(f"@nndiag.subject decorates a function, got {describe(f)}")
        return SubjectFactory(f, name, checks, options)

    return wrap(func) if func is not None else wrap
