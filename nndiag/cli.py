"""The ``nndiag`` console script.

Subcommands:
    report    re-render a saved JSON report as a self-contained HTML page.
    checks    list the check registry.
    search    search hyperparameters, coarse to fine, on Optuna (the ``search`` extra).

Exit codes: 0 success, 1 the output could not be written, 2 bad usage or bad input (a
missing file, a file that is not an nndiag JSON report). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nndiag.results import Report

__all__ = ["main"]

PROG = "nndiag"
EXIT_OK, EXIT_OUTPUT, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nndiag`` command line.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit code: 0 on success, 1 when the output cannot be written, 2 on bad usage
        or bad input.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage (or --help) already
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    command: Callable[[argparse.Namespace], int] | None = getattr(args, "command", None)
    if command is None:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: choose a command (see {PROG} --help)", file=sys.stderr)
        return EXIT_USAGE
    try:
        code = command(args)
        sys.stdout.flush()  # inside the try: a reader that left is seen here
        return code
    except CommandError as exc:
        print(f"{PROG} {args.name}: error: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # `nndiag checks | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OUTPUT


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each subcommand registers itself through an ``_add_*`` function."""
    from nndiag import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The CS231n neural-network sanity checks from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_report(subparsers)
    _add_checks(subparsers)
    _add_search(subparsers)
    return parser


# --------------------------------------------------------------------------- search


def _add_search(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from nndiag.tuning.command import add_arguments

    parser = subparsers.add_parser(
        "search",
        help="search hyperparameters in stages, coarse to fine (pip install optuna==5.0.0)",
        description="Search hyperparameters as the lecture does: random draws, log ranges, "
        "a coarse stage then finer ones, trials aborted once their loss passes 3x its start. "
        "Options override [tool.nndiag.search] in pyproject.toml. N workers on N machines "
        "run the same command with the same --storage and --study and share the trials; "
        "running it again resumes.",
    )
    add_arguments(parser)
    parser.set_defaults(command=_search, name="search")


def _search(args: argparse.Namespace) -> int:
    from nndiag.errors import BackendUnavailable, InvalidSetting
    from nndiag.tuning.command import report, run

    try:
        outcome = run(args)
    except (InvalidSetting, BackendUnavailable) as exc:
        raise CommandError(str(exc)) from None
    except KeyboardInterrupt:
        print("\ninterrupted: the running trial is queued again; rerun to resume", file=sys.stderr)
        return 130
    try:
        report(outcome, print)
    except OSError as exc:
        raise CommandError(f"cannot write the result: {exc.strerror or exc}", EXIT_OUTPUT) from None
    return EXIT_OK


# --------------------------------------------------------------------------- checks


def _add_checks(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "checks",
        help="list every check: nndiag's own and those registered by installed packages",
        description="List the check registry: id, whether it runs by default (and why), "
        "what it asks, and the Config fields it reads.",
    )
    parser.set_defaults(command=_checks, name="checks")


def _checks(args: argparse.Namespace) -> int:
    import shutil
    import textwrap

    from nndiag.checks import registry
    from nndiag.config import Config

    defaults = Config()
    width = min(shutil.get_terminal_size((100, 24)).columns, 100)
    indent = " " * 4
    for spec in registry().values():
        print(f"{spec.id} ({'default' if spec.default else 'opt-in'})")
        print(textwrap.fill(spec.doc, width, initial_indent=indent, subsequent_indent=indent))
        cost = f"cost: {spec.why}"
        print(textwrap.fill(cost, width, initial_indent=indent, subsequent_indent=indent * 2))
        if spec.settings:
            print(f"{indent}settings, as [tool.nndiag] takes them:")
        for name in spec.settings:
            print(f"{indent * 2}{name.replace('_', '-')} = {_toml(getattr(defaults, name))}")
    return EXIT_OK


def _toml(value: object) -> str:
    """A default as it is written in pyproject.toml."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


# --------------------------------------------------------------------------- report


def _add_report(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "report",
        help="render a saved JSON report as a self-contained HTML page",
        description="Render a JSON report written by nndiag (Report.to_json, or the pytest "
        "plugin's reports/nndiag.json) as one self-contained HTML page, the same page "
        "Report.to_html writes.",
    )
    parser.add_argument("input", metavar="REPORT.json", help="the JSON report to read")
    parser.add_argument(
        "-o",
        "--output",
        metavar="PAGE.html",
        default=None,
        help="where to write the page (default: the input's path with the suffix .html)",
    )
    parser.add_argument(
        "--against",
        metavar="OLD.json",
        default=None,
        help="an earlier JSON report: the page opens with what newly fails, what was fixed "
        "and which metrics moved (default: no comparison)",
    )
    parser.set_defaults(command=_report, name="report")


def _report(args: argparse.Namespace) -> int:
    from nndiag.report import SEARCH_JSON, write_html

    source = Path(args.input)
    target = Path(args.output) if args.output else source.with_suffix(".html")
    report = _load(source)
    earlier = _load(Path(args.against)) if args.against else None
    if target.resolve() == source.resolve():
        raise CommandError(f"the output {target} would overwrite the input; pass -o PAGE.html")
    try:
        # The search section of the page written beside the JSON, wherever this one goes.
        beside = source.parent / SEARCH_JSON
        search = beside if beside.exists() else None
        written = write_html(report, target, against=earlier, search=search)
    except OSError as exc:
        raise CommandError(f"cannot write {target}: {exc.strerror or exc}", EXIT_OUTPUT) from None
    print(f"wrote {written}")
    return EXIT_OK


def _load(path: Path) -> Report:
    from nndiag.results import load_report  # lazily: --help stays fast

    if not path.exists():
        raise CommandError(f"no such file: {path}")
    if path.is_dir():
        raise CommandError(f"{path} is a directory, expected a JSON report file")
    try:
        return load_report(path)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{path} is not a text file; expected an nndiag JSON report") from None
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"{path} is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "expected an nndiag JSON report"
        ) from None
    except ValueError as exc:  # Report.from_dict: wrong or missing schema
        raise CommandError(f"{path}: {exc}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise CommandError(
            f"{path} is not a well-formed nndiag report ({type(exc).__name__}: {exc})"
        ) from None


if __name__ == "__main__":
    raise SystemExit(main())
