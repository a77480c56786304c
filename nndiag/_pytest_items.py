"""What ``pytest --nndiag`` does: settings, subject discovery, items, reports.

Loaded by :mod:`nndiag.plugin` only when ``--nndiag`` is given. Imports nndiag's core (no
framework); torch loads when a subject's factory runs, hypothesis when a property check
does.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import random
import re
import shutil
import sys
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from nndiag.checks import registry
from nndiag.config import Config
from nndiag.core import Runner, error_result
from nndiag.errors import CheckFailed, InvalidSubject, describe
from nndiag.plugin import REPORT_ATTRIBUTE, NndiagWarning
from nndiag.properties import PROPERTY_CHECKS, run_property
from nndiag.results import STATUSES, CheckResult, Report, environment
from nndiag.subject import Subject, SubjectFactory

__all__ = ["ALL_CHECKS", "CheckItem", "NndiagSession"]

# Every id an item can run: nndiag's checks, then the Hypothesis property checks.
ALL_CHECKS: tuple[str, ...] = (*registry(), *PROPERTY_CHECKS)
# Hypothesis examples per property check: enough to meet batch sizes 1-16, constant,
# extreme and data rows; a tiny MLP runs them in ~0.1 s.
DEFAULT_PROPERTY_EXAMPLES = 25
PAYLOAD_VERSION = 1
# [tool.nndiag] keys that belong to the plugin (the rest are Config fields).
PLUGIN_KEYS: dict[str, str] = {
    "subjects": "list of 'module:function' subject factories",
    "overrides": "per-subject tables: [tool.nndiag.overrides.<subject>]",
    "strict": "bool: warnings fail",
    "report_dir": "report directory, relative to pyproject.toml",
    "property_examples": "Hypothesis examples per property check",
}
# Keys of a [tool.nndiag.overrides.<subject>] table besides Config fields (checks included).
OVERRIDE_KEYS: dict[str, str] = {
    "xfail": "check ids expected to fail for this subject",
    "property_examples": "Hypothesis examples per property check",
}
_CONFIG_FIELDS = tuple(f.name for f in fields(Config))
# Subject names become test ids: no spaces (-k expressions) and no '::' or '/' (node ids).
_ID = re.compile(r"[\w.\-]+")
_NNDIAG_DIR = str(Path(__file__).resolve().parent) + os.sep
_SHOWN = {
    "pass": "pass",
    "warn": "WARN",
    "fail": "FAIL",
    "skip": "skip",
    "error": "ERROR",
    "xfail": "xfail",
}
_MARKUP: dict[str, dict[str, bool]] = {
    "pass": {"green": True},
    "warn": {"yellow": True},
    "fail": {"red": True, "bold": True},
    "error": {"red": True, "bold": True},
    "skip": {},
    "xfail": {"yellow": True},
}


# -- settings -------------------------------------------------------------------------------------
def _usage(where: str, problem: str) -> pytest.UsageError:
    return pytest.UsageError(f"nndiag: {where}: {problem}")


def _normalized(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise _usage(where, f"expected a table, got {describe(table)}")
    return {str(k).replace("-", "_"): v for k, v in table.items()}


def _check_ids(value: Any, where: str) -> tuple[str, ...] | None:
    """Validated check ids from a list or a comma-separated string (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} expects a list of check ids, got {describe(value)}")
    unknown = [v for v in value if v not in ALL_CHECKS]
    if unknown:
        raise ValueError(
            f"{where} names unknown check(s) {', '.join(map(repr, unknown))}; "
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


@dataclass(frozen=True)
class SubjectSpec:
    """A subject as collected: where it comes from and how to build it (lazily)."""

    name: str
    index: int
    origin: str  # shown in messages: "conftest.py:12" or "[tool.nndiag] subjects 'm:f'"
    path: Path
    lineno: int
    factory: SubjectFactory | None
    load_error: str | None = None


@dataclass(frozen=True)
class Plan:
    """What runs for one subject: its checks in order, its Config, expected failures."""

    checks: tuple[str, ...]
    config: Config
    xfail: frozenset[str]
    property_examples: int


@dataclass(frozen=True)
class _Broken:
    """A subject whose factory could not be imported or raised: every item errors."""

    message: str
    hint: str
    frames: tuple[str, ...] = ()


class NndiagSession:
    """The options of one ``--nndiag`` run (read once) and its state: built subjects (per
    process) and collected results (on the controller)."""

    def __init__(
        self,
        *,
        seed: int,
        seed_origin: str,
        seed_forced: bool,
        cli_checks: tuple[str, ...] | None,
        report_dir: Path,
        strict: bool,
        property_examples: int,
        examples_forced: bool,
        base: Config,
        global_checks: tuple[str, ...] | None,
        overrides: dict[str, dict[str, Any]],
        subject_paths: tuple[str, ...],
        pyproject: Path | None,
        invocation_dir: Path,
    ) -> None:
        self.seed = seed
        self.seed_origin = seed_origin
        self.seed_forced = seed_forced
        self.cli_checks = cli_checks
        self.report_dir = report_dir
        self.strict = strict
        self.property_examples = property_examples
        self.examples_forced = examples_forced
        self.base = base
        self.global_checks = global_checks
        self.overrides = overrides
        self.subject_paths = subject_paths
        self.pyproject = pyproject
        self.invocation_dir = invocation_dir
        self._built: dict[str, tuple[Subject, Runner] | _Broken] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.written: list[Path] = []
        self.notes: list[str] = []
        self.discovered: int | None = None  # subjects found (None: not collected here)

    # -- reading the options ------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: pytest.Config) -> NndiagSession:
        """Read the command line and ``[tool.nndiag]`` once.

        Raises:
            pytest.UsageError: an unknown key, a value of the wrong type, an unknown check.
        """
        path = _pyproject(config)
        table = _read_table(path)
        where = f"[tool.nndiag] in {path}"
        known = sorted({*_CONFIG_FIELDS, *PLUGIN_KEYS})
        unknown = [k for k in table if k not in known]
        if unknown:
            raise _usage(
                where,
                f"unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(known)}",
            )
        try:
            base = Config.from_mapping(
                {k: v for k, v in table.items() if k in _CONFIG_FIELDS and k != "checks"}
            )
            global_checks = _check_ids(table.get("checks"), f"{where} checks")
            overrides = cls._read_overrides(table.get("overrides", {}), where)
            property_examples = _positive_int(
                table.get("property_examples", DEFAULT_PROPERTY_EXAMPLES),
                f"{where} property-examples",
            )
            cli_checks = _check_ids(config.getoption("nndiag_checks"), "--nndiag-checks")
        except (ValueError, TypeError) as exc:
            raise _usage(where, str(exc)) from None
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

        seed, origin, forced = cls._seed(config, base, "seed" in table)
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

    @staticmethod
    def _read_overrides(raw: Any, where: str) -> dict[str, dict[str, Any]]:
        if not isinstance(raw, Mapping):
            raise ValueError(
                f"overrides expects tables [tool.nndiag.overrides.<subject>], got {describe(raw)}"
            )
        known = sorted({*_CONFIG_FIELDS, *OVERRIDE_KEYS})
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
            Config.from_mapping(
                {k: v for k, v in options.items() if k in _CONFIG_FIELDS and k != "checks"}
            )  # types, early
            _check_ids(options.get("checks"), f"{here} checks")
            _check_ids(options.get("xfail", []), f"{here} xfail")
            if "property_examples" in options:
                _positive_int(options["property_examples"], f"{here} property-examples")
            overrides[str(subject_name)] = options
        return overrides

    @staticmethod
    def _seed(config: pytest.Config, base: Config, in_toml: bool) -> tuple[int, str, bool]:
        workerinput = getattr(config, "workerinput", None)  # set by xdist on its workers
        if isinstance(workerinput, dict) and "nndiag_seed" in workerinput:
            # Forced only where the controller's was: a subject's own seed= still holds.
            return (
                int(workerinput["nndiag_seed"]),
                "from the xdist controller",
                bool(workerinput.get("nndiag_seed_forced", False)),
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

    def header(self) -> list[str]:
        checks = (
            ",".join(self.cli_checks)
            if self.cli_checks is not None
            else "each subject's own (all 8 by default)"
        )
        return [
            f"nndiag: seed {self.seed} ({self.seed_origin}; rerun with --nndiag-seed "
            f"{self.seed}), checks: {checks}, strict: {'on' if self.strict else 'off'}, "
            f"report: {self._shown(self.report_dir)}/"
        ]

    def _shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.invocation_dir))
        except ValueError:
            return str(path)

    # -- collection ------------------------------------------------------------------------------
    def collect(self, session: pytest.Session) -> list[pytest.Item]:
        root = NndiagRoot.from_parent(session, name="nndiag", nodeid="nndiag", nndiag=self)
        return list(session.genitems(root))

    def discover(self, config: pytest.Config) -> list[SubjectSpec]:
        """Subject factories of the loaded conftest modules (in load order, then definition
        order), then the ``[tool.nndiag] subjects`` list.

        Raises:
            ValueError: two different subjects share a name.
        """
        specs: list[SubjectSpec] = []
        seen: set[int] = set()
        for _, plugin in config.pluginmanager.list_name_plugin():
            if not isinstance(plugin, ModuleType):
                continue
            filename = getattr(plugin, "__file__", None)
            if not filename or Path(filename).name != "conftest.py":
                continue
            for value in list(vars(plugin).values()):
                if isinstance(value, SubjectFactory) and id(value) not in seen:
                    seen.add(id(value))
                    specs.append(self._spec(value, len(specs), Path(filename), None))
        for target in self.subject_paths:
            factory, error = _import_factory(target)
            if factory is not None and id(factory) in seen:
                continue
            if factory is not None:
                seen.add(id(factory))
            origin = f"[tool.nndiag] subjects entry {target!r}"
            if error is not None:
                name = target.partition(":")[2].rsplit(".", 1)[-1]
                where = self.pyproject or config.rootpath
                specs.append(SubjectSpec(name, len(specs), origin, where, 0, None, error))
            else:
                specs.append(
                    self._spec(factory, len(specs), self.pyproject or config.rootpath, origin)
                )
        names: dict[str, SubjectSpec] = {}
        for spec in specs:
            if spec.name in names:
                raise ValueError(
                    f"two subjects are named {spec.name!r} ({names[spec.name].origin}"
                    f" and {spec.origin}); rename one with "
                    f"@nndiag.subject(name=...)"
                )
            names[spec.name] = spec
        return specs

    @staticmethod
    def _spec(
        factory: SubjectFactory, index: int, fallback: Path, origin: str | None
    ) -> SubjectSpec:
        path, lineno = fallback, 0
        try:
            source = inspect.getsourcefile(factory.func)
            if source:
                path = Path(source)
                lineno = inspect.getsourcelines(factory.func)[1]
        except (OSError, TypeError):
            pass
        if origin is None:
            origin = f"{path.name}:{lineno}" if lineno else path.name
        return SubjectSpec(factory.name, index, origin, path, lineno, factory)

    def plan(self, spec: SubjectSpec) -> Plan:
        """The checks, Config and expected failures of one subject. Precedence, lowest
        first: Config defaults, [tool.nndiag], the decorator's options, the subject's
        [tool.nndiag.overrides.<name>] table, the command line.

        Raises:
            ValueError: an unknown check id or option in the decorator.
        """
        override = self.overrides.get(spec.name, {})
        factory = spec.factory
        config = self.base
        if factory is not None and factory.options:
            config = Config.from_mapping(factory.options, config)
        config = Config.from_mapping(
            {k: v for k, v in override.items() if k in _CONFIG_FIELDS and k != "checks"}, config
        )
        if self.seed_forced:
            config = config.replace(seed=self.seed)
        declared = _check_ids(override.get("checks"), f"[tool.nndiag.overrides.{spec.name}] checks")
        if declared is None and factory is not None:
            declared = _check_ids(factory.checks, "@nndiag.subject(checks=...)")
        if declared is None:
            declared = self.global_checks if self.global_checks is not None else ALL_CHECKS
        checks = (
            declared
            if self.cli_checks is None
            else tuple(c for c in self.cli_checks if c in declared)
        )
        config = dataclasses.replace(config, checks=tuple(c for c in checks if c in registry()))
        xfail = frozenset(_check_ids(override.get("xfail", []), "xfail") or ())
        examples = (
            self.property_examples
            if self.examples_forced
            else override.get("property_examples", self.property_examples)
        )
        return Plan(checks, config, xfail, examples)

    # -- running ---------------------------------------------------------------------------------
    def _build(self, spec: SubjectSpec, plan: Plan) -> tuple[Subject, Runner] | _Broken:
        """The subject and its runner, made once per process; a failure is kept too."""
        built = self._built.get(spec.name)
        if built is not None:
            return built
        if spec.load_error is not None or spec.factory is None:
            built = _Broken(
                f"subject {spec.name!r} could not be loaded: {spec.load_error}",
                "make the [tool.nndiag] subjects entry importable ('package.module:"
                "function', with the package installed or on pytest's pythonpath)",
            )
        else:
            try:
                subject = spec.factory()
            except Exception as exc:
                built = _factory_failure(spec, exc)
            else:
                built = (subject, Runner(subject, plan.config))
        self._built[spec.name] = built
        return built

    def run(self, spec: SubjectSpec, plan: Plan, check: str) -> CheckResult:
        """One check's result; never raises for a broken model or subject."""
        built = self._build(spec, plan)
        if isinstance(built, _Broken):
            evidence = {"traceback": list(built.frames)} if built.frames else {}
            return CheckResult(
                check, "error", built.message, evidence=evidence, hint=built.hint, subject=spec.name
            )
        subject, runner = built
        try:
            if check in PROPERTY_CHECKS:
                runner.session  # noqa: B018 - the probe: raises InvalidSubject if unusable
                result = run_property(
                    check, subject, plan.config, max_examples=plan.property_examples
                )
            else:
                result = runner.run(check)
        except InvalidSubject as exc:
            result = CheckResult(
                check,
                "error",
                f"subject {spec.name!r} cannot be diagnosed: {exc.argument}: {exc.problem}",
                hint=exc.fix,
            )
        except Exception as exc:  # a bug in nndiag: say so, keep the other items running
            result = error_result(check, exc)
        return dataclasses.replace(result, subject=spec.name)

    # -- results and reports ----------------------------------------------------------------------
    def record(self, nodeid: str, when: str, payload: Any) -> None:
        if when == "setup" and isinstance(payload, dict) and payload.get("v") == PAYLOAD_VERSION:
            self.results[nodeid] = payload

    def _ordered(self) -> list[dict[str, Any]]:
        return sorted(
            self.results.values(),
            key=lambda p: (tuple(p["order"]), p["result"]["subject"], p["result"]["check"]),
        )

    def write_reports(self, config: pytest.Config) -> None:
        """Write nndiag.json (and nndiag.html) once, on the controller."""
        if hasattr(config, "workerinput") or not self.results:
            return  # an xdist worker: its results travel to the controller
        payloads = self._ordered()
        meta = environment(self.seed)
        for payload in payloads:  # under xdist the controller never imported the frameworks
            for name, version in payload.get("frameworks", {}).items():
                meta["frameworks"].setdefault(name, version)
        report = Report([CheckResult.from_dict(p["result"]) for p in payloads], meta)
        try:
            self.written.append(report.to_json(self.report_dir / "nndiag.json"))
        except OSError as exc:
            self.notes.append(f"could not write the JSON report: {exc}")
            return
        try:
            import nndiag.report  # noqa: F401 - the HTML renderer is optional
        except ImportError as exc:
            self.notes.append(f"HTML report skipped: {exc}")
            return
        try:
            self.written.append(report.to_html(self.report_dir / "nndiag.html"))
        except Exception as exc:  # the JSON is the source of truth; say why the page is missing
            self.notes.append(
                f"HTML report failed: {type(exc).__name__}: {exc} (re-render it "
                f"with: nndiag report {self._shown(self.written[0])})"
            )

    def summary(self, terminal: Any) -> None:
        """The check x subject table (split to fit the terminal), then the report paths."""
        if self.discovered == 0:
            terminal.write_line(
                "nndiag: no subjects found; declare them with @nndiag.subject "
                "in a conftest.py, or list them in [tool.nndiag] subjects",
                yellow=True,
            )
        if not self.results and not self.notes:
            return
        payloads = self._ordered()
        subjects = list(dict.fromkeys(p["result"]["subject"] for p in payloads))
        checks = [c for c in ALL_CHECKS if any(p["result"]["check"] == c for p in payloads)]
        cells: dict[tuple[str, str], str] = {}
        counts = dict.fromkeys(STATUSES, 0)
        for p in payloads:
            result = p["result"]
            counts[result["status"]] += 1
            expected = result["status"] == "fail" and p.get("xfail")
            cells[result["subject"], result["check"]] = "xfail" if expected else result["status"]
        terminal.write_sep("=", f"nndiag: {len(subjects)} subject(s), seed {self.seed}")
        label = max((len(c) for c in checks), default=5) + 2
        width = max(shutil.get_terminal_size((80, 24)).columns, 40)
        groups: list[list[str]] = [[]]
        used = label
        for name in subjects:
            column = _column(name)
            if groups[-1] and used + column > width:
                groups.append([])
                used = label
            groups[-1].append(name)
            used += column
        for group in groups:
            if group:
                _table(terminal, group, checks, cells, label)
        totals = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        if payloads:
            terminal.write_line(f"{len(payloads)} results: {totals}")
        for path in self.written:
            terminal.write_line(f"nndiag report: {self._shown(path)}")
        for note in self.notes:
            terminal.write_line(f"nndiag: {note}", yellow=True)


