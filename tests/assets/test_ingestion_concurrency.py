"""Runs and readers share the warehouse: nobody fails on DuckDB's single-writer lock."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from core.warehouse import Warehouse
from tests.fixtures.bad_inputs import jpeg_bytes
from tests.fixtures.processes import materialize_drop, query_loop

FILES_PER_DROP = 60
spawn = multiprocessing.get_context("spawn")


def make_drop(drop_root: Path, drop_id: str, seed: int) -> None:
    folder = drop_root / drop_id
    folder.mkdir()
    for index in range(FILES_PER_DROP):
        (folder / f"{index:03d}.jpg").write_bytes(jpeg_bytes(96, 64, seed=seed * 1000 + index))


@pytest.fixture
def reader(tmp_path: Path, warehouse: Warehouse):
    """Starts a SQL loop in another process; yields a function that stops it and returns its tally."""
    stop, out = tmp_path / "stop", tmp_path / "reader.json"
    process = spawn.Process(
        target=query_loop, args=(warehouse.target, str(stop), str(out), warehouse.data_path)
    )
    process.start()

    def finish() -> dict:
        stop.touch()
        process.join(timeout=120)
        return json.loads(out.read_text())

    yield finish
    if process.is_alive():
        process.kill()


def _run_in_process(tmp_path: Path, warehouse: Warehouse, drop_root: Path, drop_id: str):
    out = tmp_path / f"{drop_id}.json"
    process = spawn.Process(
        target=materialize_drop,
        args=(warehouse.target, str(drop_root), drop_id, str(out), 4, warehouse.data_path),
    )
    process.start()
    return process, out


def test_a_sql_loop_in_another_process_never_fails_a_run_and_always_gets_answers(
    tmp_path, warehouse, drop_root, reader
):
    make_drop(drop_root, "busy", seed=1)
    process, out = _run_in_process(tmp_path, warehouse, drop_root, "busy")
    process.join(timeout=300)
    tally = reader()
    assert json.loads(out.read_text()) == {"success": True}
    assert tally["errors"] == []
    # It read while the run wrote, and only ever saw whole batches of 4 files.
    assert any(0 < n < FILES_PER_DROP for n in tally["counts_seen"])
    assert all(n % 4 == 0 for n in tally["counts_seen"])
    assert warehouse.rows("SELECT count(*) FROM image_files") == [(FILES_PER_DROP,)]


@pytest.mark.both_backends  # its warehouse SQL runs on the file and the lake
def test_two_runs_of_different_drops_started_at_once_both_succeed(
    tmp_path, warehouse, drop_root, reader
):
    make_drop(drop_root, "left", seed=2)
    make_drop(drop_root, "right", seed=3)
    runs = [_run_in_process(tmp_path, warehouse, drop_root, drop) for drop in ("left", "right")]
    for process, _ in runs:
        process.join(timeout=300)
    tally = reader()
    assert [json.loads(out.read_text()) for _, out in runs] == [
        {"success": True},
        {"success": True},
    ]
    assert tally["errors"] == []
    assert warehouse.rows("SELECT drop_id, files_ingested FROM drops ORDER BY 1") == [
        ("left", FILES_PER_DROP),
        ("right", FILES_PER_DROP),
    ]
