"""nndiag.search on tiny numpy (and one torch) models: it finds the learning rate a fine
grid finds, prunes and fails trials as it says, shares a study between workers and resumes
an interrupted one."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nndiag
from nndiag.errors import BackendUnavailable, InvalidSetting, InvalidSettingType
from tests.search import helpers as h
from tests.search.workers import check_shared, shared_study, start_worker, worker_script

pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[2]


def sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'search.db'}"


def run(factory: Any, tmp_path: Path, **kwargs: Any) -> nndiag.SearchResult:
    settings: dict[str, Any] = {"trials": 6, "stages": 1, "steps": h.STEPS, "seed": 0}
    settings.update(kwargs)
    return nndiag.search(
        factory,
        settings.pop("space", {"lr": nndiag.LogUniform(1e-3, 1.0)}),
        storage=settings.pop("storage", sqlite(tmp_path)),
        validation=settings.pop("validation", h.validation_data()),
        **settings,
    )


def test_lands_within_3x_of_the_grid_best_with_fewer_trials(tmp_path: Path) -> None:
    grid = np.logspace(-4, 0, 81)
    losses = [h.grid_loss(lr) for lr in grid]
    best = float(grid[int(np.argmin(losses))])
    result = run(
        h.regression,
        tmp_path,
        trials=[12, 12],
        stages=2,
        steps=[h.STEPS, h.STEPS],
        space={"lr": nndiag.LogUniform(1e-4, 1.0)},
    )
    assert len(result.trials) == 24 < len(grid)
    found = result.best_params["lr"]
    assert abs(math.log10(found / best)) < math.log10(3), (found, best)
    # The best trial's validation loss is the grid's at that rate (the numpy backend's
    # eval-mode loss is the plain mean squared error, twice the model's halved one).
    assert result.best_value == pytest.approx(2 * h.grid_loss(found), rel=1e-6)
    assert result.direction == "minimize" and result.metric == "validation loss"
    # Stage 2 searched a narrower log range that holds the grid's best, and says why.
    first, second = (r.params["lr"] for r in result.ranges)
    assert math.log10(second["high"] / second["low"]) < math.log10(first["high"] / first["low"])
    assert second["low"] <= best * 3 and second["high"] >= best / 3
    assert "best" in result.ranges[1].why and result.ranges[0].why == "the space as given"
    assert {t.stage for t in result.trials} == {0, 1}


def replay(lr: float) -> list[float]:
    """The training losses of full-batch SGD at ``lr`` (as the numpy trainer steps)."""
    X, y, _, _ = h.regression_data()
    W, b, out = np.zeros(h.DIM), 0.0, []
    for _ in range(h.STEPS):
        diff = X @ W + b - y
        out.append(0.5 * float(np.mean(diff**2)))
        W, b = W - lr * X.T @ diff / len(y), b - lr * diff.mean()
    return out


def test_exploding_trials_are_pruned_at_the_step_the_rule_fires(tmp_path: Path) -> None:
    result = run(h.regression, tmp_path, space={"lr": nndiag.LogUniform(0.02, 1.0)})
    pruned = [t for t in result.trials if t.state == "pruned"]
    assert pruned, result.trials
    for trial in pruned:
        losses = replay(trial.params["lr"])
        fired = next(i for i, v in enumerate(losses) if v > 3 * losses[0])
        assert trial.reason == f"loss {losses[fired] / losses[0]:.1f}× its start at step {fired}"
        assert trial.steps == fired + 1 == len(trial.losses)
        assert trial.losses == pytest.approx(losses[: fired + 1])
    for trial in result.trials:  # the rule never fired on a complete trial
        if trial.state == "complete":
            losses = replay(trial.params["lr"])
            assert max(losses) <= 3 * losses[0]


def test_a_raising_model_gives_fail_trials_and_the_search_finishes(tmp_path: Path) -> None:
    X, y = h.blobs(1)
    result = run(
        h.classifier,
        tmp_path,
        trials=8,
        space={"lr": nndiag.LogUniform(0.01, 5.0)},
        validation=(X, y),
    )
    states = {t.state for t in result.trials}
    assert len(result.trials) == 8 and "fail" in states and "complete" in states
    for trial in result.trials:
        assert (trial.state == "fail") == (trial.params["lr"] > 0.5)
        if trial.state == "fail":
            assert "ValueError: the model broke" in trial.reason
    assert result.metric == "validation accuracy" and result.direction == "maximize"
    assert result.best_value is not None and result.best_value > 0.9


def broken_factory(params: dict[str, Any]) -> nndiag.Subject:
    if params["lr"] > 0.1:
        raise RuntimeError("no such layer")
    return h.regression(params)


def test_a_raising_factory_gives_fail_trials(tmp_path: Path) -> None:
    result = run(broken_factory, tmp_path, space={"lr": nndiag.LogUniform(1e-3, 1.0)})
    failed = [t for t in result.trials if t.state == "fail"]
    assert failed and all(t.params["lr"] > 0.1 for t in failed)
    assert all(t.reason == "factory raised RuntimeError: no such layer" for t in failed)


class Recording(h.Linear):
    seen: list[float] = []

    def loss(self, X: np.ndarray, y: np.ndarray | None = None) -> Any:
        if y is not None:
            Recording.seen.append(self.reg)
        return super().loss(X, y)


SHARED = Recording()


def shared_factory(params: dict[str, Any]) -> nndiag.Subject:
    X, y, _, _ = h.regression_data()
    return nndiag.Subject(SHARED, (X, y), optimizer=h.sgd, regularization="reg")


def test_regularization_param_sets_the_knob_and_the_model_is_left_as_it_was(
    tmp_path: Path,
) -> None:
    before = {k: v.copy() for k, v in SHARED.params.items()}
    Recording.seen.clear()
    space = {"lr": nndiag.LogUniform(1e-3, 1e-2), "reg": nndiag.LogUniform(1e-4, 1e-1)}
    result = run(shared_factory, tmp_path, trials=3, space=space)
    assert {round(r, 12) for r in Recording.seen} == {
        round(t.params["reg"], 12) for t in result.trials
    }
    assert SHARED.reg == 0.0
    for name, value in before.items():
        assert np.array_equal(SHARED.params[name], value)


def test_holds_out_data_when_no_validation_is_given(tmp_path: Path) -> None:
    result = run(h.regression, tmp_path, trials=2, validation=None)
    assert result.validation == (
        f"the last {round(0.2 * h.SAMPLES)} of the subject's {h.SAMPLES} samples (20%), "
        "held out of training"
    )


def test_two_worker_processes_split_a_study_without_duplicates(tmp_path: Path) -> None:
    result = run(h.regression, tmp_path, trials=[5, 5], stages=2, steps=[h.STEPS, h.STEPS], jobs=2)
    keys = [(t.stage, t.number) for t in result.trials]
    assert len(keys) == 10 == len(set(keys))
    assert len({(t.stage, t.params["lr"]) for t in result.trials}) == 10


def test_the_same_seed_gives_the_same_trials_in_one_or_two_workers(tmp_path: Path) -> None:
    # The factory draws its weights from numpy's global generator: each trial seeds the
    # global generators from (seed, stage, trial) before calling it, so a worker process's
    # own state does not change the trials' values, the next stage's range or the best.
    settings = {"trials": [4, 4], "stages": 2, "steps": [h.STEPS, h.STEPS], "pruner": "none"}
    one = run(h.random_init, tmp_path, study="serial", **settings)
    two = run(h.random_init, tmp_path, study="parallel", jobs=2, **settings)

    def key(result: nndiag.SearchResult) -> list[tuple[Any, ...]]:
        return sorted((t.stage, t.number, t.params["lr"], t.value) for t in result.trials)

    assert key(one) == key(two)
    assert one.best_value == two.best_value and one.best_params == two.best_params
    np.random.seed(0)
    drawn = np.random.rand()
    np.random.seed(0)
    run(h.random_init, tmp_path, study="again", trials=2)
    assert np.random.rand() == drawn  # the caller's global generator is left as it was


def test_two_workers_on_one_sqlite_storage(tmp_path: Path) -> None:
    shared_study(sqlite(tmp_path), "shared")


def test_two_processes_on_one_storage_give_the_serial_trials(tmp_path: Path) -> None:
    # Random-init weights, no pruner (which trials a median pruner stops depends on the
    # order they finish in): the trials' values and the best are the serial run's.
    storage = sqlite(tmp_path)
    shared_study(storage, "two", "random_init", ", pruner='none'")
    two = run(h.random_init, tmp_path, study="two", trials=[6, 6], stages=2, pruner="none")
    (tmp_path / "serial").mkdir()
    one = run(
        h.random_init, tmp_path / "serial", study="one", trials=[6, 6], stages=2, pruner="none"
    )

    def key(result: nndiag.SearchResult) -> list[tuple[Any, ...]]:
        return sorted((t.stage, t.number, t.params["lr"], t.value) for t in result.trials)

    assert len(two.trials) == 12 and key(two) == key(one)
    assert one.best_value == two.best_value and one.best_params == two.best_params


class Interrupting:
    """A factory that raises KeyboardInterrupt (Ctrl-C) on its ``at``-th call."""

    def __init__(self, at: int) -> None:
        self.calls, self.at = 0, at

    def __call__(self, params: dict[str, Any]) -> nndiag.Subject:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return h.regression(params)


def test_an_interrupted_search_resumes_with_nothing_lost(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        run(Interrupting(at=4), tmp_path, study="resumable")  # the probe is call 1
    resumed = run(h.regression, tmp_path, study="resumable")
    (tmp_path / "fresh").mkdir()
    fresh = run(h.regression, tmp_path / "fresh", study="resumable")  # never interrupted
    assert len(resumed.trials) == 6
    assert sorted(t.params["lr"] for t in resumed.trials) == sorted(
        t.params["lr"] for t in fresh.trials
    )
    assert [t.state for t in sorted(resumed.trials, key=lambda t: t.params["lr"])] == [
        t.state for t in sorted(fresh.trials, key=lambda t: t.params["lr"])
    ]


def test_a_killed_worker_s_trial_is_run_again(tmp_path: Path) -> None:
    storage = sqlite(tmp_path)
    marker = tmp_path / "calls"
    worker = start_worker(
        worker_script(storage, "killed", "stopping"),
        NNDIAG_TEST_STOP_FILE=str(marker),
        NNDIAG_TEST_STOP="3",
    )
    assert worker.stdout is not None and worker.stdin is not None
    assert worker.stdout.readline() == "ready\n"
    worker.stdin.write("go\n")
    worker.stdin.flush()
    assert worker.stdout.readline() == "started\n"  # inside its second trial
    worker.kill()
    worker.wait()
    result = nndiag.search(
        h.regression,
        {"lr": nndiag.LogUniform(1e-3, 1.0)},
        trials=[6, 6],
        stages=2,
        steps=h.STEPS,
        validation=h.validation_data(),
        storage=storage,
        study="killed",
        seed=0,
    )
    assert len(result.trials) == 12
    assert all("stopped" not in t.reason for t in result.trials)
    check_shared(storage, "killed", stopped=1)


def test_torch_subjects_are_searched(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    def factory(params: dict[str, Any]) -> nndiag.Subject:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(h.DIM, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
        )
        X, y = h.blobs()
        data = (torch.tensor(X, dtype=torch.float32), torch.tensor(y))
        return nndiag.Subject(
            model,
            data,
            optimizer=lambda p: torch.optim.SGD(p, lr=params["lr"], momentum=0.9),
        )

    X, y = h.blobs(1)
    validation = (torch.tensor(X, dtype=torch.float32), torch.tensor(y))
    result = run(
        factory,
        tmp_path,
        trials=3,
        steps=10,
        validation=validation,
        space={"lr": nndiag.LogUniform(1e-3, 1e-1)},
    )
    assert result.metric == "validation accuracy"
    assert all(t.state == "complete" for t in result.trials)
    # The session's probe, 10 training steps and 4 validation checkpoints.
    assert all(t.passes == (1 + 10 + 4, 10) for t in result.trials)
    assert result.best_value is not None and result.best_value > 0.9


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"space": {"lr": (1e-5, 1e-1)}}, InvalidSettingType, "space['lr']"),
        ({"space": {}}, InvalidSetting, "space: is empty"),
        ({"trials": 0}, InvalidSetting, "trials: must be at least 1"),
        ({"trials": [3, 3], "stages": 1}, InvalidSetting, "2 values for 1 stages"),
        ({"sampler": "grid"}, InvalidSetting, "random, tpe"),
        ({"storage": "reports/x.db"}, InvalidSetting, "storage URL"),
        ({"explode": 1}, InvalidSetting, "explode: must be a number above 1"),
        ({"jobs": 0}, InvalidSetting, "jobs: must be at least 1"),
    ],
)
def test_bad_arguments_are_named(
    tmp_path: Path, kwargs: dict[str, Any], error: type, words: str
) -> None:
    with pytest.raises(error, match=None) as info:
        run(h.regression, tmp_path, **kwargs)
    assert words in str(info.value)


def test_space_values_are_checked() -> None:
    with pytest.raises(InvalidSetting, match="0 < low < high"):
        nndiag.LogUniform(0, 1)
    with pytest.raises(InvalidSetting, match="low < high"):
        nndiag.Uniform(1, 1)
    with pytest.raises(InvalidSettingType, match="options must be"):
        nndiag.Choice([object()])
    assert nndiag.Choice(["a", "b"]) == nndiag.Choice("a", "b")


def test_missing_optuna_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    fix = r"pip install optuna==5\.0\.0 \(nndiag's \[search\] extra"
    with pytest.raises(BackendUnavailable, match=fix):
        run(h.regression, tmp_path)


def test_import_nndiag_and_the_space_load_no_optuna() -> None:
    code = (
        "import sys, nndiag\n"
        "nndiag.LogUniform(1e-5, 1e-1); nndiag.search\n"
        "heavy = {'optuna', 'sqlalchemy', 'torch', 'matplotlib'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize(("sampler", "pruner"), [("tpe", "halving"), ("random", "none")])
def test_other_samplers_and_pruners_run_every_trial_once(
    tmp_path: Path, sampler: str, pruner: str
) -> None:
    result = run(h.regression, tmp_path, trials=6, sampler=sampler, pruner=pruner,
                 space={"lr": nndiag.LogUniform(1e-3, 2e-2)})  # fmt: skip
    assert sorted(t.number for t in result.trials) == list(range(6))
    assert len({t.params["lr"] for t in result.trials}) == 6
    assert result.meta == {"seed": 0, "sampler": sampler, "pruner": pruner}
    if pruner == "none":  # no rate here explodes: every trial runs to the end
        assert all(t.state == "complete" and t.steps == h.STEPS for t in result.trials)


def centre_broken(params: dict[str, Any]) -> nndiag.Subject:
    if math.isclose(params["lr"], math.sqrt(1e-3 * 1.0)):
        raise RuntimeError("not at the centre")
    return h.regression(params)


def always_broken(params: dict[str, Any]) -> nndiag.Subject:
    raise RuntimeError("never builds")


def test_the_task_is_read_where_the_factory_builds(tmp_path: Path) -> None:
    result = run(centre_broken, tmp_path, trials=2)
    assert result.direction == "minimize" and len(result.trials) == 2
    with pytest.raises(InvalidSetting, match="factory.*raised RuntimeError: never builds"):
        run(always_broken, tmp_path / "x", trials=2)


def test_validation_data_of_another_sample_shape_is_refused_by_name(tmp_path: Path) -> None:
    Xv, yv = h.validation_data()
    wide = np.concatenate([Xv, Xv], axis=1)
    # A list of batches: the second differs from the training data's feature count. The
    # trial fails naming it, before any training step.
    result = run(h.regression, tmp_path, trials=1, validation=[(Xv, yv), (wide, yv)])
    (trial,) = result.trials
    assert trial.state == "fail", trial
    assert trial.reason.startswith("validation (batch 1): its samples have X of shape")
    assert "the training data's" in trial.reason
