"""The plugin loads in every pytest run: it must cost nothing without --nndiag."""

from __future__ import annotations

import re
import subprocess
import sys

HEAVY = (
    "torch",
    "numpy",
    "matplotlib",
    "jax",
    "hypothesis",
    "jinja2",
    "nndiag._pytest.settings",
    "nndiag._pytest.plan",
    "nndiag._pytest.items",
    "nndiag._pytest.reporting",
    "nndiag._pytest.session",
    "nndiag.properties",
    "nndiag.strategies",
)


def test_importing_the_plugin_imports_no_heavy_module() -> None:
    code = (
        "import sys\n"
        "import nndiag.plugin\n"
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m in {HEAVY!r}]\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_a_run_without_nndiag_loads_nothing_heavy(tmp_path) -> None:
    (tmp_path / "test_plain.py").write_text(
        "import sys\n"
        "def test_nothing_heavy():\n"
        f"    heavy = {HEAVY!r}\n"
        "    assert [m for m in sys.modules if m.split('.')[0] in heavy or m in heavy] == []\n"
    )
    # Other plugins off: what is measured is nndiag's own footprint.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:hypothesis",
            "-p",
            "no:benchmark",
            "-p",
            "no:xdist",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout
    assert re.search(r"^plugins: .*nndiag-", result.stdout, re.M)  # loaded, and idle
