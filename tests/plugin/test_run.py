"""``pytest --nndiag`` end to end, each run in a fresh interpreter: outcomes, messages, the
terminal summary, the reports, JUnit properties, xdist."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from importlib.util import find_spec
from pathlib import Path

import pytest

from .conftest import Project

HTML = find_spec("nndiag.report") is not None

EXPECTED = {
    ("mlp", "initial_loss"): "pass",
    ("mlp", "regularization_loss"): "skip",
    ("mlp", "overfit_small"): "pass",
    ("mlp", "gradient_check"): "pass",
    ("mlp", "activation_stats"): "pass",
    ("mlp", "dead_neurons"): "pass",
    ("mlp", "batch_independence"): "pass",
    ("mlp", "causality"): "skip",
    ("mlp", "numerics"): "pass",
    ("mlp", "batchnorm"): "skip",
    ("mlp", "param_updates"): "pass",
    ("mlp", "input_stats"): "pass",
    ("mlp", "init_scale"): "pass",
    ("huge_init", "initial_loss"): "fail",
    ("huge_init", "gradient_check"): "pass",
    ("warns", "dead_neurons"): "warn",
    ("mixer", "batch_independence"): "fail",
    ("mixer", "numerics"): "pass",
    ("broken_factory", "initial_loss"): "error",
    ("broken_factory", "gradient_check"): "error",
    ("plain", "initial_loss"): "pass",
    ("plain", "gradient_check"): "pass",
    ("plain", "numerics"): "pass",
}


def _section(text: str, title: str) -> str:
    """The body of a ``==== title ====`` section of pytest's output."""
    match = re.search(rf"=+ {title} =+\n(.*?)(?=\n=+ )", text, re.S)
    assert match, f"no {title!r} section in:\n{text}"
    return match.group(1)


def test_each_status_becomes_its_pytest_outcome(project: Project) -> None:
    result = project.run("--nndiag", "-rA", "--junitxml=junit.xml", "--nndiag-seed", "7")
    text = result.stdout.str()

    # A failed check fails the run (the CI gate); xfail, warn and skip do not.
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=17, failed=1, skipped=3, xfailed=1, errors=2, warnings=1)
    result.stdout.fnmatch_lines(["nndiag: seed 7 (--nndiag-seed; rerun with --nndiag-seed 7)*"])

    # fail: the check's summary and hint, and no traceback through nndiag.
    failures = _section(text, "FAILURES")
    assert "mixer::batch_independence fail: Output row 0 depends on input row 1" in failures
    assert "Minimal counterexample: rows [" in failures and "as a batch of 2." in failures
    assert "Hint: A model must treat each sample on its own" in failures
    assert "Traceback" not in failures and "nndiag/" not in failures
    # The short summary leads with the verdict and the numbers; -rA shows a pass's numbers.
    result.stdout.fnmatch_lines(["FAILED nndiag::mixer::batch_independence - fail: Output row 0*"])
    result.stdout.fnmatch_lines(["PASSED nndiag::mlp::initial_loss - pass: Loss at init*"])
    assert "nndiag.errors.CheckFailed" not in text
    # A failure names the settings to tune and its section of the report.
    assert "Settings: " in failures and "in [tool.nndiag] or [tool.nndiag.overrides.mixer]" in (
        failures
    )
    assert "Report: reports/nndiag.html#mixer::batch_independence" in failures

    # error: a factory that raises errors each of its items, with its own message and frames.
    errors = _section(text, "ERRORS")
    assert "ERROR at setup of nndiag::broken_factory::initial_loss" in errors
    assert "raised RuntimeError: weights file not found" in errors
    assert 'conftest.py", line' in errors and "in broken_factory" in errors
    # ... its traceback once: the subject's other items point at it.
    assert errors.count("Traceback (nndiag frames hidden)") == 1
    assert errors.count("in broken_factory") == 1
    assert "(the factory's traceback is shown under nndiag::broken_factory::initial_loss)" in (
        errors
    )
    assert "nndiag/_pytest/" not in errors

    # warn: passes, with a warning located at the subject's factory.
    warned = _section(text, "warnings summary")
    assert "nndiag::warns::dead_neurons" in warned
    assert re.search(r"conftest\.py:\d+: NndiagWarning: warns::dead_neurons warn:", warned)

    # skip: the check's reason, located at the factory.
    assert re.search(r"^SKIPPED \[1\] conftest\.py:\d+: No regularization knob", text, re.M)
    assert (
        "XFAIL nndiag::huge_init::initial_loss - [tool.nndiag.overrides.huge_init] xfail "
        "lists initial_loss" in text
    )

    # The table and the reports.
    summary = _section(text, r"nndiag: 6 subject\(s\), seed 7")
    assert re.search(r"^check +mlp +huge_init +warns +mixer +broken_factory +plain$", summary, re.M)
    assert re.search(r"^initial_loss +pass +xfail +- +- +ERROR +pass$", summary, re.M)
    assert re.search(r"^dead_neurons +pass +- +WARN +- +- +-$", summary, re.M)
    assert "23 results: 15 pass, 1 warn, 1 fail, 3 skip, 2 error, 1 xfail" in summary
    assert "nndiag report: reports/nndiag.json" in summary
    assert ("nndiag report: reports/nndiag.html" in summary) is HTML

    report = project.report()
    assert project.statuses() == EXPECTED
    assert [(r["subject"], r["check"]) for r in report["results"]] == list(EXPECTED)
    assert report["meta"]["seed"] == 7 and "torch" in report["meta"]["frameworks"]
    mixer = next(r for r in report["results"] if r["subject"] == "mixer")
    assert mixer["evidence"]["counterexample"].endswith("as a batch of 2")
    assert mixer["metrics"]["seed"] == 7

    # --junitxml: each check's key metrics as properties, errors and failures as such.
    cases = {
        (c.get("classname"), c.get("name")): c
        for c in ET.parse(project.path / "junit.xml").getroot().iter("testcase")
    }
    props = {
        p.get("name"): p.get("value") for p in cases["nndiag.mlp", "initial_loss"].iter("property")
    }
    assert props["nndiag.status"] == "pass"
    assert float(props["nndiag.measured"]) == pytest.approx(
        report["results"][0]["metrics"]["measured"]
    )
    assert cases["nndiag.mixer", "batch_independence"].find("failure") is not None
    assert cases["nndiag.broken_factory", "initial_loss"].find("error") is not None
    leak = {
        p.get("name"): p.get("value")
        for p in cases["nndiag.mixer", "batch_independence"].iter("property")
    }
    assert leak["nndiag.status"] == "fail" and float(leak["nndiag.leak"]) > 0


