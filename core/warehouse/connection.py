"""Short-lived DuckDB connections that many processes can share safely.

Writers hold a connection for one transaction and readers for one query; both go through the
lock in `core.warehouse.locking`, and both retry if a process outside the pipeline (the DuckDB
CLI, a notebook) holds the file. Use `Warehouse.query` to read while the pipeline runs.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from core.warehouse import locking
from core.warehouse.locking import LockTimeout
from core.warehouse.schema import migrate

__all__ = ["LockTimeout", "Warehouse", "WarehouseNotFound"]


# DuckDB's Python client shares one database instance between the connections of a process
# and registers its Python scans (`python_arrow_scan`) on that instance as it opens it: a thread
# that connects while another is opening or closing the instance can find them missing
# ("Table Function with name python_arrow_scan does not exist"). Opening and closing are
# serialised here; queries still run in parallel.
_OPEN_CLOSE = threading.Lock()


def _close(conn: duckdb.DuckDBPyConnection) -> None:
    with _OPEN_CLOSE:
        conn.close()


class WarehouseNotFound(FileNotFoundError):
    """A reader asked for a warehouse that no pipeline run has created yet."""


def _is_lock_conflict(error: duckdb.Error) -> bool:
    """DuckDB's own words for a file another process holds ("Could not set lock on file ...:
    Conflicting lock is held in ..."); a path that merely contains "lock" is not one."""
    text = str(error)
    return "Conflicting lock" in text or "Could not set lock" in text


class Warehouse:
    """One DuckDB file. Cheap to construct; opens nothing until a read or write asks for it."""

    def __init__(self, path: str | Path, *, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path).expanduser().absolute()
        self.lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"Warehouse({str(self.path)!r})"

    def _open(self, *, read_only: bool, deadline: float) -> duckdb.DuckDBPyConnection:
        """Open a connection, retrying with jittered backoff while a foreign process holds the file."""
        delay = 0.01
        while True:
            try:
                with _OPEN_CLOSE:
                    return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.IOException as error:
                if not _is_lock_conflict(error) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction: everything inside commits together or not at all."""
        deadline = time.monotonic() + self.lock_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with locking.hold(self.path, exclusive=True, timeout_s=self.lock_timeout_s):
            conn = self._open(read_only=False, deadline=deadline)
            try:
                migrate(conn)
                conn.execute("BEGIN TRANSACTION")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                _close(conn)

    @contextlib.contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection for a few queries; writers wait until it closes."""
        if not self.path.exists():
            raise WarehouseNotFound(
                f"no warehouse at {self.path}: run `make demo` or materialize `images` first"
            )
        deadline = time.monotonic() + self.lock_timeout_s
        with locking.hold(self.path, exclusive=False, timeout_s=self.lock_timeout_s):
            conn = self._open(read_only=True, deadline=deadline)
            try:
                yield conn
            finally:
                _close(conn)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
        """Run one parameterized read query and return the result as a polars DataFrame.

        Safe to call in a loop while pipeline runs write: it waits through their short write
        transactions instead of failing on DuckDB's file lock.
        """
        with self.reader() as conn:
            return conn.sql(sql, params=params).pl()

    def rows(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple]:
        """Like `query`, returning plain tuples."""
        with self.reader() as conn:
            return conn.execute(sql, params).fetchall()

    def ensure_schema(self) -> None:
        """Create or upgrade the tables; writers also do this on their first transaction."""
        with self.transaction():
            pass

    def columns(self, table: str) -> list[tuple[str, str]]:
        """(name, DuckDB type) of each column of `table`, in order."""
        return [
            (str(name), str(data_type))
            for name, data_type in self.rows(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_name = ? ORDER BY ordinal_position",
                [table],
            )
        ]
