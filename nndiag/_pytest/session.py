"""The object a ``--nndiag`` run keeps in ``config.stash``: its settings, the check runner
and the reporter, which the plugin's hooks and the collection nodes reach through it.

Loaded by :mod:`nndiag.plugin` only when ``--nndiag`` is given. Imports nndiag's core (no
framework); torch loads when a subject's factory runs, hypothesis when batch_independence
does.
"""

from __future__ import annotations

import pytest

from nndiag._pytest.items import CheckRunner, NndiagRoot
from nndiag._pytest.plan import Plan, SubjectSpec, plan_for
from nndiag._pytest.reporting import Reporter
from nndiag._pytest.settings import Settings

__all__ = ["NndiagSession"]


class NndiagSession:
    """One ``--nndiag`` run: settings read once, subjects built once per process (in
    ``runner``), results collected on the controller (in ``reporter``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runner = CheckRunner()
        self.reporter = Reporter(settings)

    @classmethod
    def from_config(cls, config: pytest.Config) -> NndiagSession:
        """Read the options once.

        Raises:
            pytest.UsageError: bad settings (see :meth:`Settings.from_config`).
        """
        return cls(Settings.from_config(config))

    def collect(self, session: pytest.Session) -> list[pytest.Item]:
        """The items of every subject, under one ``nndiag`` node of ``session``."""
        root = NndiagRoot.from_parent(session, name="nndiag", nodeid="nndiag", nndiag=self)
        return list(session.genitems(root))

    def plan(self, spec: SubjectSpec) -> Plan:
        """What runs for ``spec`` under this run's settings (see :func:`plan_for`)."""
        return plan_for(self.settings, spec)
