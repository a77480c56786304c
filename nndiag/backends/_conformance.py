"""Static proof, for mypy only, that each backend's session and trainer satisfy the contract
the checks are written against (a Protocol is structural: nothing else would say so)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nndiag.backends.jax.session import JaxSession
    from nndiag.backends.numpy import NumpySession
    from nndiag.backends.torch.session import TorchSession
    from nndiag.contract import Session

    def _torch(session: TorchSession) -> Session:
        return session

    def _numpy(session: NumpySession) -> Session:
        return session

    def _jax(session: JaxSession) -> Session:
        return session
