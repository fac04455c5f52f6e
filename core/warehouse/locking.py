"""A writer-preferring reader/writer lock between processes, built on two `flock` files.

DuckDB lets one process write a database file, and while it holds the file no other process can
open it, not even read-only. Every process of the pipeline therefore takes this lock before it
opens the file and keeps connections short. Readers share the data lock; a writer first takes the
gate, which stops new readers from queueing ahead of it, then waits for the data lock alone.
The kernel drops `flock` locks when a process dies, so a crash never leaves the file locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

from core.warehouse.waits import add_wait


class LockTimeout(TimeoutError):
    """The warehouse stayed locked by other processes for longer than the caller allowed."""


def _acquire(fd: int, operation: int, deadline: float, what: str) -> None:
    delay = 0.001
    started = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"timed out waiting for the {what}") from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.05)
    finally:
        add_wait(time.monotonic() - started if delay > 0.001 else 0.0)


@contextlib.contextmanager
def _locked_file(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases its flock


@contextlib.contextmanager
def hold(database: Path, *, exclusive: bool, timeout_s: float) -> Iterator[None]:
    """Hold the lock of `database` shared (readers) or exclusive (writers)."""
    deadline = time.monotonic() + timeout_s
    gate_path = database.with_name(database.name + ".gate.lock")
    data_path = database.with_name(database.name + ".lock")
    with _locked_file(gate_path) as gate, _locked_file(data_path) as data:
        if exclusive:
            _acquire(gate, fcntl.LOCK_EX, deadline, f"write gate of {database}")
            try:
                _acquire(data, fcntl.LOCK_EX, deadline, f"write lock of {database}")
            finally:
                fcntl.flock(gate, fcntl.LOCK_UN)
        else:
            _acquire(gate, fcntl.LOCK_SH, deadline, f"read gate of {database}")
            try:
                _acquire(data, fcntl.LOCK_SH, deadline, f"read lock of {database}")
            finally:
                fcntl.flock(gate, fcntl.LOCK_UN)
        yield
