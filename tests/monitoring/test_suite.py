"""The monitor's validation suite (tests/monitoring/runs.py): every healthy run silent and
every planted fault flagged by its rule, soon after its onset, at seeds 0-19."""

from __future__ import annotations

import pytest

from tests.monitoring.runs import FAULTS, HEALTHY, Run, false_alarms, fired, train

SEEDS = range(20)
# The most steps after its onset each fault may take to be flagged: a sample (every 10
# steps) for the sampled rules, the confirming steps of a spike, four 25-step windows for a
# flat loss, three validations (every 20 steps) past the best one for a gap.
DELAY = {
    "lr_x100_at_150": 5,
    "relu_dying": 30,
    "layer_left_out": 0,
    "float16_overflow": 2,
    "exploding_rnn": 10,
    "memorising": 80,
    "rate_decayed": 110,
}


def _cases(runs: tuple[Run, ...]) -> list[object]:
    return [pytest.param(run, seed, id=f"{run.name}-{seed}") for run in runs for seed in SEEDS]


@pytest.mark.parametrize(("run", "seed"), _cases(HEALTHY))
def test_a_healthy_run_is_silent(run: Run, seed: int) -> None:
    mon = train(run, seed)
    assert fired(mon) == {}, [r.summary() for r in mon.report.results if r.status != "pass"]
    statuses = {r.check: r.status for r in mon.report.results}
    assert statuses["update_ratio"] == statuses["loss_spike"] == "pass"


@pytest.mark.parametrize(("run", "seed"), _cases(FAULTS))
def test_a_planted_fault_is_flagged_by_its_rule(run: Run, seed: int) -> None:
    mon = train(run, seed)
    found = fired(mon)
    assert run.required in found, found
    assert run.onset <= found[run.required] <= run.onset + DELAY[run.name], found
    assert false_alarms(run, found) == {}, found
    result = next(r for r in mon.report.results if r.check == run.required)
    assert result.hint and result.metrics["step"] == found[run.required]
