"""``nndiag search``: the search from the command line, with defaults read from
``[tool.nndiag.search]`` in pyproject.toml and a progress bar on a terminal.

Every worker of a shared study runs the same command (same ``--storage`` and ``--study``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from nndiag.errors import InvalidSetting, describe
from nndiag.tuning.engine import DEFAULT_STORAGE, PRUNERS, SAMPLERS, Progress
from nndiag.tuning.space import parse_param

__all__ = ["add_arguments", "run", "settings"]

# Keys of [tool.nndiag.search]; each is also an option (``--name``), which wins over it.
KEYS = {
    "factory": "'module:function' building an nndiag.Subject from a dict of params",
    "space": "list of 'name=log:LOW:HIGH' / 'name=uniform:LOW:HIGH' / 'name=choice:A,B'",
    "trials": "trials per stage (an int, or one per stage)",
    "stages": "stages, coarse to fine",
    "steps": "training steps per trial (an int, or one per stage)",
    "validation": "'module:name' of (X_val, y_val), or of a function returning it",
    "storage": "an Optuna storage URL",
    "study": "the study name",
    "seed": "the seed",
    "sampler": "random or tpe",
    "pruner": "median, halving or none",
    "evals": "validation checkpoints per trial",
    "jobs": "worker processes on this machine",
    "html": "the page written at the end",
    "json": "the JSON file written at the end",
}
DEFAULTS: dict[str, Any] = {
    "trials": 20,
    "stages": 2,
    "steps": 100,
    "seed": 0,
    "sampler": "random",
    "pruner": "median",
    "evals": 4,
    "jobs": 1,
    "html": "reports/search.html",
    "json": "reports/search.json",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's options; every default is None so that pyproject.toml can fill it."""
    parser.add_argument("factory", nargs="?", metavar="MODULE:FUNCTION", help=KEYS["factory"])
    parser.add_argument(
        "--space",
        action="append",
        metavar="NAME=KIND:...",
        help="one hyperparameter (repeat the option): lr=log:1e-5:1e-1, "
        "momentum=uniform:0.5:0.99, opt=choice:sgd,adam",
    )
    for name in ("trials", "steps"):
        parser.add_argument(
            f"--{name}", metavar="N[,N...]", help=f"{KEYS[name]} (default {DEFAULTS[name]})"
        )
    for name in ("stages", "seed", "evals", "jobs"):
        parser.add_argument(
            f"--{name}", type=int, metavar="N", help=f"{KEYS[name]} (default {DEFAULTS[name]})"
        )
    parser.add_argument("--validation", metavar="MODULE:NAME", help=KEYS["validation"])
    parser.add_argument(
        "--storage", metavar="URL", help=f"{KEYS['storage']} (default: SQLite {DEFAULT_STORAGE})"
    )
    parser.add_argument(
        "--study", metavar="NAME", help="the study name (default: from the factory and settings)"
    )
    parser.add_argument("--sampler", choices=SAMPLERS, help="the sampler (default random)")
    parser.add_argument("--pruner", choices=PRUNERS, help="the pruner (default median)")
    parser.add_argument("--html", metavar="PAGE.html", help=f"default {DEFAULTS['html']}")
    parser.add_argument("--json", metavar="RESULT.json", help=f"default {DEFAULTS['json']}")
    parser.add_argument(
        "--config",
        metavar="pyproject.toml",
        default="pyproject.toml",
        help="where [tool.nndiag.search] is read (default ./pyproject.toml, if present)",
    )


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The search's settings: the options given, else [tool.nndiag.search], else defaults.

    Raises:
        InvalidSetting: an unknown key, a value that cannot be read, a factory that does
            not import.
    """
    table = _table(Path(args.config))
    chosen: dict[str, Any] = dict(DEFAULTS)
    chosen.update(table)
    for key in KEYS:
        value = getattr(args, key, None)
        if value is not None:
            chosen[key] = value
    if not chosen.get("factory"):
        raise InvalidSetting(
            "factory", "not given", "pass MODULE:FUNCTION or set factory in [tool.nndiag.search]"
        )
    space = chosen.get("space")
    if not space:
        raise InvalidSetting(
            "--space", "not given", "pass --space 'lr=log:1e-5:1e-1' or set space in pyproject"
        )
    if isinstance(space, str):
        space = [space]
    chosen["space"] = dict(parse_param(str(item)) for item in space)
    for key in ("trials", "steps"):
        chosen[key] = _counts(key, chosen[key])
    chosen["factory"] = load(chosen["factory"], "factory")
    if chosen.get("validation") is not None:
        found = load(chosen["validation"], "validation")
        chosen["validation"] = found() if callable(found) else found
    return chosen


def _table(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - 3.10 only
        import tomli as tomllib
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidSetting(str(path), f"cannot read it: {exc}") from None
    table = data.get("tool", {}).get("nndiag", {}).get("search", {})
    if not isinstance(table, Mapping):
        raise InvalidSetting(f"[tool.nndiag.search] in {path}", "is not a table")
    found = {str(k).replace("-", "_"): v for k, v in table.items()}
    unknown = sorted(set(found) - set(KEYS))
    if unknown:
        raise InvalidSetting(
            f"[tool.nndiag.search] in {path}",
            f"unknown key(s) {', '.join(map(repr, unknown))}",
            f"use {', '.join(KEYS)}",
        )
    return found


def _counts(key: str, value: Any) -> int | list[int]:
    if isinstance(value, (int, list)):
        return value
    try:
        parts = [int(v) for v in str(value).split(",")]
    except ValueError:
        raise InvalidSetting(f"--{key}", f"expected N or N,N,..., got {value!r}") from None
    return parts[0] if len(parts) == 1 else parts


def load(target: Any, what: str) -> Any:
    """``module:name`` imported, with the current folder importable (as pytest's rootdir)."""
    if not isinstance(target, str) or ":" not in target:
        raise InvalidSetting(what, f"expected 'module:name', got {describe(target)}")
    module, _, name = target.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        found = importlib.import_module(module)
    except Exception as exc:
        raise InvalidSetting(
            what, f"cannot import {module!r}: {type(exc).__name__}: {exc}", "check the module path"
        ) from None
    try:
        for part in name.split("."):
            found = getattr(found, part)
    except AttributeError:
        raise InvalidSetting(what, f"{module!r} has no {name!r}") from None
    return found


def run(args: argparse.Namespace, stream: TextIO | None = None) -> dict[str, Any]:
    """Run the search of ``args``; returns what was written and the result."""
    from nndiag.tuning.engine import search

    chosen = settings(args)
    stream = sys.stderr if stream is None else stream
    bar = ProgressBar(stream)
    result = search(
        chosen["factory"],
        chosen["space"],
        trials=chosen["trials"],
        stages=chosen["stages"],
        steps=chosen["steps"],
        validation=chosen.get("validation"),
        storage=chosen.get("storage"),
        study=chosen.get("study"),
        seed=chosen["seed"],
        sampler=chosen["sampler"],
        pruner=chosen["pruner"],
        evals=chosen["evals"],
        jobs=chosen["jobs"],
        progress=bar,
    )
    bar.close()
    return {"result": result, "html": Path(chosen["html"]), "json": Path(chosen["json"])}


class ProgressBar:
    """Trials done, the best so far and an ETA: one redrawn line on a terminal, a plain
    line per trial otherwise (logs, CI)."""

    WIDTH = 24

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.drawn = False

    def __call__(self, progress: Progress) -> None:
        best = "none yet" if progress.best is None else f"{progress.best:.4g}"
        eta = _duration(progress.eta_seconds)
        text = (
            f"{progress.done}/{progress.total} trials (stage {progress.stage + 1}), "
            f"best {progress.metric} {best}, ETA {eta}"
        )
        if self.tty:
            filled = round(self.WIDTH * progress.done / max(1, progress.total))
            self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {text}\x1b[K")
            self.drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def report(outcome: Mapping[str, Any], write: Callable[[str], None]) -> None:
    """Write the page and the JSON, and say what was found."""
    result = outcome["result"]
    counts = result.counts()
    best = result.best_value
    write(
        f"best {result.metric} {'none' if best is None else f'{best:.4g}'} at "
        f"{result.best_params} ({counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['fail']} failed)"
    )
    write(f"wrote {result.to_html(outcome['html'])}")
    write(f"wrote {result.to_json(outcome['json'])}")
    write(f"resume or extend: {result.command}")
