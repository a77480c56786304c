"""The example project as it ships: every planted bug caught, every healthy subject (one fed
by a DataLoader) silent, and the same verdicts serially and under ``pytest -n 2``, with no
thread count set (as on a user's machine: the workers' one thread each is nndiag's doing)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _verdicts(
    root: Path, *options: str, output: list[str] | None = None
) -> dict[tuple[str, str], str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env.pop("CI", None)  # the project's own Hypothesis profile choice is not under test
    report = root / "reports" / "nndiag.json"
    report.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nndiag", "-q", "-p", "no:randomly", *options],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    if output is not None:
        output.append(done.stdout)
    results = json.loads(report.read_text())["results"]
    return {(r["subject"], r["check"]): r["status"] for r in results}


def test_the_example_project_gets_the_same_verdicts_serially_and_under_xdist(
    tmp_path: Path,
) -> None:
    pytest.importorskip("xdist")
    root = tmp_path / "examples"
    shutil.copytree(EXAMPLES, root, ignore=shutil.ignore_patterns("reports", "__pycache__"))
    printed: list[str] = []
    serial = _verdicts(root, output=printed)
    assert serial == _verdicts(root, "-n", "2")
    _assert_the_guide_shows_this_run(printed[0])
    for check in ("initial_loss", "overfit_small", "gradient_check", "param_updates"):
        assert serial["mlp", check] == serial["mlp_loader", check] == "pass"
    assert serial["dead_relu", "overfit_small"] == "fail"  # xfail in pytest: expected
    assert serial["batch_mixer", "batch_independence"] == "fail"


def _assert_the_guide_shows_this_run(stdout: str) -> None:
    """docs/pytest.md's example output: the counts it quotes are this run's."""
    guide = (EXAMPLES.parent / "docs" / "pytest.md").read_text()
    example = guide.split("$ pytest --nndiag examples/")[1].split("```")[0]
    for pattern in (r"\d+ results: [^\n]*", r"\d+ passed[^\n]*? in"):
        quoted = re.search(pattern, example)
        ran = re.search(pattern, stdout)
        assert quoted and ran and quoted.group(0) == ran.group(0), (pattern, stdout[-1500:])
