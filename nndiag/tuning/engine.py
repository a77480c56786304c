"""``search``: the lecture's hyperparameter search, staged coarse to fine, on Optuna.

Each stage is one Optuna study, ``{study}.stage{k}``, in one storage. Whoever creates a
stage's study (creation is atomic in the database) stores its space and why, and queues
the stage's trials as WAITING, with their params already drawn when the sampler is random
(so a search is the same whatever the number of workers). A worker claims a waiting trial,
runs it and tells its state; it never creates a trial, so N workers on one storage run
exactly the requested trials, each once. When a stage has no waiting or running trial
left, the next is narrowed around its best trials.

Interrupted trials are put back: Ctrl-C fails the running trial and queues a copy; a
worker that died is found by its heartbeat (any machine) or, on this machine, by its
process id, and its trial is queued again. Running the same command resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nndiag import _threads
from nndiag.errors import BackendUnavailable, InvalidSetting, InvalidSettingType, describe
from nndiag.tuning.result import SearchResult, StageRange, TrialRecord
from nndiag.tuning.space import (
    Choice,
    LogUniform,
    Param,
    distribution,
    from_description,
    narrow,
    validate_space,
)
from nndiag.tuning.trial import EXPLODE, Outcome, run_trial, seeded_globals

if TYPE_CHECKING:
    from nndiag.subject import Subject

__all__ = ["DEFAULT_STORAGE", "Progress", "search"]

DEFAULT_STORAGE = "reports/search.db"
SAMPLERS = ("random", "tpe")
PRUNERS = ("median", "halving", "none")
# Heartbeat of a running trial, and how long one may stay silent before another worker
# takes its trial over (Optuna's RDBStorage heartbeat; a trial is seconds to minutes).
HEARTBEAT, GRACE = 20, 60
# How often a worker with nothing to claim looks again while others finish a stage.
POLL = 0.2
# How long a worker waits for another to finish queueing a stage it created.
READY_WAIT = 120.0


@dataclass(frozen=True)
class Progress:
    """Where a search stands, after each trial this process finished."""

    done: int
    total: int
    stage: int
    best: float | None
    metric: str
    eta_seconds: float | None


def search(
    factory: Callable[[dict[str, Any]], Subject],
    space: Mapping[str, Param],
    *,
    trials: int | Sequence[int] = 20,
    stages: int = 2,
    steps: int | Sequence[int] = 100,
    validation: Any = None,
    storage: str | None = None,
    study: str | None = None,
    seed: int = 0,
    sampler: str = "random",
    pruner: str = "median",
    evals: int = 4,
    explode: float = EXPLODE,
    jobs: int = 1,
    progress: Callable[[Progress], None] | None = None,
) -> SearchResult:
    """Search hyperparameters in stages, coarse to fine, as the lecture does.

    Args:
        factory: ``factory(params) -> nndiag.Subject`` building a fresh model for the
            sampled ``params``; a param named like the subject's regularization knob (the
            attribute's name, or the setter function's name) sets it, and ``lr`` (or
            ``learning_rate``) is the trainer's learning rate.
        space: Name -> ``nndiag.LogUniform``, ``Uniform`` or ``Choice``.
        trials: Trials per stage (one number for every stage, or one per stage).
        stages: Stages; stage k+1 narrows each range around stage k's best trials.
        steps: Training steps per trial, per stage (few for the coarse stage).
        validation: ``(X_val, y_val)`` the metric is measured on, in the model's array
            type; None holds out the last stored batch (or the last 20% of a single batch).
        storage: An Optuna storage URL shared by every worker (``postgresql://...``); None
            is an SQLite file, ``reports/search.db``.
        study: The study name; None derives one from the factory and the settings, so the
            same call resumes.
        seed: Seeds the sampler and each trial's generators.
        sampler: ``"random"`` (the lecture's choice over a grid) or ``"tpe"``.
        pruner: Stops slow-but-finite trials at validation checkpoints: ``"median"``
            (below the median of earlier trials at that step), ``"halving"`` (successive
            halving) or ``"none"``. A trial whose loss exceeds ``explode`` times its start
            is stopped at once regardless.
        evals: Validation checkpoints per trial (the pruner's steps).
        explode: The loss-to-start ratio that aborts a trial (the lecture's 3).
        jobs: Worker processes on this machine (the factory must be importable).
        progress: Called after each trial this process finishes.

    Returns:
        A :class:`~nndiag.SearchResult`.

    Raises:
        InvalidSetting: an argument is unusable (named, with the fix).
        BackendUnavailable: Optuna is not installed (``pip install optuna==5.0.0``).
    """
    plan = _plan(factory, space, trials, stages, steps, storage, study, seed, sampler, pruner)
    if isinstance(explode, bool) or not isinstance(explode, (int, float)) or not explode > 1:
        raise InvalidSetting("explode", f"must be a number above 1, got {describe(explode)}")
    plan.update(evals=_positive("evals", evals), explode=float(explode), validation=validation)
    jobs = _positive("jobs", jobs)
    optuna = _optuna()
    store = _storage(optuna, plan["storage"])
    _stage(optuna, store, plan, 0)  # created (tables too) before any worker process starts
    children = []
    with _one_thread_per_job(jobs):
        if jobs > 1:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            for _ in range(jobs - 1):
                child = context.Process(target=_child, args=(plan,), daemon=False)
                child.start()
                children.append(child)
        try:
            _work(optuna, store, plan, progress, jobs)
        finally:
            for child in children:
                child.join()
    return collect(optuna, store, plan)


@contextlib.contextmanager
def _one_thread_per_job(jobs: int) -> Iterator[None]:
    """With several jobs on one machine, each (this process too) trains with one thread
    unless the user set ``OMP_NUM_THREADS``; this process's setting is restored after."""
    if jobs == 1:
        yield
        return
    before = _threads.one_thread_for_workers()
    torch = sys.modules.get("torch") if before else None
    threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        _threads.restore(before)
        if torch is not None and threads is not None:
            torch.set_num_threads(threads)


def _child(plan: dict[str, Any]) -> None:
    _threads.limit_loaded()
    optuna = _optuna()
    _work(optuna, _storage(optuna, plan["storage"]), plan, None, 1)


# --------------------------------------------------------------------------- settings


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSettingType(name, f"expected an int, got {describe(value)}")
    if value < 1:
        raise InvalidSetting(name, f"must be at least 1, got {value}")
    return value


def _per_stage(name: str, value: Any, stages: int) -> list[int]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = [_positive(name, v) for v in value]
        if len(values) != stages:
            raise InvalidSetting(
                name, f"gives {len(values)} values for {stages} stages", "pass one per stage"
            )
        return values
    return [_positive(name, value)] * stages


def _plan(
    factory: Any,
    space: Any,
    trials: Any,
    stages: Any,
    steps: Any,
    storage: Any,
    study: Any,
    seed: Any,
    sampler: Any,
    pruner: Any,
) -> dict[str, Any]:
    """The validated settings, as one picklable dict (worker processes get a copy)."""
    if not callable(factory):
        raise InvalidSettingType(
            "factory",
            f"expected a function params -> nndiag.Subject, got {describe(factory)}",
            "pass def factory(params): return nndiag.Subject(...)",
        )
    checked = validate_space(space)
    stages = _positive("stages", stages)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise InvalidSettingType("seed", f"expected an int in [0, 2**31), got {describe(seed)}")
    for name, value, allowed in (("sampler", sampler, SAMPLERS), ("pruner", pruner, PRUNERS)):
        if value not in allowed:
            raise InvalidSetting(name, f"got {value!r}", f"pass one of {', '.join(allowed)}")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise InvalidSetting(
            "storage",
            f"expected an Optuna storage URL, got {describe(storage)}",
            "pass e.g. 'sqlite:///reports/search.db' or 'postgresql://user@host/db'",
        )
    if study is not None and (not isinstance(study, str) or not study.strip()):
        raise InvalidSettingType("study", f"expected a non-empty str, got {describe(study)}")
    plan: dict[str, Any] = {
        "factory": factory,
        "space": {name: p.describe() for name, p in checked.items()},
        "trials": _per_stage("trials", trials, stages),
        "steps": _per_stage("steps", steps, stages),
        "stages": stages,
        "seed": seed,
        "sampler": sampler,
        "pruner": pruner,
    }
    if storage is None:
        Path(DEFAULT_STORAGE).parent.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{Path(DEFAULT_STORAGE).resolve()}"
    plan["storage"] = storage
    plan["study"] = study or _study_name(factory, plan)
    return plan


def _study_name(factory: Any, plan: Mapping[str, Any]) -> str:
    """The factory's name and a digest of the settings: the same call resumes its study,
    a changed one starts its own."""
    settings = {k: plan[k] for k in ("space", "trials", "steps", "stages", "seed", "sampler")}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return f"{_target(factory)}-{digest}"


def _target(factory: Any) -> str:
    module = getattr(factory, "__module__", None) or "factory"
    return f"{module}:{getattr(factory, '__qualname__', type(factory).__name__)}"


# --------------------------------------------------------------------------- optuna


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise BackendUnavailable("optuna (for nndiag.search)", "search", "optuna==5.0.0") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _storage(optuna: Any, url: str) -> Any:
    """An RDBStorage with heartbeats, whose stale trials are queued again."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    engine = {}
    if url.startswith("sqlite:///"):
        engine = {"creator": _sqlite(url)}
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), _claim_lock(url):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for attempt in range(3):  # workers that start together may race to create tables
            try:
                return RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=HEARTBEAT,
                    grace_period=GRACE,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
                )
            except Exception as exc:
                if attempt == 2:
                    raise InvalidSetting(
                        "storage", f"cannot open {_shown(url)}: {type(exc).__name__}: {exc}"
                    ) from None
                time.sleep(POLL * (attempt + 1))
    raise AssertionError("unreachable")


def _retry(optuna: Any, study: Any, trial: Any) -> None:
    """Queue a copy of an interrupted trial (same params), as Optuna's heartbeat does."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback()(study, trial)


def _sqlite(url: str) -> Callable[[], Any]:
    """Connections to an SQLite file in write-ahead-log mode: a commit is a write, not an
    fsync (a trial's few commits would cost more than a small trial), and readers do not
    block the writer. Several local workers wait for the write lock, not fail at once."""
    import sqlite3

    path = url[len("sqlite:///") :]

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return connect


def _shown(url: str) -> str:
    """The URL with its password masked."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _sampler(optuna: Any, plan: Mapping[str, Any], stage: int, number: int = 0) -> Any:
    seed = plan["seed"] * 1000 + stage
    if plan["sampler"] == "tpe":  # seeded per trial: workers draw different values
        return optuna.samplers.TPESampler(seed=(seed * 100_003 + number) % 2**31)
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(optuna: Any, plan: Mapping[str, Any], stage: int) -> Any:
    steps, evals = plan["steps"][stage], plan["evals"]
    first = max(1, round(steps / evals))
    if plan["pruner"] == "median":
        # Not before a few trials have reported: a median of one or two is noise.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if plan["pruner"] == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _stage(optuna: Any, store: Any, plan: Mapping[str, Any], stage: int) -> Any:
    """Stage ``stage``'s study: created and queued here if nobody has, else loaded once
    whoever created it has queued its trials."""
    name = f"{plan['study']}.stage{stage}"
    sampler, pruner = _sampler(optuna, plan, stage), _pruner(optuna, plan, stage)
    try:
        study = optuna.load_study(study_name=name, storage=store, sampler=sampler, pruner=pruner)
    except KeyError:
        study = None
    if study is None:
        if stage == 0:
            space = {n: from_description(d) for n, d in plan["space"].items()}
            why = "the space as given"
            direction = _direction(plan, space)
        else:
            previous = _stage(optuna, store, plan, stage - 1)
            maximize = previous.direction == optuna.study.StudyDirection.MAXIMIZE
            space, why = narrow(
                _stage_space(previous),
                [
                    (t.params, t.value)
                    for t in _records(optuna, previous, stage - 1)
                    if t.state == "complete" and t.value is not None
                ],
                maximize,
            )
            direction = "maximize" if maximize else "minimize"
        try:
            study = optuna.create_study(
                study_name=name,
                storage=store,
                sampler=sampler,
                pruner=pruner,
                direction=direction,
            )
        except optuna.exceptions.DuplicatedStudyError:
            return _stage(optuna, store, plan, stage)
        _queue(optuna, study, plan, stage, space, why)
    _ready(study, name)
    if study.user_attrs.get("plan") != _fingerprint(plan, stage):
        raise InvalidSetting(
            "study",
            f"{name} in {_shown(plan['storage'])} was made with other settings",
            "pass the settings it was made with, or another study name",
        )
    return study


def _fingerprint(plan: Mapping[str, Any], stage: int) -> dict[str, Any]:
    return {
        "trials": plan["trials"][stage],
        "steps": plan["steps"][stage],
        "space": plan["space"] if stage == 0 else None,
        "sampler": plan["sampler"],
    }


def _queue(
    optuna: Any,
    study: Any,
    plan: Mapping[str, Any],
    stage: int,
    space: Mapping[str, Param],
    why: str,
) -> None:
    study.set_user_attr("plan", _fingerprint(plan, stage))
    study.set_user_attr("space", {n: p.describe() for n, p in space.items()})
    study.set_user_attr("why", why)
    study.set_user_attr("steps", plan["steps"][stage])
    count = plan["trials"][stage]
    drawn: list[dict[str, Any]] = [{} for _ in range(count)]
    if plan["sampler"] == "random":  # drawn now, in order: the same whoever runs them
        scratch = optuna.create_study(sampler=_sampler(optuna, plan, stage))
        distributions = {n: distribution(p) for n, p in space.items()}
        for i in range(count):
            trial = scratch.ask(distributions)
            drawn[i] = dict(trial.params)
            scratch.tell(trial, 0.0)
    for params in drawn:
        study.enqueue_trial(params, skip_if_exists=False)
    study.set_user_attr("ready", True)


def _ready(study: Any, name: str) -> None:
    deadline = time.monotonic() + READY_WAIT
    while not study.user_attrs.get("ready"):
        if time.monotonic() > deadline:
            raise InvalidSetting(
                "study",
                f"{name} was created but its trials were never queued (its creator stopped)",
                "pass another study name",
            )
        time.sleep(POLL)


def _direction(plan: Mapping[str, Any], space: Mapping[str, Param]) -> str:
    """Maximize validation accuracy for a classifier, minimize validation loss otherwise:
    the task is read from one subject built at the centre of the space (or, where the
    factory raises there, at its low or high corner: failing values are trials' business).
    """
    from nndiag.config import Config

    points = [{n: _centre(p) for n, p in space.items()}]
    for end in (0, -1):
        points.append({n: _corner(p, end) for n, p in space.items()})
    failure = ""
    for point in points:
        try:
            with seeded_globals(plan["seed"]):  # the caller's generators stay as they were
                subject = plan["factory"](point)
            task = subject.backend.session(subject, Config(seed=plan["seed"])).task
        except Exception as exc:
            failure = failure or f"factory({point}) raised {type(exc).__name__}: {exc}"
            continue
        return "maximize" if task.kind == "classification" else "minimize"
    raise InvalidSetting(
        "factory",
        f"{failure}, and at the corners of the space too, so the task cannot be read",
        "make the factory return nndiag.Subject(...) for the values of the space",
    )


def _corner(param: Param, end: int) -> Any:
    if isinstance(param, Choice):
        return param.options[end]
    return param.low if end == 0 else param.high


def _centre(param: Param) -> Any:
    if isinstance(param, Choice):
        return param.options[0]
    if isinstance(param, LogUniform):
        return math.sqrt(param.low * param.high)
    return (param.low + param.high) / 2


def _stage_space(study: Any) -> dict[str, Param]:
    return {n: from_description(d) for n, d in study.user_attrs["space"].items()}


# --------------------------------------------------------------------------- workers


def _work(
    optuna: Any,
    store: Any,
    plan: Mapping[str, Any],
    progress: Callable[[Progress], None] | None,
    jobs: int,
) -> None:
    """Claim and run trials, stage by stage, until every stage is finished."""
    total = sum(plan["trials"])
    earlier: list[TrialRecord] = []  # the finished stages' trials, read once each
    for stage in range(plan["stages"]):
        study = _stage(optuna, store, plan, stage)
        space = _stage_space(study)
        queue: list[tuple[int, int]] = []
        noted: dict[str, str] = {}
        while True:
            claimed = _claim(optuna, store, study, plan, queue)
            if claimed is not None:
                _run(optuna, store, study, claimed, plan, stage, space, noted)
                if progress is not None:
                    progress(_progress(optuna, study, stage, earlier, total, jobs))
                continue
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if not running:
                break
            _recover(optuna, store, study, running)
            time.sleep(POLL)
        if progress is not None:
            earlier.extend(_records(optuna, study, stage))


@contextlib.contextmanager
def _claim_lock(url: str) -> Iterator[None]:
    """SQLite cannot lock a row: a file lock next to it serializes claims on this machine
    (an SQLite file is one machine's anyway). Server databases lock the row themselves."""
    if not url.startswith("sqlite:///") or os.name != "posix":
        yield
        return
    import fcntl

    path = url[len("sqlite:///") :] + ".lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _claim(
    optuna: Any, store: Any, study: Any, plan: Mapping[str, Any], queue: list[tuple[int, int]]
) -> tuple[int, int] | None:
    """Move one WAITING trial to RUNNING for this worker: its id and number, or None when
    none is left.

    ``queue`` holds the ids seen waiting at the last look, oldest last: a claim of one
    that another worker took meanwhile just fails, so the study is read again only when
    the queue runs dry (a read of every trial per claim would cost more than a small
    trial)."""
    with _claim_lock(plan["storage"]):
        for attempt in range(2):
            if not queue and attempt == 1:
                waiting = study.get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.WAITING,)
                )
                queue.extend(reversed([(t._trial_id, t.number) for t in waiting]))
            while queue:
                trial_id, number = queue.pop()
                try:
                    if store.set_trial_state_values(trial_id, state=_running(optuna)):
                        store.set_trial_user_attr(trial_id, "worker", _me())
                        return int(trial_id), int(number)
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue
    return None


def _running(optuna: Any) -> Any:
    return optuna.trial.TrialState.RUNNING


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _recover(optuna: Any, store: Any, study: Any, running: list[Any]) -> None:
    """Queue again the trials of dead workers: on this machine, a process that no longer
    exists; elsewhere, a heartbeat silent for longer than the grace period."""
    from optuna.storages import fail_stale_trials

    host = socket.gethostname()
    for trial in running:
        worker = str(trial.user_attrs.get("worker", ""))
        where, _, pid = worker.rpartition(":")
        if where != host or not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            store.set_trial_user_attr(trial._trial_id, "reason", f"worker {worker} stopped")
            failed = store.set_trial_state_values(trial._trial_id, state=_fail(optuna))
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if failed:
            _retry(optuna, study, store.get_trial(trial._trial_id))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)


def _fail(optuna: Any) -> Any:
    return optuna.trial.TrialState.FAIL


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextlib.contextmanager
def _heartbeat(store: Any, trial_id: int) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried next interval
                store.record_heartbeat(trial_id)
            if stop.wait(HEARTBEAT):
                return

    thread = threading.Thread(target=beat, name=f"nndiag-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _run(
    optuna: Any,
    store: Any,
    study: Any,
    claimed: tuple[int, int],
    plan: Mapping[str, Any],
    stage: int,
    space: Mapping[str, Param],
    noted: dict[str, str],
) -> None:
    trial_id, number = claimed
    if plan["sampler"] == "tpe":
        study.sampler = _sampler(optuna, plan, stage, number)
    trial = optuna.trial.Trial(study, trial_id)
    params = {name: _suggest(trial, name, p) for name, p in space.items()}
    pruner_name = plan["pruner"]
    view = _PrunerView(optuna, store, study, fresh=pruner_name == "halving")
    mine = _Steps()  # what the median rule reads of this trial

    def should_prune(step: int, value: float) -> str | None:
        if pruner_name == "none":
            return None
        trial.report(value, step)
        mine.intermediate_values[step] = value
        # Successive halving records this trial's rungs in the storage: read it back.
        current = store.get_trial(trial_id) if pruner_name == "halving" else mine
        if not study.pruner.prune(view, current):
            return None
        rule = (
            "worse than the median of earlier trials at that step"
            if pruner_name == "median"
            else "outside the share successive halving keeps at that step"
        )
        return f"validation {value:.3g} at step {step}, {rule}"

    try:
        with _heartbeat(store, trial_id):
            outcome = run_trial(
                plan["factory"],
                params,
                steps=plan["steps"][stage],
                validation=plan["validation"],
                evals=plan["evals"],
                seed=(plan["seed"] + 7919 * stage + number) % 2**31,
                should_prune=should_prune,
                explode=plan["explode"],
            )
    except KeyboardInterrupt:
        store.set_trial_user_attr(trial_id, "reason", "interrupted")
        study.tell(trial, state=_fail(optuna))
        _retry(optuna, study, store.get_trial(trial_id))
        raise
    _tell(optuna, store, study, trial, trial_id, outcome, noted)


class _Steps:
    """This trial's validation values by step, as the median rule reads them."""

    def __init__(self) -> None:
        self.intermediate_values: dict[int, float] = {}

    @property
    def last_step(self) -> int | None:
        return max(self.intermediate_values) if self.intermediate_values else None


class _PrunerView:
    """The study as its pruner reads it, less the queued trials: Optuna's trial cache
    reads every unfinished trial again on each read, and a stage queues all of its trials
    up front, so a pruner reading the study itself would cost more than a small trial."""

    def __init__(self, optuna: Any, store: Any, study: Any, *, fresh: bool) -> None:
        self._storage = store  # successive halving writes its rungs through it
        self._study_id = store.get_study_id_from_name(study.study_name)
        self.direction = study.direction
        states = optuna.trial.TrialState
        self._states = (states.COMPLETE, states.PRUNED, states.FAIL, states.RUNNING)
        # The median rule compares with the trials complete when this one started (read
        # once per trial); successive halving reads the rungs as they are at each step.
        self._fresh = fresh
        self._read: dict[tuple[Any, ...], list[Any]] = {}

    def get_trials(self, deepcopy: bool = False, states: Any = None) -> list[Any]:
        wanted = self._states if states is None else tuple(states)
        if self._fresh or wanted not in self._read:
            found = self._storage.get_all_trials(self._study_id, deepcopy=False, states=wanted)
            self._read[wanted] = list(found)
        return self._read[wanted]


def _suggest(trial: Any, name: str, param: Param) -> Any:
    if isinstance(param, Choice):
        return trial.suggest_categorical(name, param.options)
    return trial.suggest_float(name, param.low, param.high, log=isinstance(param, LogUniform))


def _tell(
    optuna: Any,
    store: Any,
    study: Any,
    trial: Any,
    trial_id: int,
    o: Outcome,
    noted: dict[str, str],
) -> None:
    if o.state == "complete" and (o.value is None or not math.isfinite(o.value)):
        o.state, o.reason = "fail", f"the {o.metric or 'validation metric'} is {o.value}"
    record = {
        "steps": o.steps,
        "losses": [v if math.isfinite(v) else None for v in o.losses],
        "loss_every": o.loss_every,
        "checkpoints": [[s, v] for s, v in o.checkpoints],
        "seconds": o.seconds,
        "passes": list(o.passes),
        "value": o.value if o.value is not None and math.isfinite(o.value) else None,
    }
    record["reason"] = o.reason
    store.set_trial_user_attr(trial_id, "nndiag", record)  # one write for all of it
    for key, value in (("metric", o.metric), ("validation", o.validation)):
        if value and noted.get(key) != value:  # written once per worker and stage
            study.set_user_attr(key, value)
            noted[key] = value
    # The storage's own call, not Study.tell: tell reads the trial back first, and the
    # samplers offered here do nothing after a single-objective trial.
    states = optuna.trial.TrialState
    if o.state == "complete":
        store.set_trial_state_values(trial_id, states.COMPLETE, [float(o.value or 0.0)])
    elif o.state == "pruned":
        last = [float(o.value)] if o.value is not None and math.isfinite(o.value) else None
        store.set_trial_state_values(trial_id, states.PRUNED, last)
    else:
        store.set_trial_state_values(trial_id, states.FAIL)


def _progress(
    optuna: Any, study: Any, stage: int, earlier: list[TrialRecord], total: int, jobs: int
) -> Progress:
    """Trials finished in every worker, the best so far and the time left at the mean
    trial's pace."""
    records = earlier + _records(optuna, study, stage)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    values = [r.value for r in records if r.state == "complete" and r.value is not None]
    best = (max(values) if maximize else min(values)) if values else None
    seconds = [r.seconds for r in records if r.seconds]
    eta = sum(seconds) / len(seconds) * max(0, total - len(records)) / jobs if seconds else None
    metric = str(study.user_attrs.get("metric", "validation metric"))
    return Progress(len(records), total, stage, best, metric, eta)


# --------------------------------------------------------------------------- results


def _records(optuna: Any, study: Any, stage: int) -> list[TrialRecord]:
    """The stage's finished trials, less those interrupted and queued again."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = {RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials}
    names = {states.COMPLETE: "complete", states.PRUNED: "pruned", states.FAIL: "fail"}
    records = []
    for t in trials:
        if t.state not in names or t.number in retried:
            continue
        # A retried copy carries its original's attrs: the trial's own record comes first.
        attrs = dict(t.user_attrs.get("nndiag", {"reason": t.user_attrs.get("reason", "")}))
        value = t.value if t.state == states.COMPLETE else attrs.get("value")
        records.append(
            TrialRecord(
                number=t.number,
                stage=stage,
                params=dict(t.params),
                state=names[t.state],  # type: ignore[arg-type]
                value=value,
                reason=str(attrs.get("reason", "")),
                steps=int(attrs.get("steps", 0)),
                losses=[math.nan if v is None else float(v) for v in attrs.get("losses", [])],
                loss_every=int(attrs.get("loss_every", 1)),
                checkpoints=[(int(s), float(v)) for s, v in attrs.get("checkpoints", [])],
                seconds=float(attrs.get("seconds", 0.0)),
                passes=(int(attrs.get("passes", [0, 0])[0]), int(attrs.get("passes", [0, 0])[1])),
            )
        )
    return records


def _all_records(optuna: Any, store: Any, plan: Mapping[str, Any], upto: int) -> list[TrialRecord]:
    records = []
    for stage in range(upto + 1):
        study = optuna.load_study(study_name=f"{plan['study']}.stage{stage}", storage=store)
        records.extend(_records(optuna, study, stage))
    return records


def collect(optuna: Any, store: Any, plan: Mapping[str, Any]) -> SearchResult:
    """The result of a finished search, read back from its storage."""
    ranges, records = [], []
    metric, validation, maximize = "validation metric", "", True
    for stage in range(plan["stages"]):
        study = _stage(optuna, store, plan, stage)
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        metric = study.user_attrs.get("metric", metric)
        validation = study.user_attrs.get("validation", validation)
        ranges.append(
            StageRange(
                stage=stage,
                trials=plan["trials"][stage],
                steps=plan["steps"][stage],
                params=dict(study.user_attrs["space"]),
                why=str(study.user_attrs["why"]),
            )
        )
        records.extend(_records(optuna, study, stage))
    complete = [r for r in records if r.state == "complete" and r.value is not None]
    best = None
    if complete:
        key: Callable[[TrialRecord], float] = lambda r: r.value or 0.0  # noqa: E731
        best = max(complete, key=key) if maximize else min(complete, key=key)
    return SearchResult(
        best_params=dict(best.params) if best else {},
        best_value=best.value if best else None,
        metric=metric,
        direction="maximize" if maximize else "minimize",
        trials=records,
        ranges=ranges,
        validation=validation,
        storage=_shown(plan["storage"]),
        study=plan["study"],
        command=resume_command(plan),
        meta={"seed": plan["seed"], "sampler": plan["sampler"], "pruner": plan["pruner"]},
    )


def resume_command(plan: Mapping[str, Any]) -> str:
    """The ``nndiag search`` command that resumes (or, with more trials, extends) it."""
    import shlex

    space = " ".join(
        f"--space {shlex.quote(_space_text(name, d))}" for name, d in plan["space"].items()
    )
    per = lambda values: ",".join(map(str, values))  # noqa: E731
    parts = [
        "nndiag search",
        shlex.quote(_target(plan["factory"])),
        space,
        f"--trials {per(plan['trials'])} --stages {plan['stages']} --steps {per(plan['steps'])}",
        f"--seed {plan['seed']} --sampler {plan['sampler']} --pruner {plan['pruner']}",
        f"--storage {shlex.quote(_shown(plan['storage']))} --study {shlex.quote(plan['study'])}",
    ]
    return " ".join(parts)


def _space_text(name: str, described: Mapping[str, Any]) -> str:
    if described["kind"] == "choice":
        return f"{name}=choice:{','.join(map(str, described['options']))}"
    return f"{name}={described['kind']}:{described['low']:g}:{described['high']:g}"
