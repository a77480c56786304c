"""One trial: build the factory's subject, train it for a stage's steps through the backend
seam, abort it when its loss explodes, and measure it on validation data.

Training goes through a Session (``trainer`` on nndiag's private copies, ``evaluate``
of the trained weights), so the same loop serves torch, numpy and JAX subjects. Imports no
optimizer library: the pruner is asked through ``should_prune``.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nndiag.contract import IGNORED_TARGET
from nndiag.errors import InvalidSubject, ModelError, describe

if TYPE_CHECKING:
    from nndiag.contract import Batch, Session, Trainer
    from nndiag.subject import Subject

__all__ = ["EXPLODE", "LEARNING_RATE_NAMES", "Outcome", "Pruned", "run_trial"]

# The lecture's early abort: "if the cost is ever > 3 * original cost, break out early".
EXPLODE = 3.0
# A sampled param of one of these names is the trainer's learning rate (numpy and JAX
# update rules take it from nndiag; a torch optimizer has it replaced by the same value).
LEARNING_RATE_NAMES = ("lr", "learning_rate")
# Validation rows held out of a single stored batch when no validation data is given.
HOLDOUT = 0.2
# Validation batches read from a given iterable (each up to the subject's rows per batch).
VALIDATION_BATCHES = 256
# At most this many training losses are kept per trial (every k-th step beyond that).
MAX_CURVE = 200


class Pruned(Exception):
    """Raised by ``should_prune``'s caller to stop a trial; carries the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Outcome:
    """How one trial ended (``state`` as in :class:`~nndiag.tuning.TrialRecord`)."""

    state: str
    value: float | None = None
    reason: str = ""
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    loss_every: int = 1
    checkpoints: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    passes: tuple[int, int] = (0, 0)  # forward and backward passes of the model
    metric: str = ""
    validation: str = ""


def run_trial(
    factory: Callable[[dict[str, Any]], Subject],
    params: Mapping[str, Any],
    *,
    steps: int,
    validation: Any,
    evals: int,
    seed: int,
    should_prune: Callable[[int, float], str | None],
    explode: float = EXPLODE,
) -> Outcome:
    """Train one trial and measure it.

    Args:
        factory: ``factory(params) -> nndiag.Subject`` with a fresh model.
        params: The sampled values; one named as the subject's regularization knob sets it.
        steps: Optimizer steps, cycling over the training batches.
        validation: ``(X_val, y_val)`` (or batches) in the model's array type, or None to
            hold out data of the subject's own (said in ``Outcome.validation``).
        evals: Validation measurements during training (the pruner's checkpoints); the
            last is at the final step.
        seed: The trial's seed (nndiag's generators inside the session).
        should_prune: Called with ``(step, value)`` at each checkpoint; returns the reason
            to stop the trial, or None.
        explode: The loss-to-start ratio that aborts a trial.

    Returns:
        The outcome. The factory or the model raising gives a ``fail`` outcome with the
        message; KeyboardInterrupt propagates.
    """
    start = time.perf_counter()
    outcome = Outcome("fail")
    try:
        run = (steps, validation, evals, seed, should_prune, explode)
        _train(factory, dict(params), *run, outcome)
    except Pruned as exc:
        outcome.state, outcome.reason = "pruned", exc.reason
    except ModelError as exc:
        outcome.state = "fail"
        outcome.reason = f"{exc.call} raised {type(exc.original).__name__}: {exc.original}"
    except InvalidSubject as exc:
        outcome.state, outcome.reason = "fail", f"{exc.argument}: {exc.problem}"
    except Exception as exc:  # the factory's own code: the search goes on
        outcome.state, outcome.reason = "fail", f"factory raised {type(exc).__name__}: {exc}"
    outcome.seconds = round(time.perf_counter() - start, 4)
    return outcome


def _train(
    factory: Callable[[dict[str, Any]], Subject],
    params: dict[str, Any],
    steps: int,
    validation: Any,
    evals: int,
    seed: int,
    should_prune: Callable[[int, float], str | None],
    explode: float,
    outcome: Outcome,
) -> None:
    from nndiag.config import Config
    from nndiag.subject import MAX_BATCHES, Subject

    with seeded_globals(seed):  # the model's init: the same in any worker, in any order
        subject = factory(params)
    if not isinstance(subject, Subject):
        raise InvalidSubject(
            "factory", f"returned {describe(subject)}", "return nndiag.Subject(model, data, ...)"
        )
    session = subject.backend.session(subject, Config(seed=seed, max_batches=MAX_BATCHES))
    try:
        _fit(session, subject, params, steps, validation, evals, should_prune, explode, outcome)
    finally:
        outcome.passes = session.passes()


