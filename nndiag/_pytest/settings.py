"""The settings of one ``--nndiag`` run: the command line and ``[tool.nndiag]``, read once.

Everything is validated here, at configure time, so that a typo in pyproject.toml is a usage
error before collection rather than a failure in the middle of a run.
"""

from __future__ import annotations

import difflib
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest

from nndiag._pytest.common import WORKER_SEED, WORKER_SEED_FORCED
from nndiag.checks import registry
from nndiag.config import Config
from nndiag.errors import describe

__all__ = ["ALL_CHECKS", "CONFIG_FIELDS", "Settings", "check_ids", "config_options"]

# Every id an item can run: the registry's, nndiag's own first.
ALL_CHECKS: tuple[str, ...] = tuple(registry())
# Hypothesis examples that shrink a batch_independence failure to a minimal batch.
DEFAULT_PROPERTY_EXAMPLES = 25
# [tool.nndiag] keys that belong to the plugin (the rest are Config fields).
PLUGIN_KEYS: dict[str, str] = {
    "subjects": "list of 'module:function' subject factories",
    "overrides": "per-subject tables: [tool.nndiag.overrides.<subject>]",
    "strict": "bool: warnings fail",
    "report_dir": "report directory, relative to pyproject.toml",
    "property_examples": "Hypothesis examples that shrink a batch_independence failure",
    "search": "defaults of `nndiag search`: [tool.nndiag.search]",
}
# Keys of a [tool.nndiag.overrides.<subject>] table besides Config fields (checks included).
OVERRIDE_KEYS: dict[str, str] = {
    "xfail": "check ids expected to fail for this subject",
    "property_examples": "Hypothesis examples that shrink a batch_independence failure",
}
CONFIG_FIELDS = tuple(f.name for f in fields(Config))


def _usage(where: str, problem: str) -> pytest.UsageError:
    return pytest.UsageError(f"nndiag: {where}: {problem}")


