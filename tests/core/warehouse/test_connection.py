"""Short-lived connections: schema on first write, atomic transactions, waiting instead of failing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from core.warehouse import SCHEMA_VERSION, LockTimeout, Warehouse, WarehouseNotFound, connection
from core.warehouse.schema import MIGRATIONS


def _as_a_new_process(warehouse: Warehouse) -> None:
    """Forget what this process knows of the warehouse (a file it migrated, a lake it attached):
    the schema check runs once per process, at its first use."""
    connection._MIGRATED.clear()
    warehouse.close()


@pytest.mark.both_backends
def test_first_write_creates_every_migration_once(warehouse: Warehouse):
    warehouse.ensure_schema()
    warehouse.ensure_schema()
    versions = [
        row[0] for row in warehouse.rows("SELECT version FROM schema_migrations ORDER BY 1")
    ]
    assert versions == sorted(number for number, _, _ in MIGRATIONS)
    assert max(versions) == SCHEMA_VERSION


@pytest.mark.both_backends
def test_a_database_from_newer_code_is_not_written(warehouse: Warehouse):
    warehouse.ensure_schema()
    with warehouse.transaction() as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (9999, 'future', now())"
        )
    _as_a_new_process(warehouse)
    with pytest.raises(RuntimeError, match="9999"), warehouse.transaction() as conn:
        conn.execute("INSERT INTO write_guards VALUES ('written', 0)")
    _as_a_new_process(warehouse)
    with pytest.raises(RuntimeError, match="9999"):
        warehouse.ensure_schema()


@pytest.mark.both_backends
def test_a_failed_transaction_leaves_nothing(warehouse: Warehouse):
    warehouse.ensure_schema()
    with pytest.raises(ZeroDivisionError), warehouse.transaction() as conn:
        conn.execute(
            "INSERT INTO drops (drop_id, kind, first_ingested_at, last_ingested_at, files_seen,"
            " files_ingested, files_rejected, images_new) VALUES ('d', 'folder', now(), now(), 1, 1, 0, 1)"
        )
        _ = 1 / 0
    assert warehouse.rows("SELECT count(*) FROM drops") == [(0,)]


def test_reading_a_warehouse_that_does_not_exist_says_so(tmp_path: Path):
    with pytest.raises(WarehouseNotFound, match="make demo"):
        Warehouse(tmp_path / "nope.duckdb").query("SELECT 1")


def test_a_reader_waits_for_a_writer_and_sees_its_commit(warehouse: Warehouse):
    warehouse.ensure_schema()
    inside = threading.Event()

    def write_slowly() -> None:
        with warehouse.transaction() as conn:
            inside.set()
            conn.execute(
                "INSERT INTO drops (drop_id, kind, first_ingested_at, last_ingested_at, files_seen,"
                " files_ingested, files_rejected, images_new) VALUES ('d', 'folder', now(), now(), 1, 1, 0, 1)"
            )
            time.sleep(0.5)

    writer = threading.Thread(target=write_slowly)
    writer.start()
    inside.wait()
    assert warehouse.rows("SELECT count(*) FROM drops") == [(1,)]
    writer.join()


def test_lock_waits_end_with_a_clear_timeout(warehouse: Warehouse):
    warehouse.ensure_schema()
    impatient = Warehouse(warehouse.path, lock_timeout_s=0.2)
    with warehouse.transaction(), pytest.raises(LockTimeout, match="timed out"):
        impatient.query("SELECT 1")


def test_a_foreign_process_holding_the_file_is_waited_out(warehouse: Warehouse):
    """The DuckDB CLI or a notebook does not take our lock; we retry DuckDB's own lock error."""
    warehouse.ensure_schema()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True);"
            " time.sleep(1.5); c.close()",
            str(warehouse.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(duckdb.IOException):
        duckdb.connect(str(warehouse.path), read_only=True)  # what a naive reader gets
    assert warehouse.rows("SELECT count(*) FROM drops") == [(0,)]
    holder.wait(timeout=30)


def test_an_unopenable_path_with_lock_in_its_name_fails_at_once(tmp_path, monkeypatch):
    """Only DuckDB's lock conflict is waited for: a directory named `blocked.duckdb` is not one
    (the word "lock" in a path once made every open retry until the lock timeout)."""
    import duckdb

    from core.warehouse import connection

    blocked = tmp_path / "blocked.duckdb"
    blocked.mkdir()
    opens = []
    real_connect = duckdb.connect

    def counting_connect(*args, **kwargs):
        opens.append(args)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(connection.duckdb, "connect", counting_connect)
    with (
        pytest.raises(duckdb.IOException, match="Is a directory"),
        Warehouse(blocked, lock_timeout_s=3).transaction(),
    ):
        pass
    assert len(opens) == 1


def test_threads_opening_and_closing_readers_always_find_the_python_scans(warehouse: Warehouse):
    """Three threads open short readers that scan an Arrow table, as a run's reads and a
    watcher's polls do (failed once in CI's kill test: "Table Function with name
    python_arrow_scan does not exist"; without the open/close lock this fails within seconds)."""
    import pyarrow as pa

    warehouse.ensure_schema()
    table = pa.table({"x": list(range(10))})
    errors: list[str] = []
    stop = time.monotonic() + 8.0

    def loop() -> None:
        while time.monotonic() < stop and not errors:
            try:
                with warehouse.reader() as conn:
                    conn.register("t", table)
                    assert conn.execute("SELECT count(*) FROM t").fetchone() == (10,)
            except Exception as error:  # the outcome under test
                errors.append(repr(error))

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
