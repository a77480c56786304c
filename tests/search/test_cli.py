"""``nndiag search``: options, [tool.nndiag.search] defaults, the progress line, errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from nndiag.cli import main
from nndiag.tuning.command import ProgressBar
from nndiag.tuning.engine import Progress

pytest.importorskip("optuna")


def test_search_from_options_writes_the_page_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "search",
            "tests.search.helpers:regression",
            "--space", "lr=log:1e-3:1",
            "--trials", "3,2",
            "--stages", "2",
            "--steps", "5",
            "--validation", "tests.search.helpers:validation_data",
            "--storage", f"sqlite:///{tmp_path / 's.db'}",
            "--study", "cli",
            "--html", str(tmp_path / "s.html"),
            "--json", str(tmp_path / "s.json"),
            "--config", str(tmp_path / "none.toml"),
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads((tmp_path / "s.json").read_text())
    assert [len([t for t in data["trials"] if t["stage"] == s]) for s in (0, 1)] == [3, 2]
    assert (tmp_path / "s.html").is_file()
    assert "best validation loss" in out and "resume or extend: nndiag search" in out
    assert "--study cli" in out
    lines = err.strip().splitlines()  # not a terminal: one plain line per trial
    assert len(lines) == 5 and lines[-1].startswith("5/5 trials (stage 2), best validation loss")


def test_defaults_come_from_pyproject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.nndiag.search]\n"
        'factory = "tests.search.helpers:regression"\n'
        'space = ["lr=log:1e-3:1"]\n'
        "trials = 2\nstages = 1\nsteps = 4\n"
        f'storage = "sqlite:///{tmp_path / "t.db"}"\n'
        'html = "out/page.html"\njson = "out/result.json"\n'
    )
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--trials", "3"]) == 0  # the option wins over the table
    data = json.loads((tmp_path / "out" / "result.json").read_text())
    assert len(data["trials"]) == 3 and data["ranges"][0]["steps"] == 4


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["search", "--space", "lr=log:1e-3:1"], "factory: not given"),
        (["search", "nope.module:f", "--space", "lr=log:1e-3:1"], "cannot import 'nope.module'"),
        (["search", "tests.search.helpers:regression"], "--space: not given"),
        (["search", "tests.search.helpers:regression", "--space", "lr=exp:1:2"], "unknown kind"),
        (["search", "tests.search.helpers:regression", "--space", "lr=log:1:x"], "two numbers"),
    ],
)
def test_usage_errors_are_one_line(
    argv: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--config", str(tmp_path / "none.toml")]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and err.count("\n") == 1


def test_an_unknown_pyproject_key_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "pyproject.toml"
    config.write_text("[tool.nndiag.search]\ntrails = 3\n")
    assert main(["search", "--config", str(config)]) == 2
    assert "unknown key(s) 'trails'" in capsys.readouterr().err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_redraws_one_line_on_a_terminal() -> None:
    stream = Terminal()
    bar = ProgressBar(stream)
    bar(Progress(1, 4, 0, None, "validation accuracy", None))
    bar(Progress(2, 4, 0, 0.75, "validation accuracy", 95.0))
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "[############............] 2/4 trials (stage 1)" in text
    assert "best validation accuracy 0.75, ETA 1m35s" in text