def _normalized(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise _usage(where, f"expected a table, got {describe(table)}")
    return {str(k).replace("-", "_"): v for k, v in table.items()}


def config_options(table: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a table that are Config fields; ``checks`` is the plugin's to resolve."""
    return {k: v for k, v in table.items() if k in CONFIG_FIELDS and k != "checks"}


def check_ids(value: Any, where: str) -> tuple[str, ...] | None:
    """Validated check ids from a list or a comma-separated string (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} expects a list of check ids, got {describe(value)}")
    unknown = [v for v in value if v not in ALL_CHECKS]
    if unknown:
        close = [m for v in unknown for m in difflib.get_close_matches(v, ALL_CHECKS, n=1)]
        guess = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"{where} names unknown check(s) {', '.join(map(repr, unknown))}{guess}; "
            f"known checks: {', '.join(ALL_CHECKS)}"
        )
    return tuple(dict.fromkeys(value))


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} expects an int >= 1, got {describe(value)}")
    return value


def _pyproject(config: pytest.Config) -> Path | None:
    """The pyproject.toml that configures this run: pytest's own when it is one, else the
    rootdir's."""
    inipath = config.inipath
    if inipath is not None and inipath.name == "pyproject.toml":
        return inipath
    candidate = config.rootpath / "pyproject.toml"
    return candidate if candidate.is_file() else None


def _read_table(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise _usage(str(path), f"cannot read it: {exc}") from None
    table = data.get("tool", {}).get("nndiag", {})
    return _normalized(table, f"[tool.nndiag] in {path}")


def _read_overrides(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"overrides expects tables [tool.nndiag.overrides.<subject>], got {describe(raw)}"
        )
    known = sorted({*CONFIG_FIELDS, *OVERRIDE_KEYS})
    overrides: dict[str, dict[str, Any]] = {}
    for subject_name, table in raw.items():  # subject names are ids: kept as written
        here = f"[tool.nndiag.overrides.{subject_name}]"
        options = _normalized(table, here)
        unknown = [k for k in options if k not in known]
        if unknown:
            raise ValueError(
                f"{here}: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known keys: {', '.join(known)}"
            )
        Config.from_mapping(config_options(options))  # types, early
        check_ids(options.get("checks"), f"{here} checks")
        check_ids(options.get("xfail", []), f"{here} xfail")
        if "property_examples" in options:
            _positive_int(options["property_examples"], f"{here} property-examples")
        overrides[str(subject_name)] = options
    return overrides


def _seed(config: pytest.Config, base: Config, in_toml: bool) -> tuple[int, str, bool]:
    """The run's seed, where it comes from, and whether it overrides subjects' own seeds."""
    workerinput = getattr(config, "workerinput", None)  # set by xdist on its workers
    if isinstance(workerinput, dict) and WORKER_SEED in workerinput:
        # Forced only where the controller's was: a subject's own seed= still holds.
        return (
            int(workerinput[WORKER_SEED]),
            "from the xdist controller",
            bool(workerinput.get(WORKER_SEED_FORCED, False)),
        )
    text = config.getoption("nndiag_seed")
    if text is None:
        return base.seed, "[tool.nndiag] seed" if in_toml else "default", False
    if str(text).strip().lower() == "random":
        return random.SystemRandom().randrange(2**31), "--nndiag-seed random", True
    try:
        seed = int(text)
    except ValueError:
        raise pytest.UsageError(
            f"--nndiag-seed expects an int >= 0 or 'random', got {text!r}"
        ) from None
    if seed < 0:
        raise pytest.UsageError(f"--nndiag-seed expects an int >= 0, got {seed}")
    return seed, "--nndiag-seed", True


@dataclass(frozen=True)
class Settings:
    """The options of one ``--nndiag`` run, validated.

    Attributes:
        seed: The seed the header prints; every subject's when ``seed_forced``.
        seed_origin: Where the seed comes from, for the header.
        seed_forced: Whether ``seed`` overrides the subjects' own (a command-line seed).
        cli_checks: ``--nndiag-checks``, or None.
        report_dir: Where nndiag.json and nndiag.html go.
        strict: Whether a warning fails its test.
        property_examples: Hypothesis examples that shrink a batch_independence failure.
        examples_forced: Whether ``property_examples`` overrides the subjects' own.
        base: The Config every subject starts from (defaults and ``[tool.nndiag]``).
        global_checks: ``[tool.nndiag] checks``, or None.
        overrides: ``[tool.nndiag.overrides.<subject>]`` tables, keys normalized.
        subject_paths: ``[tool.nndiag] subjects`` entries, ``module:function``.
        pyproject: The pyproject.toml read, if any.
        invocation_dir: Where pytest was started; relative paths are shown from here.
    """

    seed: int
    seed_origin: str
    seed_forced: bool
    cli_checks: tuple[str, ...] | None
    report_dir: Path
    strict: bool
    property_examples: int
    examples_forced: bool
    base: Config
    global_checks: tuple[str, ...] | None
    overrides: Mapping[str, Mapping[str, Any]]
    subject_paths: tuple[str, ...]
    pyproject: Path | None
    invocation_dir: Path

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        """Read the command line and ``[tool.nndiag]`` once.

        Raises:
            pytest.UsageError: an unknown key, a value of the wrong type, an unknown check.
        """
        path = _pyproject(config)
        table = _read_table(path)
        where = f"[tool.nndiag] in {path}"
        known = sorted({*CONFIG_FIELDS, *PLUGIN_KEYS})
        unknown = [k for k in table if k not in known]
        if unknown:
            raise _usage(
                where,
                f"unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(known)}",
            )
        try:
            base = Config.from_mapping(config_options(table))
            global_checks = check_ids(table.get("checks"), f"{where} checks")
            overrides = _read_overrides(table.get("overrides", {}), where)
            property_examples = _positive_int(
                table.get("property_examples", DEFAULT_PROPERTY_EXAMPLES),
                f"{where} property-examples",
            )
        except (ValueError, TypeError) as exc:
            raise _usage(where, str(exc)) from None
        try:  # the option's own mistake: blamed on the option, not on pyproject.toml
            cli_checks = check_ids(config.getoption("nndiag_checks"), "--nndiag-checks")
        except ValueError as exc:
            raise pytest.UsageError(f"nndiag: {exc}") from None
        subject_paths = table.get("subjects", [])
        if not isinstance(subject_paths, list) or not all(
            isinstance(s, str) and s.partition(":")[0] and s.partition(":")[2]
            for s in subject_paths
        ):
            raise _usage(
                where,
                f"subjects expects a list of 'module:function' strings, got "
                f"{describe(subject_paths)}",
            )
        strict_toml = table.get("strict", False)
        if not isinstance(strict_toml, bool):
            raise _usage(where, f"strict expects true or false, got {describe(strict_toml)}")

        examples = config.getoption("nndiag_examples")
        if examples is not None:
            try:
                property_examples = _positive_int(examples, "--nndiag-examples")
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None

        seed, origin, forced = _seed(config, base, "seed" in table)
        invocation_dir = config.invocation_params.dir
        report_option = config.getoption("nndiag_report")
        if report_option is not None:
            report_dir = invocation_dir / report_option
        elif "report_dir" in table:
            if not isinstance(table["report_dir"], str):
                raise _usage(
                    where, f"report-dir expects a path, got {describe(table['report_dir'])}"
                )
            report_dir = (path.parent if path else config.rootpath) / table["report_dir"]
        else:
            report_dir = invocation_dir / "reports"
        return cls(
            seed=seed,
            seed_origin=origin,
            seed_forced=forced,
            cli_checks=cli_checks,
            report_dir=report_dir,
            strict=bool(config.getoption("nndiag_strict")) or strict_toml,
            property_examples=property_examples,
            examples_forced=examples is not None,
            base=base,
            global_checks=global_checks,
            overrides=overrides,
            subject_paths=tuple(subject_paths),
            pyproject=path,
            invocation_dir=invocation_dir,
        )

    def shown(self, path: Path) -> str:
        """``path`` relative to where pytest was started when it lies below, for messages."""
        try:
            return str(path.relative_to(self.invocation_dir))
        except ValueError:
            return str(path)
