"""A throwaway PostgreSQL cluster for the tests: the server's own initdb and pg_ctl, one database per test.

The cluster lives in a temporary folder, listens on 127.0.0.1 at a free port and trusts local
connections; it is stopped (immediately) at the end of the session. initdb refuses to run as root, so as
root the cluster is run as the `postgres` system user (the Debian package creates it). Tests are skipped
only when no PostgreSQL server binaries are installed (.ci/run installs them).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from db.store import Store


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """A running cluster: its port, its folder, and how to start, stop and make databases."""

    bin_dir: Path
    data_dir: Path
    port: int
    run_as: list[str]

    def url(self, database: str = "postgres") -> str:
        """The tuwen URL of `database` (no password: the cluster trusts local connections)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def ctl(self, *args: str) -> None:
        """Run pg_ctl on this cluster (start, stop)."""
        options = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [
                *self.run_as,
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-o",
                options,
                "-w",
                *args,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        """Start the server (again) and wait until it accepts connections."""
        self.ctl("-l", str(self.data_dir / "server.log"), "start")

    def stop(self) -> None:
        """Stop the server at once (open connections are cut)."""
        self.ctl("-m", "immediate", "stop")

    def create_database(self) -> str:
        """A new empty database; returns its tuwen URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One PostgreSQL cluster for the whole test session."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip(
            "no PostgreSQL server installed (/usr/lib/postgresql/*/bin/initdb; apt install postgresql)"
        )
    pytest.importorskip("psycopg", reason="psycopg is in the dev extra: pip install -e '.[dev]'")
    root = Path(tempfile.mkdtemp(prefix="tuwen-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    data_dir = root / "data"
    subprocess.run(
        [
            *run_as,
            str(bin_dir / "initdb"),
            "-D",
            str(data_dir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    cluster = Cluster(bin_dir, data_dir, _free_port(), run_as)
    cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped by a test
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """The URL of a fresh, empty database on the session's cluster."""
    return pg_cluster.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_on_each(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated store on a SQLite file, and (the test's second run) on a fresh PostgreSQL database."""
    target = tmp_path / "tuwen.sqlite3" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened = Store(target)
    opened.migrate()
    yield opened
    opened.close()
