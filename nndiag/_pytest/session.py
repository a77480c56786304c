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
from nndiag._pytest.selection import Selection
from nndiag._pytest.settings import Settings

__all__ = ["NndiagSession"]


class NndiagSession:
    """One ``--nndiag`` run: settings read once, subjects built once per process (in
    ``runner``), results collected on the controller (in ``reporter``)."""

    def __init__(self, settings: Settings, selection: Selection | None = None) -> None:
        self.settings = settings
        self.selection = selection or Selection((), (), True, False)
        self.runner = CheckRunner()
        self.reporter = Reporter(settings)

    @classmethod
    def from_config(cls, config: pytest.Config) -> NndiagSession:
        """Read the options once, and take the ``nndiag::`` ids out of the arguments.

        Raises:
            pytest.UsageError: bad settings (see :meth:`Settings.from_config`).
        """
        return cls(Settings.from_config(config), Selection.take(config))

    def collect(self, session: pytest.Session) -> list[pytest.Item]:
        """The selected items, under one ``nndiag`` node of ``session``.

        Raises:
            pytest.UsageError: an ``nndiag::`` argument that names no collected check.
        """
        root = NndiagRoot.from_parent(session, name="nndiag", nodeid="nndiag", nndiag=self)
        items = list(session.genitems(root))
        unmatched = self.selection.unmatched({item.nodeid for item in items})
        if unmatched and self.reporter.discovered is not None:
            known = self.reporter.known or {}
            where = (
                ", ".join(known)
                if known
                else "none found here: subjects are the @nndiag.subject factories of the "
                "conftest.py files pytest loads, so run from the directory that holds "
                "them (cd examples && pytest --nndiag ...)"
            )
            raise pytest.UsageError(
                f"nndiag: no check of this run is named {', '.join(unmatched)}; ids are "
                f"nndiag::<subject>::<check>; subjects: {where} "
                "(list the ids with pytest --nndiag --collect-only -q)"
            )
        return items

    def plan(self, spec: SubjectSpec) -> Plan:
        """What runs for ``spec`` under this run's settings (see :func:`plan_for`)."""
        return plan_for(self.settings, spec)
