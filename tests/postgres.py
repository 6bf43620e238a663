"""A real PostgreSQL server for the tests that share a study through an RDB: `postgres_url`.

The server is Debian's `postgresql` package (`.ci/run` installs it where missing): `initdb` into a temp dir, started
by `pg_ctl` on a unix socket in that dir only (no TCP port), password authentication, one database, stopped and
removed after the session. initdb refuses to run as root, so under root the server runs as the `postgres` user.
Tests using it skip, saying why, only where the binaries or a non-root user cannot be had."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

PASSWORD = "cnnlab-test"
DATABASE = "cnnlab_test"


def find_postgres_bin() -> Path | None:
    """The directory holding initdb and pg_ctl: PATH first, then Debian's versioned directories (newest)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def server_user() -> str | None:
    """Who runs the server: this user, or `postgres` when this is root; None when root has no one to run as."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return "postgres" if shutil.which("runuser") else None


@pytest.fixture(scope="session")
def postgres_url():
    """postgresql://postgres:<password>@/cnnlab_test?host=<socket dir>: a fresh server for this test session."""
    bin_dir, user = find_postgres_bin(), server_user()
    if bin_dir is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl not found (apt-get install postgresql)")
    if user is None:
        pytest.skip("running as root with no 'postgres' user (or no runuser) to run initdb as")
    psycopg2 = pytest.importorskip("psycopg2", reason='psycopg2 not installed (pip install "cnnlab[postgres]")')

    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", user, "--"] if as_root else []
    root = Path(tempfile.mkdtemp(prefix="cnnlab-pg-"))  # short: a socket path is limited to ~100 bytes
    data, log = root / "data", root / "server.log"
    (root / "pwfile").write_text(PASSWORD + "\n")
    if as_root:
        entry = pwd.getpwnam(user)
        for path in (root, root / "pwfile"):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def server(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*run_as, *args], capture_output=True, text=True, timeout=120, check=check)

    try:
        server(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
               f"--pwfile={root / 'pwfile'}", "--no-sync", "-E", "UTF8")
        # No TCP listener, fsync off: a throwaway server that nothing outside this test session can reach.
        options = f"-k {root} -c listen_addresses='' -c fsync=off -c synchronous_commit=off"
        server(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start")
    except subprocess.CalledProcessError as failed:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {failed.stderr or failed.stdout}"
                    + (log.read_text() if log.exists() else ""))
    try:
        admin = psycopg2.connect(dbname="postgres", user="postgres", password=PASSWORD, host=str(root))
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {DATABASE}")
        admin.close()
        yield f"postgresql://postgres:{PASSWORD}@/{DATABASE}?host={root}"
    finally:
        server(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)
