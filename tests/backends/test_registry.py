"""Backend detection: by the model's type, never importing a framework on its own."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import nndiag
from nndiag import backends
from nndiag.errors import InvalidSubject


def test_a_numpy_model_is_diagnosed_without_importing_torch_or_jax() -> None:
    code = """
import sys
sys.path.insert(0, ".")
import nndiag
from tests.backends import numpy_models as M
report = nndiag.diagnose(nndiag.Subject(M.net(0), M.data(0)), ["initial_loss"])
assert report.passed, report.results
loaded = [m for m in ("torch", "jax") if m in sys.modules]
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_third_party_backends_register_through_entry_points(monkeypatch: Any) -> None:
    class Marker:
        pass

    class Backend:
        name = "marker"

        def accepts(self, model: Any) -> bool:
            return isinstance(model, Marker)

    class EntryPoint:
        def load(self) -> Backend:
            return Backend()

    def entry_points(group: str) -> list[EntryPoint]:
        return [EntryPoint()] if group == backends.ENTRY_POINT_GROUP else []

    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
    assert backends.backend_for(Marker()).name == "marker"
    with pytest.raises(InvalidSubject, match="no nndiag backend accepts"):
        backends.backend_for(object())


def test_unknown_models_name_every_supported_form() -> None:
    with pytest.raises(InvalidSubject) as info:
        nndiag.Subject(object(), ([1.0], [0]))
    assert "torch.nn.Module" in info.value.fix and "CS231n" in info.value.fix
    assert "apply_fn" in info.value.fix