def _fit(
    session: Session,
    subject: Subject,
    params: dict[str, Any],
    steps: int,
    validation: Any,
    evals: int,
    should_prune: Callable[[int, float], str | None],
    explode: float,
    outcome: Outcome,
) -> None:
    classify = session.task.kind == "classification"
    outcome.metric = "validation accuracy" if classify else "validation loss"
    with session.isolated("search"):
        train, held, outcome.validation = _split(session, subject, validation)
        knob = _knob_name(subject)
        if knob is not None and knob in params:
            session.set_regularization(float(params[knob]))
        lr = next((float(params[n]) for n in LEARNING_RATE_NAMES if n in params), None)
        every = max(1, math.ceil(steps / MAX_CURVE))
        outcome.loss_every = every
        marks = {max(1, round(steps * (i + 1) / evals)) for i in range(max(1, evals))}
        with session.trainer(train[0], lr=lr) as trainer:
            if lr is not None and trainer.lr is None:  # every trial would train alike
                raise InvalidSubject(
                    "optimizer",
                    f"the search sets lr={lr:g}, but this optimizer's rate can be neither "
                    "read nor set",
                    "build the optax optimizer with optax.inject_hyperparams, or leave lr "
                    "out of the space",
                )
            first = None
            for step in range(steps):
                loss = trainer.step(batch=train[step % len(train)]).loss
                outcome.steps = step + 1
                if step % every == 0:
                    outcome.losses.append(loss)
                if first is None:
                    first = loss
                if not math.isfinite(loss):
                    raise Pruned(f"loss {loss} at step {step}")
                if first > 0 and loss > explode * first:
                    raise Pruned(f"loss {loss / first:.1f}× its start at step {step}")
                if step + 1 in marks:
                    value = _measure(session, trainer, held, classify)
                    outcome.value = value
                    outcome.checkpoints.append((step + 1, value))
                    if step + 1 < steps and (reason := should_prune(step + 1, value)):
                        raise Pruned(reason)
    outcome.state = "complete"


def _knob_name(subject: Subject) -> str | None:
    """The space name that sets the regularization: the attribute's name, or the setter
    function's ``__name__``."""
    knob = subject.regularization
    if isinstance(knob, str):
        return knob
    return getattr(knob, "__name__", None) if knob is not None else None


def _split(
    session: Session, subject: Subject, validation: Any
) -> tuple[list[Batch], list[Batch], str]:
    """Training batches, validation batches and a sentence saying where the latter came
    from."""
    stored: list[Batch] = list(getattr(session, "batches", subject.batches))
    if validation is not None:
        from nndiag.backends.base import check_consistent

        held = subject.backend.read_batches(subject.model, validation, VALIDATION_BATCHES)
        try:  # validated like the subject's data: the trained model must accept it
            check_consistent([stored[0], *held])
        except InvalidSubject as exc:  # "data (batch k)": k counts the training batch
            index = int("".join(c for c in exc.argument if c.isdigit()) or 1) - 1
            problem = exc.problem.replace("batch 0's", "the training data's")
            raise InvalidSubject(f"validation (batch {index})", problem, exc.fix) from None
        count = sum(len(b) for b in held)
        first = f"the first {len(held)} batches of " if len(held) == VALIDATION_BATCHES else ""
        return stored, held, f"{first}the given validation data ({count} samples)"
    if len(stored) > 1:
        return (
            stored[:-1],
            stored[-1:],
            f"the last of the subject's {len(stored)} batches ({len(stored[-1])} samples), "
            "held out of training",
        )
    n = len(stored[0])
    k = max(1, round(HOLDOUT * n))
    if n - k < 1:
        raise InvalidSubject(
            "data", "one sample cannot be split for validation", "pass validation=(X_val, y_val)"
        )
    return (
        [session.take(stored[0], range(n - k))],
        [session.take(stored[0], range(n - k, n))],
        f"the last {k} of the subject's {n} samples ({HOLDOUT:.0%}), held out of training",
    )


def _measure(session: Session, trainer: Trainer, held: list[Batch], classify: bool) -> float:
    """Validation accuracy (classification) or mean loss (regression) of the trained
    weights, over every validation batch."""
    import numpy as np

    hits = total = 0
    weighted = 0.0
    for batch in held:
        evaluation = trainer.evaluate(batch)
        weighted += float(evaluation.loss) * len(batch)
        if classify:
            _, y = session.arrays(batch)
            kept = y != IGNORED_TARGET
            predicted = np.asarray(evaluation.outputs).argmax(axis=1)
            hits += int((predicted == y)[kept].sum())
            total += int(kept.sum())
    if not classify:
        return weighted / sum(len(b) for b in held)
    return hits / total if total else float("nan")


@contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """Python's, numpy's and (when loaded) torch's global generators seeded with ``seed``
    for the block, and left as they were after it: a factory that draws its model's
    weights from them gets the same ones for the same trial in every process."""
    import numpy as np

    with ExitStack() as stack:
        state, legacy = random.getstate(), np.random.get_state()
        stack.callback(random.setstate, state)
        stack.callback(np.random.set_state, legacy)
        torch = sys.modules.get("torch")
        if torch is not None:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        yield
