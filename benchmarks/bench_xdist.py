"""Wall time of ``pytest --nndiag`` under pytest-xdist against a serial run of the same
project, in the same session: ``-n 2`` (nndiag keeps each subject's checks on one worker)
and ``-n 2 --dist load`` (xdist's own spreading, which builds a subject on every worker
that draws one of its checks). Two projects: six small CNN subjects, and ``examples/`` as
it ships. No thread variable is set, as on a user's machine: the workers' one thread
each is nndiag's doing.

Run with ``pytest benchmarks/bench_xdist.py -s`` on a machine with at least two idle
cores. The variants run interleaved, so drift hits them alike; the ratios (parallel over
serial) go to ``extra_info`` and are printed. Nothing is asserted about time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SUBJECTS, ROUNDS = 6, 2

CONFTEST = textwrap.dedent(
    """
    import nndiag


    def _cnn(seed):
        import torch
        from torch import nn

        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
        )
        data = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
        return nndiag.Subject(model, data)
    """
) + "".join(f"\n\n@nndiag.subject\ndef cnn_{i}():\n    return _cnn({i})\n" for i in range(SUBJECTS))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("xdist_project")
    (root / "conftest.py").write_text(CONFTEST)
    (root / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    return root


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(root: Path, *options: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nndiag", "-q", "-p", "no:randomly", *options],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
    )
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return elapsed


@pytest.mark.parametrize("which", ["cnn_subjects", "examples"])
def test_parallel_run_against_serial(
    benchmark: pytest.FixtureRequest, project: Path, which: str
) -> None:
    pytest.importorskip("xdist")
    if which == "examples":
        project = EXAMPLES
    variants = {"serial": (), "n2": ("-n", "2"), "n2_dist_load": ("-n", "2", "--dist", "load")}
    _run(project)  # bytecode, file system cache
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, options in variants.items():
            times[name].append(_run(project, *options))
    benchmark.pedantic(_run, args=(project, "-n", "2"), rounds=1, iterations=1)
    median = {name: statistics.median(t) for name, t in times.items()}
    for name in ("n2", "n2_dist_load"):
        benchmark.extra_info[f"{name}_over_serial"] = round(median[name] / median["serial"], 3)
    benchmark.extra_info.update({f"{k}_s": round(v, 2) for k, v in median.items()})
    print(
        f"\n{which}: serial {median['serial']:.1f} s, -n 2 "
        f"{median['n2']:.1f} s ({median['n2'] / median['serial']:.2f}x), -n 2 --dist load "
        f"{median['n2_dist_load']:.1f} s ({median['n2_dist_load'] / median['serial']:.2f}x)"
    )
