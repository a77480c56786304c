"""What rides on a test report must cross xdist's execnet channel: plain Python values."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from nndiag._pytest.items import _properties
from nndiag.results import CheckResult, Cost

PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return type(value) in PLAIN


def test_junit_properties_of_numpy_metrics_are_plain_values() -> None:
    result = CheckResult(
        "gradient_check",
        "pass",
        "ok",
        metrics={
            "max_rel_error": np.float64(1e-9),
            "tensors": np.int64(4),
            "worst": "fc.weight",
            "nan": float("nan"),
            "table": [1.0, 2.0],
        },
        evidence={"curve": np.arange(3.0)},
        cost=Cost(1, 1, 0.5),
        subject="m",
    )
    data = result.to_dict()
    properties = _properties(data)
    assert _plain(properties)
    assert dict(properties) == {
        "nndiag.status": "pass",
        "nndiag.seconds": 0.5,
        "nndiag.max_rel_error": 1e-9,
        "nndiag.tensors": 4,
        "nndiag.worst": "fc.weight",
        "nndiag.nan": "NaN",
    }
    assert _plain(data) and json.loads(json.dumps(data)) == data