def test_xdist_gives_the_serial_results_and_writes_once(project: Project) -> None:
    # A random seed, chosen by the controller and handed to both workers ...
    parallel = project.run(
        "--nndiag", "-n", "2", "--nndiag-seed", "random", "--nndiag-report", "parallel"
    )
    parallel_events = project.events()
    match = re.search(
        r"nndiag: seed (\d+) \(--nndiag-seed random; rerun with --nndiag-seed "
        r"(\d+)\)",
        parallel.stdout.str(),
    )
    assert match and match.group(1) == match.group(2)
    seed = match.group(1)
    # ... reproduces the same results in a serial run given that seed.
    project.log.unlink()
    serial = project.run("--nndiag", "--nndiag-seed", seed, "--nndiag-report", "serial")
    serial_events = project.events()

    assert serial.ret == parallel.ret == pytest.ExitCode.TESTS_FAILED
    assert "INTERNALERROR" not in parallel.stdout.str()  # e.g. a result xdist cannot send
    assert serial.parseoutcomes() == parallel.parseoutcomes()

    def comparable(directory: str) -> list[dict]:
        found = project.report(directory)["results"]
        for r in found:
            del r["cost"]
            # Reruns differ only in the report each run was told to write.
            r["rerun"] = r["rerun"].replace(f"--nndiag-report={directory}", "--nndiag-report=")
        return found

    assert comparable("parallel") == comparable("serial")
    assert len(comparable("serial")) == len(EXPECTED)
    assert project.report("parallel")["meta"]["seed"] == int(seed)
    assert {
        r["metrics"]["seed"]
        for r in project.report("parallel")["results"]
        if r["check"] in ("batch_independence", "numerics")
    } == {int(seed)}

    # The report is written once per run, by the controller; each process calls a
    # subject's factory at most once.
    for events in (serial_events, parallel_events):
        writers = [pid for event, pid in events if event == "to_json"]
        assert len(writers) == 1
        calls = Counter(e for e in events if e[0].startswith("factory:"))
        assert set(calls.values()) == {1}
    workers = {pid for event, pid in parallel_events if event.startswith("factory:")}
    assert len(workers) == 2
    # Load groups: each subject's checks ran on one worker, which built it once.
    built = Counter(event for event, _ in parallel_events if event.startswith("factory:"))
    assert set(built.values()) == {1}

    assert [pid for event, pid in parallel_events if event == "to_json"][0] not in workers
    assert {e for e, _ in serial_events if e.startswith("factory:")} == {
        f"factory:{s}" for s in ("mlp", "huge_init", "warns", "mixer", "broken_factory")
    }

    # The workers drew their results' plots (in parallel): the page shows the same images
    # the serial run's controller drew.
    def images(directory: str) -> list[str]:
        page = (project.path / directory / "nndiag.html").read_text()
        return re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+", page)

    assert images("parallel") == images("serial")
    assert len(images("serial")) >= 10


