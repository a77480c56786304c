"""Two workers share one study through a real PostgreSQL server (as N machines would):
each trial runs once, and the stages' counts are exact."""

from __future__ import annotations

import pytest

from tests.search.workers import shared_study

pytest.importorskip("optuna")


def test_two_workers_share_a_study_through_postgresql(postgres_url: str) -> None:
    shared_study(postgres_url, "shared-on-postgres")
