"""xdist scheduling for ``pytest --nndiag -n N``: each subject's checks on one worker.

Under ``--dist load`` every worker that draws one of a subject's checks builds the subject
(its factory, the probe forward pass, the shared activation capture): on two workers a run
was slower than serial. Scheduling by scope, with a subject as the scope of its checks and
each other test its own, gives every subject to one worker and spreads the rest as ``load``
does. (xdist's own ``--dist loadgroup`` would do it with ``xdist_group`` marks, which the
items carry, but it renames node ids, which pytest 9 no longer lets it do.)

Imported only by the controller of an xdist run.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

__all__ = ["SubjectScheduling"]


class SubjectScheduling(LoadScopeScheduling):
    """``--dist load`` with one scope per subject: ``nndiag::<subject>``."""

    def _split_scope(self, nodeid: str) -> str:
        if nodeid.startswith("nndiag::"):
            return nodeid.rsplit("::", 1)[0]
        return nodeid
