from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import report_synthetic as synthetic

from nndiag.cli import main
from nndiag.report import render_html
from nndiag.results import Report


@pytest.fixture()
def saved(tmp_path: Path, demo_report: Report) -> Path:
    return demo_report.to_json(tmp_path / "reports" / "nndiag.json")


def one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("nndiag report: error: "), err
    for word in words:
        assert word in err, err
    return err


def test_round_trip_gives_the_same_page(
    saved: Path, tmp_path: Path, demo_report: Report, capsys: pytest.CaptureFixture[str]
) -> None:
    direct = demo_report.to_html(tmp_path / "direct.html")
    out = tmp_path / "out.html"
    assert main(["report", str(saved), "-o", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert out.read_text(encoding="utf-8") == direct.read_text(encoding="utf-8")


def test_round_trip_with_nonfinite_values(tmp_path: Path) -> None:
    result = synthetic.result("net", "overfit_small", "fail")
    evidence = dict(result.evidence, loss=[2.3, float("nan"), float("inf")], target_loss=None)
    report = Report(
        [
            type(result)(
                result.check,
                "fail",
                "diverged",
                metrics={"final": float("inf")},
                evidence=evidence,
                subject="net",
            )
        ],
        meta=synthetic.META,
    )
    saved = report.to_json(tmp_path / "r.json")
    assert main(["report", str(saved), "--output", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text(encoding="utf-8") == render_html(report)


def test_default_output_is_next_to_the_input(saved: Path) -> None:
    assert main(["report", str(saved)]) == 0
    assert saved.with_suffix(".html").is_file()


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope.json")]) == 2
    one_line_error(capsys, "no such file", "nope.json")


def test_directory_as_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    one_line_error(capsys, "is a directory")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("this is not json", ["is not JSON", "line 1"]),
        ("", ["is not JSON"]),
        ("[1, 2]", ["not an nndiag report"]),
        ('{"schema": "other/2", "results": []}', ["not an nndiag report", "other/2"]),
        ('{"schema": "nndiag.report/1"}', ["not a well-formed nndiag report", "results"]),
        ('{"schema": "nndiag.report/1", "results": [{"check": "x"}]}', ["not a well-formed"]),
        (
            (
                '{"schema": "nndiag.report/1", "results": [{"check": "x", "status": "great", '
                '"message": "m"}]}'
            ),
            ["status must be one of"],
        ),
        (
            (
                '{"schema": "nndiag.report/1", "results": [{"check": "x", "status": "pass", '
                '"message": "m", "cost": {"passes": 1}}]}'
            ),
            ["not a well-formed"],
        ),
    ],
)
def test_not_an_nndiag_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, words: list[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content, encoding="utf-8")
    assert main(["report", str(bad), "-o", str(tmp_path / "bad.html")]) == 2
    one_line_error(capsys, *words)
    assert not (tmp_path / "bad.html").exists()


def test_binary_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "image.json"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    assert main(["report", str(bad)]) == 2
    one_line_error(capsys, "image.json")


def test_output_would_overwrite_input(
    tmp_path: Path, demo_report: Report, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = demo_report.to_json(tmp_path / "r.html")
    assert main(["report", str(saved)]) == 2
    one_line_error(capsys, "overwrite")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["report", str(saved), "-o", str(locked / "out.html")]) == 1
    one_line_error(capsys, "cannot write")


def test_output_is_a_directory(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(saved), "-o", str(tmp_path)]) == 1
    one_line_error(capsys, "cannot write")


def test_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: nndiag" in err and "choose a command" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report"]) == 2
    assert "REPORT.json" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--help"]) == 0
    assert "self-contained HTML" in capsys.readouterr().out


def test_console_entry_point_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": "world"}), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "nndiag.cli", "report", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        (
            f"nndiag report: error: {bad}: not an nndiag report: schema None, "
            "expected 'nndiag.report/1'"
        )
    ]


def test_checks_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    from nndiag.checks import registry

    assert main(["checks"]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    for spec in registry().values():
        assert f"{spec.id} (" in out and " ".join(spec.doc.split()) in flat
    # Each setting with its value, as pyproject.toml spells both; lines fit the terminal.
    assert "independence-rows = 8" in out
    assert "regularization-strengths = [0.0, 0.001, 1.0, 1000.0]" in out
    assert "learning_rate (opt-in)\n" in out and "cost: a range test" in flat
    assert max(len(line) for line in out.splitlines()) <= 100


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # as `nndiag checks | head -1` leaves it, before nndiag writes
    script = "from nndiag.cli import main; raise SystemExit(main(['checks']))"
    done = subprocess.run([sys.executable, "-c", script], stdout=write, stderr=subprocess.PIPE)
    os.close(write)
    assert done.stderr == b"" and done.returncode == 1
