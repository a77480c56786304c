"""Collection and options: ids, selection, settings precedence, misuse. No factory runs
here, so no model is built."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from nndiag.config import Config
from nndiag.plugin import SESSION_KEY

from .conftest import Project

ALL = [
    "initial_loss",
    "regularization_loss",
    "overfit_small",
    "gradient_check",
    "activation_stats",
    "dead_neurons",
    "batch_independence",
    "causality",
    "numerics",
    "batchnorm",
    "param_updates",
    "input_stats",
    "init_scale",
]


def _collected(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if line.startswith(("nndiag::", "test_"))]


def test_one_item_per_subject_and_check_selectable_with_k_and_m(project: Project) -> None:
    everything = project.run("--nndiag", "--collect-only", "-q")
    assert everything.ret == pytest.ExitCode.OK
    ids = _collected(everything)
    assert ids[0] == "test_ordinary.py::test_ordinary"
    assert ids[1 : 1 + len(ALL)] == [f"nndiag::mlp::{check}" for check in ALL]
    assert "nndiag::plain::numerics" in ids and len(ids) == 1 + len(ALL) + 10  # 10: own lists

    by_check = project.run("--nndiag", "--collect-only", "-q", "-k", "dead_neurons")
    assert _collected(by_check) == ["nndiag::mlp::dead_neurons", "nndiag::warns::dead_neurons"]
    by_subject = project.run("--nndiag", "--collect-only", "-q", "-k", "mlp and not grad")
    assert _collected(by_subject) == [f"nndiag::mlp::{c}" for c in ALL if c != "gradient_check"]
    not_nndiag = project.run("--nndiag", "--collect-only", "-q", "-m", "not nndiag")
    assert _collected(not_nndiag) == ["test_ordinary.py::test_ordinary"]
    assert project.events() == []  # collection never calls a factory


def test_an_opt_in_check_runs_only_when_named(project: Project) -> None:
    everything = _collected(project.run("--nndiag", "--collect-only", "-q"))
    assert not any(i.endswith("::learning_rate") for i in everything)
    named = project.run("--nndiag", "--collect-only", "-q", "--nndiag-checks", "learning_rate")
    # only the subjects that declare no checks of their own take it
    assert _collected(named)[1:] == ["nndiag::mlp::learning_rate"]


def test_checks_option_picks_among_each_subjects_checks(project: Project) -> None:
    result = project.run(
        "--nndiag", "--collect-only", "-q", "--nndiag-checks", "numerics, initial_loss"
    )
    assert _collected(result)[1:] == [
        "nndiag::mlp::numerics",
        "nndiag::mlp::initial_loss",
        "nndiag::huge_init::initial_loss",
        "nndiag::mixer::numerics",
        "nndiag::broken_factory::initial_loss",
        "nndiag::plain::numerics",
        "nndiag::plain::initial_loss",
    ]


@pytest.mark.parametrize(
    ("args", "toml", "message"),
    [
        (
            ["--nndiag-checks", "initial_loss,dead_nerons"],
            "",
            # The option's typo is the option's, not pyproject.toml's.
            "ERROR: nndiag: --nndiag-checks names unknown check(s) 'dead_nerons' (did you "
            "mean dead_neurons?); known checks: initial_loss, ",
        ),
        (["--nndiag-seed", "abc"], "", "--nndiag-seed expects an int >= 0 or 'random', got 'abc'"),
        (["--nndiag-examples", "0"], "", "--nndiag-examples expects an int >= 1, got 0"),
        (
            [],
            "[tool.nndiag]\ndead_warm = 0.2\n",
            "pyproject.toml: unknown key(s) 'dead_warm'; known keys: ",
        ),
        (
            [],
            "[tool.nndiag]\ndead-warn = 'high'\n",
            "nndiag option 'dead_warn' expects float, got 'high' (type=str)",
        ),
        (
            [],
            "[tool.nndiag.overrides.mlp]\nxfail = ['initial-loss']\n",
            "[tool.nndiag.overrides.mlp] xfail names unknown check(s) 'initial-loss'",
        ),
        (
            [],
            "[tool.nndiag]\nsubjects = ['no_colon']\n",
            "subjects expects a list of 'module:function' strings",
        ),
    ],
)
def test_misuse_is_a_usage_error(
    project: Project, args: list[str], toml: str, message: str
) -> None:
    (project.path / "pyproject.toml").write_text(toml)
    result = project.run("--nndiag", "--collect-only", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.str().startswith("ERROR: ")
    assert message in result.stderr.str()
    assert "Traceback" not in result.stderr.str()


def test_subject_mistakes_are_collection_errors(project: Project) -> None:
    project.write(
        "conftest.py",
        """
        import nndiag

        @nndiag.subject(name="twin")
        def first():
            pass

        @nndiag.subject(name="twin")
        def second():
            pass
    """,
    )
    twins = project.run("--nndiag", "--collect-only")
    assert twins.ret == pytest.ExitCode.INTERRUPTED
    twins.stdout.fnmatch_lines(
        [
            "*nndiag: two subjects are named 'twin' (conftest.py:* and "
            "conftest.py:*); rename one with @nndiag.subject(name=...)*"
        ]
    )

    project.write(
        "conftest.py",
        """
        import nndiag

        @nndiag.subject(checks=["initial_loss", "dead_neurones"])
        def typo():
            pass

        @nndiag.subject(name="has space")
        def spaced():
            pass

        @nndiag.subject
        def fine():
            pass
    """,
    )
    (project.path / "pyproject.toml").write_text("[tool.nndiag.overrides.fien]\ndead-warn = 0.4\n")
    result = project.run("--nndiag", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    text = result.stdout.str()
    assert re.search(
        r"nndiag: subject 'typo' \(conftest\.py:\d+\): @nndiag\.subject\(checks="
        r"\.\.\.\) names unknown check\(s\) 'dead_neurones' \(did you mean dead_neurons\?\); "
        r"known checks: ",
        text,
    )
    assert re.search(
        r"nndiag: subject name 'has space' \(conftest\.py:\d+\) cannot be part "
        r"of a test id",
        text,
    )
    assert re.search(
        r"pyproject\.toml:1: PytestConfigWarning: nndiag: \[tool\.nndiag\.overrides"
        r"\.fien\] match\(es\) no subject collected in this run \(subjects: typo, "
        r"has space, fine\)",
        text,
    )
    assert "nndiag::fine::initial_loss" in text  # the other subjects are still collected


def test_settings_precedence(pytester: pytest.Pytester) -> None:
    """Config defaults < [tool.nndiag] < decorator < [tool.nndiag.overrides.<name>] < CLI."""
    (pytester.path / "pyproject.toml").write_text(
        "[tool.nndiag]\ndead-warn = 0.2\ndead-fail = 0.9\nseed = 3\nproperty-examples = 5\n"
        "checks = ['initial_loss', 'dead_neurons', 'numerics']\n"
        "[tool.nndiag.overrides.b]\ndead_fail = 0.8\nchecks = ['dead_neurons']\n"
        "property-examples = 9\n"
    )
    import nndiag
    from nndiag._pytest.plan import SubjectSpec

    def spec(name: str, **options: object) -> SubjectSpec:
        factory = nndiag.subject(name=name, **options)(lambda: None)
        return SubjectSpec(name, 0, "test", pytester.path, 1, factory)

    config = pytester.parseconfigure("--nndiag")
    session = config.stash[SESSION_KEY]
    a = session.plan(spec("a", dead_fail=0.85))
    assert (a.config.dead_warn, a.config.dead_fail, a.config.seed) == (0.2, 0.85, 3)
    assert a.checks == ("initial_loss", "dead_neurons", "numerics")
    assert a.config.checks == a.checks  # every id is a registry check
    assert a.config.independence_examples == 5  # property-examples shrink leaks
    assert a.property_examples == 5
    b = session.plan(spec("b", dead_fail=0.85, checks=["initial_loss"]))
    assert (b.config.dead_fail, b.checks, b.property_examples) == (0.8, ("dead_neurons",), 9)
    c = session.plan(spec("c", checks=["gradient_check", "dead_neurons"]))
    assert c.checks == ("gradient_check", "dead_neurons")
    assert Config().dead_warn != 0.2  # the file, not a default, set it

    config = pytester.parseconfigure(
        "--nndiag",
        "--nndiag-seed",
        "11",
        "--nndiag-checks",
        "dead_neurons,initial_loss",
        "--nndiag-examples",
        "4",
    )
    session = config.stash[SESSION_KEY]
    a = session.plan(spec("a", seed=5))
    assert (a.config.seed, a.checks, a.property_examples) == (
        11,
        ("dead_neurons", "initial_loss"),
        4,
    )
    b = session.plan(spec("b"))
    assert (b.checks, b.property_examples, b.config.seed) == (("dead_neurons",), 4, 11)


def test_every_option_states_its_default() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "pytest", "--help"], capture_output=True, text=True, check=True
    ).stdout
    section = help_text.split("nndiag: neural-network sanity checks as tests:")[1]
    section = section.split("\n\n")[0]
    options = [o for o in section.split("\n  --") if o.strip()]
    assert {o.split()[0].split("=")[0].lstrip("-") for o in options} == {
        "nndiag",
        "nndiag-checks",
        "nndiag-seed",
        "nndiag-report",
        "nndiag-strict",
        "nndiag-examples",
    }
    for option in options:
        assert "(default:" in " ".join(option.split()), option


def _ids(result: pytest.RunResult) -> list[str]:
    """The test ids ``--collect-only -q`` lists."""
    return [line for line in result.stdout.lines if line.startswith(("nndiag::", "test_", "sub/"))]


def test_the_id_pytest_prints_reruns_that_check(project: Project) -> None:
    result = project.run(
        "--nndiag", "nndiag::mlp::initial_loss", "nndiag::plain", "--collect-only", "-q"
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    ids = _ids(result)
    # No ordinary test: only ids were given.
    assert ids == [
        "nndiag::mlp::initial_loss",
        "nndiag::plain::initial_loss",
        "nndiag::plain::gradient_check",
        "nndiag::plain::numerics",
    ]
    # Next to a path, the path's tests run too.
    both = project.run(
        "--nndiag", "test_ordinary.py", "nndiag::mlp::numerics", "--collect-only", "-q"
    )
    assert [line for line in both.stdout.lines if "::" in line] == [
        "test_ordinary.py::test_ordinary",
        "nndiag::mlp::numerics",
    ]
    typo = project.run("--nndiag", "nndiag::mpl", "--collect-only", "-q")
    assert typo.ret == pytest.ExitCode.USAGE_ERROR
    typo.stderr.fnmatch_lines(
        ["*no check of this run is named nndiag::mpl*subjects: mlp, huge_init, warns*"]
    )
    # Without the flag, the id is not taken for a missing file.
    plain = project.run("nndiag::mlp::numerics", "--collect-only", "-q")
    assert plain.ret == pytest.ExitCode.USAGE_ERROR
    plain.stderr.fnmatch_lines(
        ['*nndiag::mlp::numerics names an nndiag check*pytest --nndiag "nndiag::mlp::numerics"*']
    )
    assert "file or directory not found" not in plain.stderr.str()
    # A bare "nndiag" is a path to pytest (a directory of the user's may have that name).
    bare = project.run("nndiag", "--collect-only", "-q")
    assert "names an nndiag check" not in bare.stderr.str()


def test_a_path_selects_the_subjects_defined_under_it(project: Project) -> None:
    sub = project.path / "sub"
    sub.mkdir()
    (sub / "conftest.py").write_text(
        "import nndiag\n\n\n@nndiag.subject(checks=['numerics'])\ndef nested():\n"
        "    from models import data, mlp\n    return nndiag.Subject(mlp(), data())\n"
    )
    (sub / "test_here.py").write_text("def test_here():\n    pass\n")
    # A file that declares no subject: its own tests only, and the rule in one line.
    plain = project.run("--nndiag", "test_ordinary.py", "--collect-only", "-q")
    assert _ids(plain) == ["test_ordinary.py::test_ordinary"]
    plain.stdout.fnmatch_lines(["nndiag: none of the 6 subject(s) is defined under the paths*"])
    # A directory: the subjects of its conftest.py, not the root's.
    nested = project.run("--nndiag", "sub", "--collect-only", "-q")
    assert _ids(nested) == [
        "sub/test_here.py::test_here",
        "nndiag::nested::numerics",
    ]
    # No path: every subject.
    every = project.run("--nndiag", "--collect-only", "-q")
    assert "nndiag::nested::numerics" in every.stdout.lines
    assert "nndiag::mlp::numerics" in every.stdout.lines


def test_last_failed_reruns_only_the_failed_checks(project: Project) -> None:
    first = project.run("--nndiag", "-p", "no:randomly")
    assert first.ret == pytest.ExitCode.TESTS_FAILED
    # A fail and a broken factory's errors: what --lf reruns.
    failed = {
        line.split()[1] for line in first.stdout.lines if line.startswith(("FAILED", "ERROR"))
    }
    assert {"nndiag::mixer::batch_independence", "nndiag::broken_factory::initial_loss"} <= failed
    again = project.run("--nndiag", "--lf", "--collect-only", "-q", "-p", "no:randomly")
    # Only what failed is collected: no passing check, no ordinary test; and its subject's
    # factory alone is built when it runs.
    assert set(_ids(again)) == failed, again.stdout.str()
    project.log.unlink()
    rerun = project.run("--nndiag", "--lf", "-p", "no:randomly")
    assert rerun.ret == pytest.ExitCode.TESTS_FAILED
    built = {event for event, _ in project.events() if event.startswith("factory:")}
    assert built == {f"factory:{nodeid.split('::')[1]}" for nodeid in failed}
    rerun.stdout.fnmatch_lines(["*merged with * kept from earlier runs*"])
