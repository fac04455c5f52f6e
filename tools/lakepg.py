"""A PostgreSQL 15 server for the lake's catalog, from Debian's package, in a folder of the project.

    python -m tools.lakepg up      # initialise (once) and start on 127.0.0.1; prints what to export
    python -m tools.lakepg down    # stop it
    python -m tools.lakepg env     # the variables that point the pipeline at it

`make lake-up` / `make lake-down` run these. The server listens on 127.0.0.1 only (and on a Unix
socket in the folder), password authentication (SCRAM) for TCP: the generated password lives in
a libpq passfile in the folder (mode 0600), which the pipeline reads through `PGPASSFILE`; it is
never on a command line. PostgreSQL refuses to run as root, so as root the server runs as the
`postgres` user (`runuser`), which owns the data folder. The tests start their own server the
same way (tests/fixtures/lake.py).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path(os.environ.get("IMAGE_PIPELINE_PG_BIN", "/usr/lib/postgresql/15/bin"))
DEFAULT_DIR = REPO_ROOT / ".lake"
DEFAULT_PORT = 5433
USER = "postgres"
CATALOG_DB = "lake"


class PostgresMissing(RuntimeError):
    """Debian's PostgreSQL 15 server binaries are not installed here."""


def available() -> str | None:
    """None when a server can be started here, else why not (for a test's skip reason)."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL is not installed ({PG_BIN}/initdb missing; apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL cannot be started as `postgres`"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Cluster:
    """One PostgreSQL data folder and the port it serves on."""

    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "pg"

    @property
    def socket_dir(self) -> Path:
        return self.folder / "run"

    @property
    def passfile(self) -> Path:
        return self.folder / "pgpass"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    @property
    def lake_data(self) -> Path:
        """The lake's data path (Parquet files), beside the catalog server's folder."""
        return self.folder / "data"

    def conninfo(self, dbname: str = CATALOG_DB) -> str:
        """libpq conninfo without a password (libpq reads it from PGPASSFILE/PGPASSWORD)."""
        return f"dbname={dbname} host=127.0.0.1 port={self.port} user={USER}"

    def env(self) -> dict[str, str]:
        """What a libpq client needs beside the conninfo: where the password is."""
        return {"PGPASSFILE": str(self.passfile)}

    # --- running commands as the server's owner -------------------------------------------------

    def _as_owner(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", USER, "--", *argv]
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, USER, USER)

    # --- lifecycle ---------------------------------------------------------------------------------

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists() and self.passfile.exists()

    def init(self) -> None:
        """initdb with SCRAM for TCP and a generated password (written to the passfile only)."""
        reason = available()
        if reason:
            raise PostgresMissing(reason)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._chown(self.socket_dir)
        password = secrets.token_urlsafe(24)
        pwfile = self.folder / "initdb.pw"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o600)
        self._chown(pwfile)
        if self.data.exists():
            shutil.rmtree(self.data)
        self.data.mkdir()
        self._chown(self.data)
        try:
            self._as_owner(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    USER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--no-sync",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        # host:port:database:user:password; `*` port: the port may change between starts.
        self.passfile.write_text(f"127.0.0.1:*:*:{USER}:{password}\n")
        os.chmod(self.passfile, 0o600)

    def running(self) -> bool:
        if not (self.data / "postmaster.pid").exists():
            return False
        try:
            self._as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"])
            return True
        except subprocess.CalledProcessError:
            return False

    def start(self, *, fast: bool = False) -> None:
        """Start the server on 127.0.0.1:port and wait until it accepts connections."""
        if not self.initialised():
            self.init()
        if self.running():
            return
        options = (
            f"-p {self.port} -k {shlex.quote(str(self.socket_dir))} -c listen_addresses=127.0.0.1"
        )
        if fast:  # tests: a crash loses the catalog, which is thrown away anyway
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            options += " -c max_connections=400 -c autovacuum=off"
        log = self.log
        log.touch()
        self._chown(log)
        try:
            self._as_owner(
                [
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-o",
                    options,
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            )
        except subprocess.CalledProcessError as error:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"PostgreSQL did not start: {error.stderr.strip()}\n{tail}"
            ) from None
        if not self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{CATALOG_DB}'").strip():
            self.psql(f"CREATE DATABASE {CATALOG_DB}")

    def stop(self) -> None:
        if self.running():
            self._as_owner(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
            )

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket (trust: no password needed)."""
        try:
            return self._psql(sql, dbname)
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"psql failed: {sql}: {error.stderr.strip()}") from None

    def _psql(self, sql: str, dbname: str) -> str:
        result = self._as_owner(
            [
                str(PG_BIN / "psql"),
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                USER,
                "-d",
                dbname,
                "-c",
                sql,
            ]
        )
        return result.stdout


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _cluster(args: argparse.Namespace) -> Cluster:
    return Cluster(Path(args.dir).absolute(), args.port)


def _print_env(cluster: Cluster) -> None:
    print(f"export IMAGE_PIPELINE_WAREHOUSE='ducklake:postgres:{cluster.conninfo()}'")
    print(f"export IMAGE_PIPELINE_LAKE_DATA_PATH='{cluster.lake_data}'")
    print(f"export PGPASSFILE='{cluster.passfile}'")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.lakepg", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["up", "down", "env", "status"])
    parser.add_argument(
        "--dir", default=os.environ.get("IMAGE_PIPELINE_LAKE_DIR", str(DEFAULT_DIR))
    )
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("IMAGE_PIPELINE_LAKE_PORT", DEFAULT_PORT))
    )
    args = parser.parse_args(argv)
    cluster = _cluster(args)
    if args.command == "up":
        try:
            cluster.start()
        except PostgresMissing as error:
            print(error, file=sys.stderr)
            return 2
        cluster.lake_data.mkdir(parents=True, exist_ok=True)
        print(
            f"PostgreSQL on 127.0.0.1:{cluster.port}, catalog database {CATALOG_DB!r}; folder {cluster.folder}"
        )
        _print_env(cluster)
    elif args.command == "down":
        cluster.stop()
        print(f"stopped PostgreSQL in {cluster.data}")
    elif args.command == "status":
        print("running" if cluster.running() else "stopped")
        return 0 if cluster.running() else 1
    else:
        _print_env(cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