def _column(name: str) -> int:
    return max(len(name), 5) + 2


def _table(
    terminal: Any,
    subjects: list[str],
    checks: list[str],
    cells: Mapping[tuple[str, str], str],
    label: int,
) -> None:
    terminal.write_line(
        ("check".ljust(label) + "".join(s.ljust(_column(s)) for s in subjects)).rstrip()
    )
    for check in checks:
        terminal.write(check.ljust(label))
        for i, subject in enumerate(subjects):
            status = cells.get((subject, check), "")
            text = _SHOWN.get(status, "-")
            terminal.write(
                text if i == len(subjects) - 1 else text.ljust(_column(subject)),
                **_MARKUP.get(status, {}),
            )
        terminal.line("")


def _import_factory(target: str) -> tuple[SubjectFactory | None, str | None]:
    """The factory a ``module:function`` string names, or why it cannot be had."""
    module_name, _, attribute = target.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except Exception as exc:
        return None, f"importing {target!r} raised {type(exc).__name__}: {exc}"
    if isinstance(found, SubjectFactory):
        return found, None
    if callable(found):  # a plain function returning a Subject
        return SubjectFactory(found, None, None, {}), None
    return None, f"{target!r} is {describe(found)}, not a function returning an nndiag.Subject"


def _user_frames(exc: BaseException) -> tuple[str, ...]:
    """The traceback of ``exc`` without nndiag's own frames, formatted."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_NNDIAG_DIR)
    ]
    return tuple(line.rstrip("\n") for line in traceback.format_list(frames[-6:]))


def _factory_failure(spec: SubjectSpec, exc: Exception) -> _Broken:
    frames = _user_frames(exc)
    if isinstance(exc, InvalidSubject):
        return _Broken(
            f"subject {spec.name!r} ({spec.origin}) is invalid: {exc.argument}: {exc.problem}",
            exc.fix,
            frames,
        )
    return _Broken(
        f"subject {spec.name!r} could not be built: its factory ({spec.origin}) "
        f"raised {type(exc).__name__}: {exc}",
        "call the factory on its own and fix what it raises (the traceback below shows where)",
        frames,
    )


def _properties(data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Key metrics for --junitxml: the status, the cost and the scalar metrics, from the
    result's JSON form (plain Python values: xdist sends them to the controller as they are,
    and cannot send numpy scalars)."""
    found: list[tuple[str, Any]] = [
        ("nndiag.status", data["status"]),
        ("nndiag.seconds", data["cost"]["seconds"]),
    ]
    for key, value in data["metrics"].items():
        if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) < 80):
            found.append((f"nndiag.{key}", value))
    return found[:24]


