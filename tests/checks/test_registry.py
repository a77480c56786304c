"""The check registry: every list derives from the records, and a third-party check
registered through the entry-point group runs like nndiag's own (the one in
docs/writing-a-check.md, exactly as written there)."""

from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from torch import nn

import nndiag
from nndiag.checks import BUILTIN, UnknownCheck, get_check, registry
from nndiag.config import DEFAULT_CHECKS, Config

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing-a-check.md"
# Run-level settings every check may read; the rest belong to exactly one check's section.
RUN_LEVEL = {"seed", "max_batches", "max_samples", "check_seconds", "checks"}


def test_every_config_field_belongs_to_a_check_section() -> None:
    owners: dict[str, list[str]] = {}
    for spec in BUILTIN:
        for name in spec.settings:
            owners.setdefault(name, []).append(spec.id)
    known = {f.name for f in fields(Config)}
    assert set(owners) <= known, set(owners) - known
    orphans = known - RUN_LEVEL - set(owners)
    assert not orphans, f"Config fields no check declares: {sorted(orphans)}"


def test_lists_derive_from_the_records() -> None:
    assert DEFAULT_CHECKS == tuple(s.id for s in BUILTIN if s.default)
    assert {"batch_independence", "numerics"} <= set(DEFAULT_CHECKS)
    for spec in BUILTIN:
        assert callable(spec.load()), spec.id
        assert spec.doc and spec.why, spec.id
    from nndiag.report import plots

    assert set(plots.PLOTTERS) == {s.id for s in BUILTIN if s.plot is not None}


def test_unknown_check_is_a_value_error_listing_the_ids() -> None:
    with pytest.raises(UnknownCheck, match="known checks: initial_loss") as info:
        get_check("initial_los")
    assert isinstance(info.value, ValueError)


@pytest.fixture
def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install the documented example as a package with an nndiag.checks entry point."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text().split("## Example")[1], re.S)
    assert code is not None
    (tmp_path / "mychecks.py").write_text(code.group(1))
    dist = tmp_path / "mychecks-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mychecks\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[nndiag.checks]\nlogit_scale = mychecks:LOGIT_SCALE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.cache_clear()
    yield
    registry.cache_clear()
    sys.modules.pop("mychecks", None)


def _subject(scale: float) -> nndiag.Subject:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[2].weight.mul_(scale)
    X = torch.randn(64, 8, generator=g)
    return nndiag.Subject(model, (X, torch.randint(0, 4, (64,), generator=g)))


def test_a_registered_check_runs_and_reports(registered: None, tmp_path: Path) -> None:
    assert "logit_scale" in registry()
    assert "logit_scale" not in nndiag.diagnose(_subject(1.0)).checks  # opt-in
    healthy = nndiag.diagnose(_subject(1.0), checks=["logit_scale"])["logit_scale"]
    broken = nndiag.diagnose(_subject(100.0), checks=["logit_scale"])["logit_scale"]
    assert healthy.status == "pass", healthy.message
    assert broken.status == "fail" and broken.metrics["logit_std"] > 1.0
    text = nndiag.Report([broken]).to_html(tmp_path / "r.html").read_text()
    assert "Standard deviation of the logits at init" in text and "data:image/png" in text


def test_a_broken_entry_point_is_left_out_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[nndiag.checks]\nbad = no_such_module:SPEC\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.cache_clear()
    try:
        with pytest.warns(UserWarning, match="'bad' failed to load"):
            checks = registry()
        assert "bad" not in checks and "initial_loss" in checks
    finally:
        registry.cache_clear()
