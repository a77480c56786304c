"""The command a report prints to run one check again, from where the run was launched.

A subject is found only where pytest loads the ``conftest.py`` that declares it, so the
command changes directory when a bare ``pytest`` run from the launch directory would not
load it: to the project's root (``pytest --nndiag proj/`` launched above ``proj``), or to the
conftest's own directory when the root's ``testpaths`` leave it out. Each result keeps its own
command, so results kept from earlier runs keep theirs.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from pathlib import Path

import pytest

__all__ = ["rerun_command"]

_PLAIN = re.compile(r"[\w@%+=:,./-]+")


def rerun_command(
    config: pytest.Config,
    report_dir: Path,
    defined_in: Path,
    nodeid: str,
    seed: int | None,
) -> str:
    """``[cd DIR && ]pytest --nndiag "NODEID"[ --nndiag-report=R][ --nndiag-seed=S]`` for a
    subject declared in ``defined_in`` (its conftest.py, or the pyproject.toml whose
    ``subjects`` list names it). The report option keeps the rerun merging into
    ``report_dir``; the seed is given when the command line chose it."""
    launched = config.invocation_params.dir
    home = _directory(config, defined_in)
    # One token each: pytest finds the root directory before it knows these options, and
    # would take a separate value for a path to collect.
    command = f'pytest --nndiag "{nodeid}"'
    if report_dir.resolve() != (home / "reports").resolve():
        command += f" --nndiag-report={_quote(_relative(report_dir, home))}"
    if seed is not None:
        command += f" --nndiag-seed={seed}"
    if home.resolve() == launched.resolve():
        return command
    change = "cd /d" if os.name == "nt" else "cd"  # cmd.exe changes drive only with /d
    return f"{change} {_quote(_relative(home, launched))} && {command}"


def _directory(config: pytest.Config, defined_in: Path) -> Path:
    """Where a bare run loads the subject's conftest: the launch directory when it is in the
    project, else the root, else the conftest's own directory."""
    root, launched = config.rootpath, config.invocation_params.dir
    if defined_in.name != "conftest.py":
        return launched if _within(launched, root) else root  # settings are read anywhere
    home = defined_in.parent
    for start in (launched, root):
        if _within(start, root) and any(_loads(path, home) for path in _collected(config, start)):
            return start
    return home


def _collected(config: pytest.Config, start: Path) -> list[Path]:
    """What pytest collects given no argument in ``start`` (as its ``Config._decide_args``):
    ``testpaths`` (globbed) in the root directory, else ``start`` itself."""
    found: list[Path] = []
    if start.resolve() == config.rootpath.resolve():
        for pattern in config.getini("testpaths"):
            matched = glob.iglob(pattern, root_dir=start, recursive=True)
            found += [start / path for path in sorted(matched)]
    return found or [start]


def _loads(collected: Path, home: Path) -> bool:
    """Whether collecting ``collected`` surely loads the conftest.py in ``home``: one in
    the collected directory or above it. One below it loads only where pytest recurses
    (not into ``norecursedirs``, ``--ignore`` or ``collect_ignore``): the command then
    changes to the conftest's own directory, which always loads it."""
    return _within(collected, home)


def _within(path: Path, directory: Path) -> bool:
    path, directory = path.resolve(), directory.resolve()
    return path == directory or directory in path.parents


def _relative(path: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive: the absolute path
        return path.resolve().as_posix()


def _quote(text: str) -> str:
    """A path as one shell word that POSIX shells and cmd.exe both read: bare when plain,
    else in double quotes (cmd.exe knows no single quotes), else as POSIX quotes it."""
    if _PLAIN.fullmatch(text):
        return text
    if os.name == "nt" or not set(text) & set('"$`\\!'):
        return f'"{text}"'
    return shlex.quote(text)