def test_without_nndiag_the_plugin_does_nothing(project: Project) -> None:
    result = project.run()
    result.assert_outcomes(passed=1)
    assert "nndiag: seed" not in result.stdout.str()
    assert "nndiag::" not in result.stdout.str()
    assert not (project.path / "reports").exists()
    assert project.events() == []


def test_strict_fails_warnings_and_unusable_subjects_error(project: Project) -> None:
    project.write(
        "conftest.py",
        """
        import nndiag

        @nndiag.subject(checks="dead_neurons", dead_warn=0.0, dead_fail=1.0)
        def warns():
            import torch
            from models import data, mlp
            model = mlp()
            with torch.no_grad():
                model[0].bias[0] = -100.0  # one dead unit: more than dead_warn = 0
            return nndiag.Subject(model, data())

        @nndiag.subject(checks=["initial_loss", "numerics"])
        def bad_labels():
            from models import data, mlp
            X, y = data()
            return nndiag.Subject(mlp(), (X, y + 5))

        @nndiag.subject(checks=["initial_loss"])
        def not_a_subject():
            return 42
    """,
    )
    (project.path / "pyproject.toml").write_text("")
    result = project.run("--nndiag", "--nndiag-strict", "--nndiag-report", "out")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1, errors=3)

    # --nndiag-strict: the warning fails its test.
    result.stdout.fnmatch_lines(
        ["*warns::dead_neurons warn:*", "*(--nndiag-strict: a warning fails the test)*"]
    )
    result.stdout.fnmatch_lines(
        ["FAILED nndiag::warns::dead_neurons - warn, failed by --nndiag-strict: *"]
    )
    assert "_StrictWarn" not in result.stdout.str()
    # An unusable subject, or a factory returning something else, errors each of its items.
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of nndiag::bad_labels::initial_loss*",
            "error: subject 'bad_labels' cannot be diagnosed: data: "
            "labels span 5..7 but the model outputs 3 class scores*",
            "*ERROR at setup of nndiag::bad_labels::numerics*",
            "error: subject 'bad_labels' cannot be diagnosed*",
            "*ERROR at setup of nndiag::not_a_subject::initial_loss*",
            "error: subject 'not_a_subject' (conftest.py:*) is "
            "invalid: not_a_subject: the factory returned 42 (type=int)*",
        ]
    )
    # --nndiag-report moves the reports.
    assert project.statuses("out") == {
        ("warns", "dead_neurons"): "warn",
        ("bad_labels", "initial_loss"): "error",
        ("bad_labels", "numerics"): "error",
        ("not_a_subject", "initial_loss"): "error",
    }
    assert not (project.path / "reports").exists()


def test_the_example_project_passes_and_writes_its_reports(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    shutil.copytree(
        examples,
        pytester.path / "examples",
        ignore=shutil.ignore_patterns("__pycache__", "reports", ".hypothesis"),
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = pytester.runpytest_subprocess("--nndiag", "examples/")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.assert_outcomes(passed=51, skipped=10, xfailed=7)
    report = Project(pytester).report()
    # The files agree with pytest: the expected failures are xfail, and the run passed.
    assert report["passed"] is True
    assert "64 results: 47 pass, 10 skip, 7 xfail" in result.stdout.str()
    failed = {(r["subject"], r["check"]) for r in report["results"] if r["status"] == "fail"}
    expected = {(r["subject"], r["check"]) for r in report["results"] if r["state"] == "xfail"}
    assert failed == expected
    assert failed == {
        ("huge_last_layer", "initial_loss"),
        ("dead_relu", "overfit_small"),
        ("dead_relu", "dead_neurons"),
        ("dead_relu", "activation_stats"),
        ("dead_relu", "param_updates"),
        ("batch_mixer", "batch_independence"),
        ("custom_backward", "gradient_check"),
    }
    assert (pytester.path / "reports" / "nndiag.html").exists() is HTML
    # Hypothesis's example database stays out of the project (in pytest's cache).
    assert not (pytester.path / ".hypothesis").exists()
    assert not (pytester.path / "examples" / ".hypothesis").exists()
    assert (pytester.path / "examples" / ".pytest_cache" / "d" / "hypothesis").is_dir()
