"""Which subjects and checks the command line's arguments name.

pytest reads each argument as a path (``dir/``, ``file.py``, ``file.py::test``), so the id it
prints for a check, ``nndiag::<subject>::<check>``, would be "file or directory not found".
:meth:`Selection.take` removes those ids from ``config.args`` at configure time (on every
xdist worker too: workers parse the same command line) and keeps them as selectors.

The rule, documented in docs/pytest.md:

* no argument (pytest's ``testpaths`` or the current directory): every subject;
* ``nndiag``, ``nndiag::<subject>``, ``nndiag::<subject>::<check>``: those, and no ordinary
  test unless paths are given too;
* a path: the subjects whose factory is defined in a file at or under it (the conftest.py
  that declares them, or the module a ``[tool.nndiag] subjects`` entry names).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["ROOT", "Selection"]

ROOT = "nndiag"


def _is_id(arg: str) -> bool:
    return arg == ROOT or arg.startswith(ROOT + "::")


def _ungrouped(arg: str) -> str:
    """An id as printed under ``--dist loadgroup`` (``nndiag::mlp::numerics@mlp``) names
    the same check."""
    return arg.rsplit("@", 1)[0] if "@" in arg else arg


@dataclass(frozen=True)
class Selection:
    """What the arguments select.

    Attributes:
        ids: The ``nndiag[::subject[::check]]`` arguments, as given.
        paths: The path arguments, resolved; empty when pytest chose the paths itself.
        everything: No argument named a path or an id: every subject is selected.
        ids_only: Only ids were given: ordinary test files are not collected.
    """

    ids: tuple[str, ...]
    paths: tuple[Path, ...]
    everything: bool
    ids_only: bool

    @classmethod
    def take(cls, config: pytest.Config) -> Selection:
        """Read the arguments and remove the ids from ``config.args``, which pytest
        collects (with only ids left, it collects its default paths instead, for their
        conftest files)."""
        given = config.args_source == pytest.Config.ArgsSource.ARGS
        args = [str(a) for a in config.args]
        ids = tuple(_ungrouped(a) for a in args if _is_id(a)) if given else ()
        rest = [a for a in args if not _is_id(a)] if given else args
        if ids and not rest:
            rest = _default_args(config)
            config.args[:] = rest
            return cls(ids, (), False, True)
        if ids:
            config.args[:] = rest
        if not given or config.option.pyargs:  # module names: no file rule
            return cls(ids, (), not ids, False)
        base = config.invocation_params.dir
        paths = tuple((base / a.split("::", 1)[0]).resolve() for a in rest)
        return cls(ids, paths, False, False)

    def subject(self, name: str, path: Path) -> bool:
        """Whether any check of the subject ``name`` (defined in ``path``) is selected."""
        if self.everything or self._under(path):
            return True
        return any(
            i == ROOT or i == f"{ROOT}::{name}" or i.startswith(f"{ROOT}::{name}::")
            for i in self.ids
        )

    def check(self, name: str, path: Path, check: str) -> bool:
        """Whether the item ``nndiag::<name>::<check>`` is selected."""
        if self.everything or self._under(path):
            return True
        nodeid = f"{ROOT}::{name}::{check}"
        return any(nodeid == i or nodeid.startswith(i + "::") for i in self.ids)

    def unmatched(self, nodeids: set[str]) -> list[str]:
        """The id arguments that select none of ``nodeids``."""
        plain = {_ungrouped(n) for n in nodeids}
        return [i for i in self.ids if not any(n == i or n.startswith(i + "::") for n in plain)]

    def _under(self, path: Path) -> bool:
        resolved = path.resolve()
        return any(resolved == p or p in resolved.parents for p in self.paths)


def _default_args(config: pytest.Config) -> list[str]:
    """What pytest collects given no argument: ``testpaths`` (globbed) when started in the
    rootdir, else the current directory (as pytest's own ``Config._decide_args``)."""
    invocation_dir = config.invocation_params.dir
    found: list[str] = []
    if invocation_dir == config.rootpath:
        for pattern in config.getini("testpaths"):
            found.extend(sorted(glob.iglob(pattern, recursive=True)))
    return found or [str(invocation_dir)]
