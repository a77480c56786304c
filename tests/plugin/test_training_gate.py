"""The training check as a CI gate: ``pytest --nndiag`` fails a subject whose short real
training run diverges, and the JUnit report carries the figures."""

from __future__ import annotations

import pytest


def test_a_ci_gate_reads_the_figures_from_junit(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import torch
        from torch import nn
        import nndiag

        @nndiag.subject(checks=["training"])
        def mlp():
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
            x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
            opt = torch.optim.SGD(model.parameters(), lr=100.0)
            return nndiag.Subject(model, (x, y), optimizer=opt)
        """
    )
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    result = pytester.runpytest_subprocess("--nndiag", "--junitxml=junit.xml", "-p", "no:randomly")
    result.assert_outcomes(failed=1)
    junit = (pytester.path / "junit.xml").read_text()
    assert '<property name="nndiag.status" value="fail"' in junit
    assert '<property name="nndiag.steps" value="' in junit
    assert 'name="nndiag.loss_spike_step"' in junit or 'name="nndiag.nonfinite_step"' in junit
