"""Cost of the pytest plugin where it is not asked for: ``pytest --collect-only`` on a plain
project (no subjects, no ``--nndiag``) with nndiag installed, against ``-p no:nndiag``.

Run with ``pytest benchmarks/bench_plugin.py``. Both variants run interleaved in the same
session, so machine drift hits them alike; the ratio is stored in ``extra_info`` (shown with
``--benchmark-json``) and printed.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

FILES, TESTS, ROUNDS = 40, 10, 12
# A plugin that "costs nothing" is within run-to-run noise of not loading it at all.
MAX_RATIO = 1.10


@pytest.fixture(scope="module")
def plain_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plain_project")
    (root / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\naddopts = '-p no:cacheprovider'\n"
    )
    for i in range(FILES):
        tests = "".join(f"def test_{j}():\n    assert {j} + 1 > {j}\n\n" for j in range(TESTS))
        (root / f"test_module_{i}.py").write_text(tests)
    return root


def _collect(root: Path, *options: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *options],
        cwd=root,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{FILES * TESTS} tests collected" in done.stdout
    return elapsed


def test_collect_only_costs_nothing_with_nndiag_installed(
    benchmark: pytest.FixtureRequest, plain_project: Path
) -> None:
    _collect(plain_project)  # warm the file system cache and the bytecode of both variants
    _collect(plain_project, "-p", "no:nndiag")
    installed, disabled = [], []
    for _ in range(ROUNDS):
        disabled.append(_collect(plain_project, "-p", "no:nndiag"))
        installed.append(_collect(plain_project))
    benchmark.pedantic(_collect, args=(plain_project,), rounds=3, iterations=1)
    ratio = statistics.median(installed) / statistics.median(disabled)
    benchmark.extra_info["collect_only_ratio_vs_no_nndiag"] = round(ratio, 3)
    benchmark.extra_info["median_s_installed"] = round(statistics.median(installed), 4)
    benchmark.extra_info["median_s_no_nndiag"] = round(statistics.median(disabled), 4)
    print(
        f"\npytest --collect-only, {FILES * TESTS} tests: {ratio:.3f}x with nndiag installed "
        f"({statistics.median(installed) * 1e3:.0f} ms vs "
        f"{statistics.median(disabled) * 1e3:.0f} ms with -p no:nndiag)"
    )
    benchmark.extra_info["within_budget"] = ratio < MAX_RATIO  # recorded, never asserted


def test_plugin_import_time(benchmark: pytest.FixtureRequest) -> None:
    """Seconds ``import nndiag.plugin`` adds to an interpreter that has pytest loaded."""
    code = (
        "import time, pytest; t = time.perf_counter(); import nndiag.plugin; "
        "print(time.perf_counter() - t)"
    )

    def measure() -> float:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        return float(out)

    seconds = [measure() for _ in range(ROUNDS)]
    benchmark.pedantic(measure, rounds=3, iterations=1)
    benchmark.extra_info["import_ms"] = round(statistics.median(seconds) * 1e3, 2)
    print(f"\nimport nndiag.plugin after pytest: {statistics.median(seconds) * 1e3:.1f} ms")