# -- nodes -------------------------------------------------------------------------------------
class NndiagRoot(pytest.Collector):
    """The ``nndiag`` node: one child per subject."""

    def __init__(self, *, nndiag: NndiagSession, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nndiag = nndiag

    def collect(self) -> list[pytest.Collector]:
        try:
            specs = self.nndiag.discover(self.config)
        except ValueError as exc:
            raise self.CollectError(f"nndiag: {exc}") from None
        self.nndiag.discovered = len(specs)
        names = [spec.name for spec in specs]
        stray = [name for name in self.nndiag.overrides if name not in names]
        if stray:  # a typo, or a subject whose conftest this run does not load
            tables = ", ".join(f"[tool.nndiag.overrides.{n}]" for n in stray)
            warnings.warn_explicit(
                pytest.PytestConfigWarning(
                    f"nndiag: {tables} match(es) no subject collected "
                    f"in this run (subjects: {', '.join(names) or 'none'})"
                ),
                pytest.PytestConfigWarning,
                str(self.nndiag.pyproject or self.path),
                1,
            )
        return [
            SubjectNode.from_parent(self, name=spec.name, path=spec.path, spec=spec)
            for spec in specs
        ]


class SubjectNode(pytest.Collector):
    """One subject: one item per check it runs."""

    def __init__(self, *, spec: SubjectSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec

    def collect(self) -> list[pytest.Item]:
        if not _ID.fullmatch(self.spec.name):
            raise self.CollectError(
                f"nndiag: subject name {self.spec.name!r} ({self.spec.origin}) cannot be part of "
                "a test id; use letters, digits, '_', '-' or '.' (@nndiag.subject(name=...))"
            )
        nndiag: NndiagSession = self.parent.nndiag  # type: ignore[union-attr]
        try:
            plan = nndiag.plan(self.spec)
        except (ValueError, TypeError) as exc:
            raise self.CollectError(
                f"nndiag: subject {self.spec.name!r} ({self.spec.origin}): {exc}"
            ) from None
        return [
            CheckItem.from_parent(
                self, name=check, spec=self.spec, plan=plan, check=check, nndiag=nndiag
            )
            for check in plan.checks
        ]


class _StrictWarning(CheckFailed):
    def __init__(self, result: CheckResult) -> None:
        super().__init__(result)
        self.args = (f"{result.summary()}\n(--nndiag-strict: a warning fails the test)",)


class CheckItem(pytest.Item):
    """One check on one subject. The check runs in setup, so that an ``error`` result (a
    factory that raises, a model that cannot be run) is a setup error, not a failure."""

    def __init__(
        self, *, spec: SubjectSpec, plan: Plan, check: str, nndiag: NndiagSession, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.plan = plan
        self.check = check
        self.nndiag = nndiag
        self.result: CheckResult | None = None
        self.nndiag_payload: dict[str, Any] | None = None
        self.add_marker(pytest.mark.nndiag)
        if check in plan.xfail:
            self.add_marker(
                pytest.mark.xfail(
                    reason=f"[tool.nndiag.overrides.{spec.name}] xfail lists {check}",
                    raises=CheckFailed,
                    strict=True,
                )
            )

    def setup(self) -> None:
        result = self.nndiag.run(self.spec, self.plan, self.check)
        self.result = result
        data = result.to_dict()
        self.nndiag_payload = {
            "v": PAYLOAD_VERSION,
            "result": data,
            "order": [self.spec.index, self.plan.checks.index(self.check)],
            "frameworks": environment()["frameworks"],
            "xfail": self.check in self.plan.xfail,
        }
        self.user_properties.extend(_properties(data))
        if result.status == "error":
            text = result.summary()
            frames = result.evidence.get("traceback")
            if frames:
                text += "\nTraceback (nndiag frames hidden):\n" + "\n".join(frames)
            pytest.fail(text, pytrace=False)

    def runtest(self) -> None:
        result = self.result
        assert result is not None, "setup() runs the check"
        if result.status == "fail":
            raise CheckFailed(result)
        if result.status == "warn":
            if self.nndiag.strict:
                raise _StrictWarning(result)
            # Located at the subject's factory: the warning is about the user's model.
            warnings.warn_explicit(
                NndiagWarning(result.summary()),
                NndiagWarning,
                str(self.spec.path),
                self.spec.lineno or 1,
            )
        elif result.status == "skip":
            pytest.skip(result.message)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, CheckFailed):  # the summary, no nndiag frames
            return excinfo.getrepr(style="value", chain=False)
        return super().repr_failure(excinfo, style=style)

    def nndiag_report(self, report: pytest.TestReport) -> None:
        """Called by the plugin on each of this item's reports: the setup report carries the
        result; a skip is located at the subject's factory rather than in nndiag."""
        if report.when == "setup" and self.nndiag_payload is not None:
            setattr(report, REPORT_ATTRIBUTE, self.nndiag_payload)
        if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
            report.longrepr = (str(self.spec.path), self.spec.lineno or None, report.longrepr[2])

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # pytest counts lines from 0 here
        return self.spec.path, self.spec.lineno - 1 if self.spec.lineno else None, self.nodeid
