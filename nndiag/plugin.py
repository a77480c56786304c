"""pytest plugin (entry point ``pytest11``): ``pytest --nndiag`` runs nndiag's checks as tests.

This module is loaded by every pytest run in an environment where nndiag is installed, so
it imports the standard library, pytest and :mod:`nndiag._pytest.common` (which imports no
more) only, and without ``--nndiag`` it only adds its options. With ``--nndiag``,
:func:`pytest_configure` reads the options once into an
:class:`~nndiag._pytest.session.NndiagSession` kept in ``config.stash`` and registers the hooks
below; everything heavier lives in the :mod:`nndiag._pytest` package, one job per module.

How the pieces fit:

* Collection: a ``nndiag`` collector attached to the session (in a ``tryfirst``
  ``pytest_collection_modifyitems``, collected through ``session.genitems``) holds one node
  per subject and one item per (subject, check): ids ``nndiag::<subject>::<check>``, so
  ``-k`` and ``-m nndiag`` select them like any test. Subjects are the
  ``@nndiag.subject`` factories found in loaded ``conftest.py`` modules, plus the
  ``[tool.nndiag] subjects`` list.
* Running: an item's setup calls the subject's factory (once per process, cached) and runs
  the check; ``fail`` fails the item, ``warn`` passes with an :class:`NndiagWarning` (fails
  under ``--nndiag-strict``), ``skip`` skips, ``error`` errors in setup.
* Results ride on the setup report (``report.nndiag_result``, serialized for xdist by the
  ``pytest_report_*_serializable`` hooks); the controller collects them in
  ``pytest_runtest_logreport`` and writes ``nndiag.json`` / ``nndiag.html`` once.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from nndiag._pytest.common import (
    REPORT_ATTRIBUTE,
    SESSION_KEY,
    WORKER_SEED,
    WORKER_SEED_FORCED,
    NndiagWarning,
)
from nndiag.checks import BUILTIN

if TYPE_CHECKING:
    from collections.abc import Generator

    from nndiag._pytest.session import NndiagSession

__all__ = ["REPORT_ATTRIBUTE", "SESSION_KEY", "NndiagWarning"]


# Light: the records name their functions as strings, so nothing heavy loads here.
_DEFAULTS = tuple(spec.id for spec in BUILTIN if spec.default)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nndiag", "nndiag: neural-network sanity checks as tests")
    group.addoption(
        "--nndiag",
        action="store_true",
        default=False,
        help="run nndiag's checks on the subjects declared with @nndiag.subject in conftest.py "
        "files and in [tool.nndiag] subjects, one test per (subject, check) "
        "(default: off)",
    )
    group.addoption(
        "--nndiag-checks",
        metavar="IDS",
        default=None,
        help="comma-separated check ids to run, among each subject's own checks, e.g. "
        "initial_loss,dead_neurons (default: every check the subject declares; without a "
        f"declaration, [tool.nndiag] checks, else nndiag's {len(_DEFAULTS)} default checks: "
        f"{', '.join(_DEFAULTS)})",
    )
    group.addoption(
        "--nndiag-seed",
        metavar="N",
        default=None,
        help="seed of every generator the checks draw from, for every subject; 'random' picks "
        "one (the header prints it) (default: [tool.nndiag] seed, else 0)",
    )
    group.addoption(
        "--nndiag-report",
        metavar="DIR",
        default=None,
        help="directory receiving nndiag.json and nndiag.html, relative to the current "
        "directory (default: [tool.nndiag] report-dir, else ./reports)",
    )
    group.addoption(
        "--nndiag-strict",
        action="store_true",
        default=None,
        help="fail the tests of checks that warn (default: off, or [tool.nndiag] strict)",
    )
    group.addoption(
        "--nndiag-examples",
        metavar="N",
        type=int,
        default=None,
        help="Hypothesis examples that shrink a batch_independence failure to a minimal batch "
        "(default: [tool.nndiag] property-examples, else 25)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("nndiag"):
        _refuse_ids_without_flag(config)
        return
    _one_thread_per_worker(config)
    from nndiag._pytest.session import NndiagSession

    session = NndiagSession.from_config(config)  # raises pytest.UsageError on bad settings
    config.stash[SESSION_KEY] = session
    config.addinivalue_line("markers", "nndiag: a check run by pytest --nndiag")
    config.pluginmanager.register(_NndiagHooks(session), "nndiag-session")
    if config.pluginmanager.hasplugin("xdist"):
        # Registered only with xdist present: pluggy rejects hooks it has no spec for.
        config.pluginmanager.register(_XdistHooks(session), "nndiag-xdist")


def _refuse_ids_without_flag(config: pytest.Config) -> None:
    """``pytest nndiag::mlp::overfit_small`` without ``--nndiag``: say to add the flag
    rather than let pytest report a file that does not exist."""
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        return  # testpaths or the current directory: never an nndiag id
    here = config.invocation_params.dir
    named = [
        arg
        for arg in config.args
        if arg.split("::")[0] == "nndiag" and "::" in arg and not (here / "nndiag").exists()
    ]
    if named:
        shown = " ".join(f'"{arg}"' for arg in named)
        raise pytest.UsageError(
            f"{named[0]} names an nndiag check, which runs only with --nndiag: "
            f"pytest --nndiag {shown}"
        )


def _one_thread_per_worker(config: pytest.Config) -> None:
    """Under ``-n N``: workers run torch and BLAS with one thread each unless the user set
    ``OMP_NUM_THREADS`` (set before the workers start, read when they import torch)."""
    from nndiag import _threads

    if hasattr(config, "workerinput"):
        _threads.limit_loaded()
    elif config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses", None):
        _threads.one_thread_for_workers()


class _NndiagHooks:
    """The hooks of a ``--nndiag`` run; each hands over to the session's parts."""

    def __init__(self, session: NndiagSession) -> None:
        self.session = session

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return self.session.reporter.header()

    def pytest_report_teststatus(self, report: Any, config: pytest.Config) -> Any:
        # -v: a passing check's line carries its key numbers.
        if (
            config.option.verbose > 0
            and report.when == "call"
            and report.passed
            and not hasattr(report, "wasxfail")
            and report.nodeid.startswith("nndiag::")
        ):
            payload = self.session.reporter.results.get(report.nodeid)
            if payload is not None:
                message = " ".join(payload["result"]["message"].split())
                word = "PASSED" if payload["result"]["status"] == "pass" else "PASSED (warn)"
                short = message if len(message) <= 90 else message[:89] + "\u2026"
                return "passed", ".", (f"{word} {short}", {"green": True})
        return None

    def pytest_ignore_collect(self, collection_path: Any, config: pytest.Config) -> bool | None:
        # Only nndiag:: ids given: pytest walks its default paths for their conftest files
        # (where subjects live), and imports no test file.
        if self.session.selection.ids_only and collection_path.is_file():
            return True
        return None

    @pytest.hookimpl(tryfirst=True)  # before -k / -m / --deselect look at the items
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        items.extend(self.session.collect(session))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, None]:
        outcome = yield
        amend = getattr(item, "nndiag_report", None)  # only nndiag's own items have it
        if amend is not None:
            amend(outcome.get_result())

    @pytest.hookimpl(hookwrapper=True)
    def pytest_report_to_serializable(
        self, config: pytest.Config, report: Any
    ) -> Generator[None, Any, None]:
        outcome = yield
        data = outcome.get_result()
        payload = getattr(report, REPORT_ATTRIBUTE, None)
        if isinstance(data, dict) and payload is not None:
            data[REPORT_ATTRIBUTE] = json.dumps(payload)  # plain text across execnet

    @pytest.hookimpl(hookwrapper=True)
    def pytest_report_from_serializable(
        self, config: pytest.Config, data: Any
    ) -> Generator[None, Any, None]:
        outcome = yield
        report = outcome.get_result()
        text = data.get(REPORT_ATTRIBUTE) if isinstance(data, dict) else None
        if report is not None and isinstance(text, str):
            setattr(report, REPORT_ATTRIBUTE, json.loads(text))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payload = getattr(report, REPORT_ATTRIBUTE, None)
        if payload is not None:
            self.session.reporter.record(report.nodeid, report.when, payload)
        if report.nodeid.startswith("nndiag::"):
            self.session.reporter.record_outcome(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.session.reporter.write_reports(session.config)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self.session.reporter.summary(terminalreporter)


class _XdistHooks:
    """Hooks that only exist with pytest-xdist: the controller hands its seed to workers."""

    def __init__(self, session: NndiagSession) -> None:
        self.session = session

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[WORKER_SEED] = self.session.settings.seed
        node.workerinput[WORKER_SEED_FORCED] = self.session.settings.seed_forced

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        # -n N alone means --dist load: keep each subject's checks on one worker, which
        # builds it once. An explicit --dist is the user's choice.
        explicit = any(
            str(arg) == "-d" or str(arg).startswith("--dist")
            for arg in config.invocation_params.args
        )
        if config.getoption("dist") != "load" or explicit:
            return None
        from nndiag._pytest.scheduling import SubjectScheduling

        return SubjectScheduling(config, log)
