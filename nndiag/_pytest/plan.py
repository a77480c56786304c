"""Which subjects a run has and what runs for each: discovery, then one :class:`Plan` per
subject, from which the collection nodes make their items.

Subjects are the ``@nndiag.subject`` factories of the loaded ``conftest.py`` modules, then
the ``[tool.nndiag] subjects`` entries. Nothing here builds a subject: factories run when an
item does.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from nndiag._pytest.settings import Settings, check_ids, config_options
from nndiag.checks import default_checks, registry
from nndiag.config import Config
from nndiag.errors import describe
from nndiag.subject import SubjectFactory

__all__ = ["Plan", "SubjectSpec", "discover", "plan_for", "stray_overrides", "valid_name"]

# Subject names become test ids: no spaces (-k expressions) and no '::' or '/' (node ids).
_ID = re.compile(r"[\w.\-]+")


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

    def xfail_reason(self, subject: str, check: str) -> str | None:
        """Why ``check`` is expected to fail on ``subject``, or None when it is not."""
        if check not in self.xfail:
            return None
        return f"[tool.nndiag.overrides.{subject}] xfail lists {check}"


def valid_name(name: str) -> bool:
    """Whether a subject name can be part of a test id."""
    return _ID.fullmatch(name) is not None


def discover(config: pytest.Config, settings: Settings) -> list[SubjectSpec]:
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
                specs.append(_spec(value, len(specs), Path(filename), None))
    fallback = settings.pyproject or config.rootpath
    for target in settings.subject_paths:
        factory, error = _import_factory(target)
        origin = f"[tool.nndiag] subjects entry {target!r}"
        if factory is None:
            name = target.partition(":")[2].rsplit(".", 1)[-1]
            specs.append(SubjectSpec(name, len(specs), origin, fallback, 0, None, error))
        elif id(factory) not in seen:
            seen.add(id(factory))
            specs.append(_spec(factory, len(specs), fallback, origin))
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


def stray_overrides(settings: Settings, specs: list[SubjectSpec]) -> list[str]:
    """Subjects named by ``[tool.nndiag.overrides.<name>]`` tables but not collected."""
    names = {spec.name for spec in specs}
    return [name for name in settings.overrides if name not in names]


def plan_for(settings: Settings, spec: SubjectSpec) -> Plan:
    """The checks, Config and expected failures of one subject. Precedence, lowest
    first: Config defaults, [tool.nndiag], the decorator's options, the subject's
    [tool.nndiag.overrides.<name>] table, the command line.

    Raises:
        ValueError: an unknown check id or option in the decorator.
    """
    override = settings.overrides.get(spec.name, {})
    factory = spec.factory
    config = settings.base
    if factory is not None and factory.options:
        config = Config.from_mapping(factory.options, config)
    config = Config.from_mapping(config_options(override), config)
    if settings.seed_forced:
        config = config.replace(seed=settings.seed)
    declared = check_ids(override.get("checks"), f"[tool.nndiag.overrides.{spec.name}] checks")
    if declared is None and factory is not None:
        declared = check_ids(factory.checks, "@nndiag.subject(checks=...)")
    if declared is None:
        declared = settings.global_checks
    if declared is None:  # undeclared: the default checks, or any the command line names
        checks = default_checks() if settings.cli_checks is None else settings.cli_checks
    else:
        checks = (
            declared
            if settings.cli_checks is None
            else tuple(c for c in settings.cli_checks if c in declared)
        )
    config = dataclasses.replace(config, checks=tuple(c for c in checks if c in registry()))
    xfail = frozenset(check_ids(override.get("xfail", []), "xfail") or ())
    examples = (
        settings.property_examples
        if settings.examples_forced
        else override.get("property_examples", settings.property_examples)
    )
    # Hypothesis examples spent shrinking a batch_independence failure.
    config = config.replace(independence_examples=examples)
    return Plan(checks, config, xfail, examples)


def _spec(factory: SubjectFactory, index: int, fallback: Path, origin: str | None) -> SubjectSpec:
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
