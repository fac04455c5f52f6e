"""The DuckDB file held open by a program outside the pipeline: one clear line, bounded waits."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.drops import WAREHOUSE_BUSY, read_view
from core.warehouse import Warehouse, WarehouseHeld, locking, wait_seconds


@pytest.fixture
def notebook(warehouse: Warehouse) -> Iterator[subprocess.Popen]:
    """A notebook's plain `duckdb.connect(path)`, kept open; its command line carries a
    password-like argument, which must not be repeated."""
    warehouse.ensure_schema()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True);"
            " time.sleep(120)",
            str(warehouse.path),
            "--password=hunter2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    yield holder
    holder.kill()
    holder.wait(timeout=30)


def test_a_run_blocked_by_an_outside_holder_fails_with_one_line_naming_it(
    warehouse: Warehouse, notebook: subprocess.Popen
):
    impatient = Warehouse(warehouse.path, lock_timeout_s=0.5)
    with pytest.raises(WarehouseHeld) as error, impatient.transaction():
        pass
    message = str(error.value)
    assert "\n" not in message
    assert f"PID {notebook.pid}" in message
    assert "import duckdb" in message  # its command line, read from /proc
    assert "hunter2" not in message and "--password=***" in message
    assert "make sql" in message
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_the_sensor_reads_give_up_quickly_and_say_who_holds_the_file(
    warehouse: Warehouse, notebook: subprocess.Popen
):
    started = time.monotonic()
    view, note = read_view(Warehouse(warehouse.path, lock_timeout_s=0.5), ["d"], [])
    assert time.monotonic() - started < 5
    assert view is None
    assert note.startswith(WAREHOUSE_BUSY) and f"PID {notebook.pid}" in note


def test_waiting_for_another_writer_is_counted(warehouse: Warehouse):
    warehouse.ensure_schema()
    released = threading.Event()

    def hold() -> None:
        with locking.hold(warehouse.path, exclusive=True, timeout_s=10):
            released.wait(0.4)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.1)
    before = wait_seconds()
    with warehouse.transaction():
        pass
    holder.join()
    assert wait_seconds() - before >= 0.2
    assert os.getpid() > 0


def test_the_pid_and_command_line_come_from_duckdbs_error_text():
    from core.warehouse.holder import describe_holder

    text = f'IO Error: Could not set lock on file "/x.duckdb": Conflicting lock is held in /usr/bin/python3 (PID {os.getpid()}) by user root.'
    described = describe_holder(text)
    assert described.startswith(f"PID {os.getpid()} (")
    assert describe_holder("no pid here") == "no pid here"
    assert Path(f"/proc/{os.getpid()}/cmdline").exists()
