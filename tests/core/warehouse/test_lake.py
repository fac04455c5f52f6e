"""The lake backend against a real PostgreSQL: opening, failing at start, conflicts, readers."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import time
from pathlib import Path

import duckdb
import pytest

from core.warehouse import CommitConflict, Warehouse, open_warehouse, wait_seconds
from core.warehouse.lake import LakeUnavailable, LakeWarehouse
from tests.fixtures import lake_processes
from tests.fixtures.lake import LakeServer

spawn = multiprocessing.get_context("spawn")


def _drop_row(conn: duckdb.DuckDBPyConnection, drop_id: str) -> None:
    conn.execute(
        "INSERT INTO drops (drop_id, kind, first_ingested_at, last_ingested_at, files_seen,"
        " files_ingested, files_rejected, images_new, files_vanished)"
        " VALUES (?, 'folder', now(), now(), 1, 1, 0, 1, 0)",
        [drop_id],
    )


def _catalog_tables(server: LakeServer, dbname: str) -> int:
    out = server.cluster.psql(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'", dbname
    )
    return int(out.strip())


def test_a_lake_target_opens_a_lake_and_a_path_a_file(lake: LakeWarehouse, tmp_path: Path):
    assert isinstance(Warehouse(lake.target, data_path=lake.data_path), LakeWarehouse)
    assert isinstance(open_warehouse(lake.target, data_path=lake.data_path), LakeWarehouse)
    assert not isinstance(open_warehouse(str(tmp_path / "w.duckdb")), LakeWarehouse)


def test_the_lake_is_created_at_the_current_schema_in_one_snapshot(lake: LakeWarehouse):
    with lake.reader() as conn:
        created = conn.execute(
            "SELECT count(*) FROM lake.snapshots() WHERE changes['tables_created'] IS NOT NULL"
        ).fetchone()
        keys = conn.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE database_name = 'lake'"
            " AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')"
        ).fetchone()
    assert created == (1,)
    assert keys == (0,)
    assert ("embedding", "FLOAT[]") in lake.columns("clip_embeddings")


def test_a_password_in_the_target_is_refused_and_none_reaches_repr(lake_server: LakeServer):
    with pytest.raises(ValueError, match="PGPASSWORD"):
        LakeWarehouse(lake_server.target("x") + " password=hunter2")
    warehouse = lake_server.warehouse("lake_template")
    assert "hunter2" not in repr(warehouse) and "password" not in warehouse.key


def test_an_unreachable_server_fails_at_start_with_a_clear_error(lake_server: LakeServer):
    from tools.lakepg import free_port

    target = f"ducklake:postgres:dbname=lake host=127.0.0.1 port={free_port()} user=postgres"
    with pytest.raises(LakeUnavailable, match=r"cannot open the lake.*Connection refused"):
        LakeWarehouse(target, data_path=str(lake_server.data)).ensure_schema()


def test_wrong_credentials_fail_at_start_and_the_password_is_not_repeated(
    lake_server: LakeServer, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("PGPASSFILE")
    monkeypatch.setenv("PGPASSWORD", "not-the-password")
    warehouse = lake_server.fresh()
    with pytest.raises(LakeUnavailable, match="password authentication failed") as error:
        warehouse.ensure_schema()
    assert "not-the-password" not in str(error.value)


def test_no_lake_and_no_data_path_fails_and_writes_nothing(lake_server: LakeServer):
    lake_server.cluster.psql("CREATE DATABASE empty_catalog")
    warehouse = LakeWarehouse(lake_server.target("empty_catalog"))
    with pytest.raises(LakeUnavailable, match="IMAGE_PIPELINE_LAKE_DATA_PATH"):
        warehouse.ensure_schema()
    assert _catalog_tables(lake_server, "empty_catalog") == 0


def test_a_missing_extension_wheel_fails_at_start_and_writes_nothing(
    lake_server: LakeServer, monkeypatch: pytest.MonkeyPatch
):
    import importlib.util

    from core.warehouse import lake as lake_module

    real = importlib.util.find_spec
    monkeypatch.setattr(
        lake_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "duckdb_extension_ducklake" else real(name, *a),
    )
    lake_server.cluster.psql("CREATE DATABASE no_wheel")
    warehouse = LakeWarehouse(lake_server.target("no_wheel"), data_path=str(lake_server.data))
    with pytest.raises(LakeUnavailable, match=r"pip install duckdb-extension-ducklake==1\.5\.5"):
        warehouse.ensure_schema()
    assert _catalog_tables(lake_server, "no_wheel") == 0


def test_the_stamp_moves_with_each_commit_and_only_then(lake: LakeWarehouse):
    first = lake.stamp()
    assert lake.stamp() == first
    lake.rows("SELECT count(*) FROM drops")
    assert lake.stamp() == first  # reads make no snapshot
    lake.write(lambda conn: _drop_row(conn, "d"))
    assert lake.stamp() != first


def test_a_reader_does_not_wait_for_a_writer_and_sees_only_commits(lake: LakeWarehouse):
    with lake.transaction() as conn:
        _drop_row(conn, "uncommitted")
        assert lake.rows("SELECT count(*) FROM drops") == [(0,)]  # answered at once
    assert lake.rows("SELECT count(*) FROM drops") == [(1,)]


def _conflicting_writes(lake: LakeWarehouse, attempts: list[int]):
    """Work that bumps the guard row, while another connection bumps it first every time."""
    other = LakeWarehouse(lake.target, data_path=lake.data_path, max_attempts=1)

    def work(conn: duckdb.DuckDBPyConnection) -> None:
        attempts.append(1)
        conn.execute("UPDATE write_guards SET bumps = bumps + 1 WHERE name = 'images'")
        _drop_row(conn, f"try{len(attempts)}")
        other.write(
            lambda c: c.execute("UPDATE write_guards SET bumps = bumps + 1 WHERE name = 'images'")
        )

    return work


def test_a_commit_conflict_is_replayed_a_bounded_number_of_times_then_named(
    lake: LakeWarehouse,
):
    bounded = LakeWarehouse(lake.target, data_path=lake.data_path, max_attempts=3)
    attempts: list[int] = []
    waited = wait_seconds()
    with pytest.raises(CommitConflict, match=r"gave up after 3 attempts.*Transaction conflict"):
        bounded.write(_conflicting_writes(lake, attempts))
    assert len(attempts) == 3
    assert wait_seconds() > waited  # the backoff between attempts is counted
    assert lake.rows("SELECT count(*) FROM drops") == [(0,)]  # nothing half-written
    assert lake.rows("SELECT bumps FROM write_guards") == [(3,)]  # only the other's


def test_a_replayed_write_commits_once(lake: LakeWarehouse):
    calls: list[int] = []
    other = LakeWarehouse(lake.target, data_path=lake.data_path)

    def work(conn: duckdb.DuckDBPyConnection) -> str:
        calls.append(1)
        conn.execute("UPDATE write_guards SET bumps = bumps + 1 WHERE name = 'images'")
        _drop_row(conn, "once")
        if len(calls) == 1:  # another writer commits first, once
            other.write(lambda c: c.execute("UPDATE write_guards SET bumps = bumps + 10"))
        return "done"

    assert lake.write(work) == "done"
    assert len(calls) == 2
    assert lake.rows("SELECT drop_id FROM drops") == [("once",)]
    assert lake.rows("SELECT bumps FROM write_guards") == [(11,)]


def test_two_drops_with_the_same_bytes_committing_at_once_make_one_image(
    lake: LakeWarehouse, tmp_path: Path
):
    """Both ingestions reach COMMIT together (a file barrier holds each open transaction until
    the other is ready): without the guard row both would insert the image."""
    from tests.fixtures.bad_inputs import jpeg_bytes

    root = tmp_path / "drops"
    for drop in ("a", "b"):
        (root / drop).mkdir(parents=True)
        (root / drop / "same.jpg").write_bytes(jpeg_bytes(64, 48, seed=7))
        (root / drop / f"own-{drop}.jpg").write_bytes(jpeg_bytes(64, 48, seed=ord(drop)))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    processes = [
        spawn.Process(
            target=lake_processes.ingest_at_barrier,
            args=(lake.target, lake.data_path, str(root), drop, str(barrier), str(tmp_path)),
        )
        for drop in ("a", "b")
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    outcomes = [json.loads((tmp_path / f"{d}.json").read_text()) for d in ("a", "b")]
    assert [o["error"] for o in outcomes] == [None, None]
    assert sum(o["attempts"] for o in outcomes) == 3  # the second committer replayed once
    assert lake.rows("SELECT count(*), count(DISTINCT image_id) FROM images") == [(3, 3)]
    assert lake.rows("SELECT drop_id, count(*) FROM image_files GROUP BY 1 ORDER BY 1") == [
        ("a", 2),
        ("b", 2),
    ]
    # The replayed drop found the other's row: its copy of the bytes is the duplicate.
    assert lake.rows("SELECT count(*) FROM image_files WHERE is_duplicate") == [(1,)]


def test_a_reader_holding_its_connection_never_blocks_three_writers(
    lake: LakeWarehouse, tmp_path: Path
):
    """A reader process keeps one connection (and one long snapshot) open for the whole test
    while three writer processes ingest drops in batches: every writer succeeds, the reader's
    counts never shrink and always come in whole batches, and its held snapshot stays put."""
    from tests.fixtures.bad_inputs import jpeg_bytes

    root = tmp_path / "drops"
    drops = {"r1": 12, "r2": 12, "r3": 12}
    for drop, files in drops.items():
        (root / drop).mkdir(parents=True)
        for index in range(files):
            (root / drop / f"{index:02d}.jpg").write_bytes(
                jpeg_bytes(48, 32, seed=hash(drop) % 1000 * 100 + index)
            )
    stop = tmp_path / "stop"
    ready = tmp_path / "reader-ready"
    reader = spawn.Process(
        target=lake_processes.hold_and_read,
        args=(lake.target, lake.data_path, str(ready), str(stop), str(tmp_path / "reader.json")),
    )
    reader.start()
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the reader did not start"
    writers = [
        spawn.Process(
            target=lake_processes.ingest_drop,
            args=(lake.target, lake.data_path, str(root), drop, 3, str(tmp_path / f"{drop}.json")),
        )
        for drop in drops
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=180)
    stop.touch()
    reader.join(timeout=60)
    results = [json.loads((tmp_path / f"{d}.json").read_text()) for d in drops]
    tally = json.loads((tmp_path / "reader.json").read_text())
    assert [r["error"] for r in results] == [None, None, None]
    assert tally["errors"] == []
    assert tally["reads"] > 3
    assert tally["held_counts"] == [0]  # the snapshot it held from the start never moved
    series = tally["series"]  # per read: files per drop
    for before, after in itertools.pairwise(series):
        assert all(after.get(d, 0) >= before.get(d, 0) for d in drops)  # never shrinks
    for seen in series:
        assert all(n % 3 == 0 or n == drops[d] for d, n in seen.items())  # whole batches
    assert lake.rows("SELECT count(*) FROM image_files") == [(sum(drops.values()),)]
    assert os.environ.get("PGPASSFILE")  # the processes found the password where libpq looks
