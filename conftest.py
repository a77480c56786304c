"""Repository-wide pytest settings for nndiag's own test suite.

Hypothesis runs derandomized under CI (the CI environment variable is set), so a healthy
model can never flake there; locally it explores with fresh seeds.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
