"""A throw-away PostgreSQL server for the search's shared-storage test: ``initdb`` into a
temporary folder and a server listening on a Unix socket only, stopped afterwards.

Where no server can start (no Debian ``postgresql`` binaries, no psycopg) the test skips
and says why; under ``CI=true`` it fails instead, since ``.ci/run`` installs both.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL test cannot run under CI: {reason}")
    pytest.skip(reason)


def _binaries() -> tuple[str, str] | None:
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        initdb, pg_ctl = os.path.join(folder, "initdb"), os.path.join(folder, "pg_ctl")
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return initdb, pg_ctl
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return (initdb, pg_ctl) if initdb and pg_ctl else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """An SQLAlchemy URL of a fresh PostgreSQL database on a local socket."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'psycopg[binary]')")
    found = _binaries()
    if found is None:
        _unavailable("no PostgreSQL server binaries (apt-get install postgresql)")
    assert found is not None
    initdb, pg_ctl = found
    # The server refuses to run as root: run it as the postgres user Debian's package adds.
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            _unavailable("running as root without runuser to start the server as postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    root = tempfile.mkdtemp(prefix="nndiag-pg-")  # short: a socket path has ~100 bytes
    os.chmod(root, 0o777)
    data, socket_dir = os.path.join(root, "data"), root
    run = dict(capture_output=True, text=True, timeout=120)
    made = subprocess.run(
        [*prefix, initdb, "-D", data, "-A", "trust", "-U", "nndiag", "--no-sync"], **run
    )
    if made.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        _unavailable(f"initdb failed: {made.stderr.strip()[-300:]}")
    options = f"-k {socket_dir} -c listen_addresses='' -F"
    log = os.path.join(root, "server.log")
    started = subprocess.run(
        [*prefix, pg_ctl, "-D", data, "-o", options, "-l", log, "-w", "start"], **run
    )
    if started.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        _unavailable(f"the server did not start: {started.stderr.strip()[-300:]}")
    try:
        yield f"postgresql+psycopg://nndiag@/postgres?host={socket_dir}"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop"], **run)
        shutil.rmtree(root, ignore_errors=True)
