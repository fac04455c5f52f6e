"""When a drop counts as changed, and what the cursor keeps: the pure logic behind the sensor."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from core.drops import (
    WAREHOUSE_BUSY,
    Timing,
    WarehouseView,
    WatcherState,
    only_removed,
    plan_tick,
    status_line,
)
from core.ingest.scan import DropRef, InvalidDrop, scan_drop, validate_drop_id

QUIET = Timing(quiet_period_s=10)
OLD = 1_000_000_000  # an mtime far in the past, as `cp -p` leaves it


def _write(path: Path, data: bytes, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _age(folder: Path, seconds: float = 60) -> None:
    """Make the folder tree's mtimes old, as they are once an upload is long finished."""
    stamp = os.stat(folder).st_mtime - seconds
    for dirpath, _, _ in os.walk(folder):
        os.utime(dirpath, (stamp, stamp))


def test_only_pure_removal_needs_no_run():
    known = {"d/a.jpg": (10, 100), "d/b.jpg": (10, 100)}
    assert only_removed([("d/a.jpg", 10, 100)], known)
    assert only_removed([("d/a.jpg", 10, 100), ("d/b.jpg", 10, 100)], known)
    assert not only_removed([("d/c.jpg", 10, 50)], known)  # replaced by an older file
    assert not only_removed([("d/a.jpg", 10, 50)], known)  # same path, older mtime
    assert not only_removed([("d/a.jpg", 11, 100)], known)  # same path, other size
    assert not only_removed([("d/a.jpg", 10, 100)], None)  # nothing recorded: work


def test_a_replacement_with_older_mtimes_is_ready_again(tmp_path: Path):
    _write(tmp_path / "d" / "a.jpg", b"a" * 10, OLD + 100)
    _write(tmp_path / "d" / "b.jpg", b"b" * 10, OLD + 100)
    first = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=QUIET)
    first = plan_tick(tmp_path, first.state, now=1020.0, timing=QUIET)
    assert [d.drop_id for d in first.ready] == ["d"]
    (tmp_path / "d" / "a.jpg").unlink()
    (tmp_path / "d" / "b.jpg").unlink()
    _write(tmp_path / "d" / "c.jpg", b"c" * 10, OLD)
    ingested = {"d": {"d/a.jpg": (10, OLD * 10**9 + 100 * 10**9)}}
    seen = plan_tick(
        tmp_path, first.state, now=1030.0, timing=QUIET, known_files=lambda _: ingested
    )
    later = plan_tick(
        tmp_path, seen.state, now=1045.0, timing=QUIET, known_files=lambda _: ingested
    )
    assert [d.drop_id for d in later.ready] == ["d"]


def test_state_round_trips_through_the_cursor(tmp_path: Path):
    _write(tmp_path / "d" / "a.jpg", b"a")
    _write(tmp_path / "x.jpg", b"x")
    plan = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=QUIET)
    plan = plan_tick(tmp_path, plan.state, now=1020.0, timing=QUIET)
    state = plan.state
    assert state.folders.keys() == {"d"} and state.loose_assigned.keys() == {"x.jpg"}
    assert WatcherState.from_cursor(state.to_cursor()) == state
    assert WatcherState.from_cursor(None) == WatcherState()
    assert WatcherState.from_cursor('{"requested": {"d": 1}}') == WatcherState()  # old format


def test_the_cursor_forgets_loose_files_that_left_the_root(tmp_path: Path):
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"\xff\xd8" + name.encode())
    first = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=QUIET)
    settled = plan_tick(tmp_path, first.state, now=1020.0, timing=QUIET)
    assert [d.files for d in settled.ready] == [("a.jpg", "b.jpg")]
    assert settled.state.loose_assigned.keys() == {"a.jpg", "b.jpg"}

    (tmp_path / "a.jpg").unlink()  # the user moved the ingested file away
    later = plan_tick(tmp_path, settled.state, now=1030.0, timing=QUIET)

    assert later.ready == []
    assert later.state.loose_assigned.keys() == {"b.jpg"}


def test_loose_quiet_is_judged_from_first_sight_not_mtime(tmp_path: Path):
    _write(tmp_path / "old.jpg", b"o", OLD)  # copied with its mtime preserved
    plan = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=QUIET)
    assert plan.ready == []
    plan = plan_tick(tmp_path, plan.state, now=1011.0, timing=QUIET)
    assert [d.files for d in plan.ready] == [("old.jpg",)]


def test_quiet_loose_files_wait_for_the_others_at_most_the_max_wait(tmp_path: Path):
    timing = Timing(quiet_period_s=10, loose_max_wait_s=30)
    _write(tmp_path / "a.jpg", b"a")
    plan = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=timing)
    _write(tmp_path / "b.jpg", b"b")
    plan = plan_tick(tmp_path, plan.state, now=1008.0, timing=timing)
    plan = plan_tick(tmp_path, plan.state, now=1015.0, timing=timing)
    assert plan.ready == []  # a is quiet, b not yet: wait to group them
    plan = plan_tick(tmp_path, plan.state, now=1019.0, timing=timing)
    assert [d.files for d in plan.ready] == [("a.jpg", "b.jpg")]  # both quiet: one drop
    for step, t in enumerate(range(1020, 1100, 5)):  # then one file every 5 s, forever
        _write(tmp_path / f"t{step}.jpg", bytes([step]))
        plan = plan_tick(tmp_path, plan.state, now=float(t), timing=timing)
        if plan.ready:
            break
    assert plan.ready, "quiet loose files starved while others kept arriving"
    assert "t0.jpg" in plan.ready[0].files
    assert plan.ready[0].files[-1] != f"t{step}.jpg"  # the newest is not quiet yet


def test_an_unchanged_folder_is_not_walked_again(tmp_path: Path):
    folder = tmp_path / "d"
    for index in range(3):
        _write(folder / "sub" / f"{index}.jpg", bytes([index]))
    _age(folder)
    timing = Timing(quiet_period_s=0, rewalk_s=600)
    plan = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=timing)
    assert [d.drop_id for d in plan.ready] == ["d"] and plan.walked == 1
    plan = plan_tick(tmp_path, plan.state, now=1030.0, timing=timing)
    assert plan.ready == [] and plan.walked == 0  # signature unchanged: skipped
    _write(folder / "sub" / "new.jpg", b"new", OLD)  # the sub-folder's mtime changes
    plan = plan_tick(tmp_path, plan.state, now=1060.0, timing=timing)
    assert plan.walked == 1 and [d.drop_id for d in plan.ready] == ["d"]


def test_a_file_rewritten_in_place_is_found_by_the_periodic_walk(tmp_path: Path):
    folder = tmp_path / "d"
    _write(folder / "a.jpg", b"a")
    _age(folder)
    timing = Timing(quiet_period_s=0, rewalk_s=600)
    plan = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=timing)
    _write(folder / "a.jpg", b"longer", OLD)  # same name: the folder's mtime does not change
    plan = plan_tick(tmp_path, plan.state, now=1030.0, timing=timing)
    assert plan.ready == []  # not walked: the signature cannot see it
    plan = plan_tick(tmp_path, plan.state, now=1000.0 + 601, timing=timing)
    assert [d.drop_id for d in plan.ready] == ["d"]


def test_the_cursor_is_bounded_by_the_drop_root(tmp_path: Path):
    for index in range(5):
        _write(tmp_path / f"d{index}" / "a.jpg", bytes([index]))
    plan = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=Timing(quiet_period_s=0))
    assert len(plan.state.folders) == 5
    for index in range(4):
        shutil.rmtree(tmp_path / f"d{index}")
    plan = plan_tick(tmp_path, plan.state, now=1030.0, timing=Timing(quiet_period_s=0))
    assert plan.state.folders.keys() == {"d4"}


def test_a_failed_drop_is_named_and_retried_on_schedule(tmp_path: Path):
    _write(tmp_path / "d" / "a.jpg", b"a")
    timing = Timing(quiet_period_s=0, retry_failed_s=100)
    plan = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=timing)
    (first,) = plan.ready
    state = plan.state
    state.record_failure("d", "run-1", 1010.0, [])
    plan = plan_tick(tmp_path, state, now=1050.0, timing=timing)
    assert plan.ready == [] and "run-1" in plan.failed["d"]
    plan = plan_tick(tmp_path, plan.state, now=1111.0, timing=timing)
    (retry,) = plan.ready
    assert retry.run_key == f"{first.run_key}:retry1" and "d" not in plan.state.failed


def test_a_failed_drop_whose_folder_holds_no_files_does_not_stop_the_tick(tmp_path: Path):
    """A partition launched by hand before its files were copied: its folder has no file (only
    a hidden one), so the cursor has no record of it; its retry must not raise KeyError."""
    (tmp_path / "early").mkdir()
    _write(tmp_path / "early" / ".DS_Store", b"x")
    _write(tmp_path / "other" / "a.jpg", b"a")
    timing = Timing(quiet_period_s=0, retry_failed_s=100)
    state = WatcherState()
    state.record_failure("early", "run-1", 1000.0, [])
    plan = plan_tick(tmp_path, state, now=1200.0, timing=timing)  # the retry is due
    assert [d.drop_id for d in plan.ready] == ["other"]
    assert "run-1" in plan.failed["early"] and "files arrive" in plan.failed["early"]
    _write(tmp_path / "early" / "b.jpg", b"b")  # its files arrive: requested at once
    plan = plan_tick(tmp_path, plan.state, now=1210.0, timing=timing)
    (retry,) = plan.ready
    assert retry.drop_id == "early" and retry.attempt == 1 and "early" not in plan.state.failed


def test_each_retry_of_a_loose_drop_gets_a_run_key_of_its_own(tmp_path: Path):
    """A repeated run_key is skipped by Dagster without a word: retry 2 must not be retry 1."""
    _write(tmp_path / "x.jpg", b"x")
    timing = Timing(quiet_period_s=0, retry_failed_s=100)
    plan = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=timing)
    (first,) = plan.ready
    keys = [first.run_key]
    state, now = plan.state, 1000.0
    for attempt in range(3):  # the first run and two retries fail, each with its attempt
        state.record_failure(first.drop_id, f"run-{attempt}", now, ["x.jpg"], attempt)
        now += 101
        plan = plan_tick(tmp_path, state, now=now, timing=timing)
        (retry,) = plan.ready
        assert retry.drop_id == first.drop_id and retry.files == ("x.jpg",)
        keys.append(retry.run_key)
        state = plan.state
    assert len(set(keys)) == 4, keys


def test_a_drop_with_a_run_in_progress_waits_for_it(tmp_path: Path):
    """Files that arrive during a run get the next run, after that one ends, never a second
    run beside it (the first would find images it did not ingest)."""
    _write(tmp_path / "d" / "a.jpg", b"a")
    timing = Timing(quiet_period_s=0)
    plan = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=timing)
    (first,) = plan.ready
    _write(tmp_path / "d" / "b.jpg", b"b")
    running = {"d": "run-1"}
    plan = plan_tick(tmp_path, plan.state, now=1030.0, timing=timing, running=running)
    assert plan.ready == [] and "run-1" in plan.waiting["d"]
    plan = plan_tick(tmp_path, plan.state, now=1060.0, timing=timing, running=running)
    assert plan.ready == [] and "run-1" in plan.waiting["d"]
    plan = plan_tick(tmp_path, plan.state, now=1090.0, timing=timing, running={})
    (second,) = plan.ready
    assert second.drop_id == "d" and second.run_key != first.run_key


def _ingested(state: WatcherState, *drops: str) -> WatcherState:
    for drop in drops:
        state.record_success(drop)
    return state


def test_a_drop_the_warehouse_lost_or_found_changed_is_requested_again(tmp_path: Path):
    for name in ("kept", "lost", "edited", "new"):
        _write(tmp_path / name / "a.jpg", name.encode())
    timing = Timing(quiet_period_s=0)
    plan = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=timing)
    assert len(plan.ready) == 4
    state = _ingested(plan.state, "kept", "lost", "edited")  # "new": requested, not yet run
    view = WarehouseView(
        held=frozenset({"kept", "edited"}),
        changed={"edited": (1, "20260101T000000.000000")},
        loose_held=frozenset(),
    )
    plan = plan_tick(tmp_path, state, now=1030.0, timing=timing, view=view)
    assert sorted(d.drop_id for d in plan.ready) == ["edited", "lost"]
    assert all(d.attempt == 1 for d in plan.ready)
    # Requested: not again while its run is pending, and not again once that run is running.
    plan = plan_tick(tmp_path, plan.state, now=1060.0, timing=timing, view=view)
    assert plan.ready == []
    view_now = WarehouseView(held=frozenset({"kept", "edited"}), changed={}, loose_held=frozenset())
    plan = plan_tick(
        tmp_path,
        _ingested(plan.state, "lost"),
        now=1090.0,
        timing=timing,
        view=view_now,
        running={"lost": "run-9"},
    )
    assert plan.ready == [] and "run-9" in plan.waiting["lost"]
    assert plan_tick(tmp_path, plan.state, now=1120.0, timing=timing, view=None).ready == []


def test_lost_loose_files_are_grouped_again(tmp_path: Path):
    _write(tmp_path / "x.jpg", b"x")
    timing = Timing(quiet_period_s=0)
    plan = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=timing)
    (first,) = plan.ready
    state = plan.state
    state.record_success(first.drop_id, ["x.jpg"])
    held = WarehouseView(held=frozenset(), changed={}, loose_held=frozenset({"x.jpg"}))
    assert plan_tick(tmp_path, state, now=1030.0, timing=timing, view=held).ready == []
    gone = WarehouseView(held=frozenset(), changed={}, loose_held=frozenset())
    plan = plan_tick(tmp_path, state, now=1060.0, timing=timing, view=gone)
    (again,) = plan.ready
    assert again.files == ("x.jpg",) and again.drop_id != first.drop_id


def test_a_busy_warehouse_defers_the_decision_to_the_next_tick(tmp_path: Path):
    _write(tmp_path / "d" / "a.jpg", b"a")
    _age(tmp_path / "d")
    timing = Timing(quiet_period_s=0)
    plan = plan_tick(
        tmp_path, WatcherState(), now=1000.0, timing=timing, known_files=lambda _: None
    )
    assert plan.ready == [] and "busy" in plan.waiting["d"]
    assert "busy" in status_line(plan, warehouse_note=WAREHOUSE_BUSY)
    plan = plan_tick(tmp_path, plan.state, now=1030.0, timing=timing, known_files=lambda _: {})
    assert [d.drop_id for d in plan.ready] == ["d"]


def test_non_utf8_names_are_drops_and_the_cursor_stays_json(tmp_path: Path):
    """A folder named with a byte that is not UTF-8 is a drop under its escaped name, and a
    sub-folder named so is walked; the cursor (JSON) holds only the escaped names."""
    root = os.fsencode(tmp_path)
    os.makedirs(root + b"/d\xe9p\xf4t")
    os.makedirs(root + b"/album/caf\xe9")
    for folder in (b"/d\xe9p\xf4t", b"/album/caf\xe9", b"/album"):
        with open(root + folder + b"/a\xff.jpg", "wb") as handle:
            handle.write(folder)
    with open(root + b"/loose\xfe.jpg", "wb") as handle:
        handle.write(b"loose")
    timing = Timing(quiet_period_s=0)
    plan = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=timing)
    assert sorted(d.drop_id for d in plan.ready)[1:] == ["album", "d\\xe9p\\xf4t"]
    (loose,) = [d for d in plan.ready if d.kind == "loose"]
    assert loose.files == ("loose\\xfe.jpg",)
    cursor = plan.state.to_cursor()
    assert WatcherState.from_cursor(cursor) == plan.state
    # The same names next tick: nothing new, however the signature check reads them back.
    later = plan_tick(tmp_path, WatcherState.from_cursor(cursor), now=1030.0, timing=timing)
    assert later.ready == [] and later.ignored == {}
    seen = scan_drop(tmp_path, DropRef.folder("d\\xe9p\\xf4t"))
    assert [(f.path, f.problem) for f in seen] == [("d\\xe9p\\xf4t/a\\xff.jpg", None)]
    seen = scan_drop(tmp_path, DropRef.loose(loose.drop_id, list(loose.files)))
    assert [(f.path, f.size) for f in seen] == [("loose\\xfe.jpg", 5)]


def test_a_backslash_in_a_folder_name_is_still_no_drop(tmp_path: Path):
    (tmp_path / "a\\b").mkdir()
    _write(tmp_path / "a\\b" / "x.jpg", b"x")
    plan = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=Timing(quiet_period_s=0))
    assert plan.ready == [] and list(plan.ignored) == ["a\\\\b"]
    for bad in ("a\\q", "a\\\\b", "x\\x2f"):
        with pytest.raises(InvalidDrop):
            validate_drop_id(bad)


def test_the_status_line_says_what_the_sensor_waits_for(tmp_path: Path):
    _write(tmp_path / "busy" / "a.jpg", b"a")
    _write(tmp_path / "done" / "a.jpg", b"a")
    (tmp_path / "empty").mkdir()
    timing = Timing(quiet_period_s=30)
    plan = plan_tick(tmp_path, WatcherState(), now=1000.0, timing=timing)
    plan = plan_tick(tmp_path, plan.state, now=1012.0, timing=timing)
    line = status_line(plan)
    assert line.startswith("watching 3 drops; ")
    assert "busy waiting: still changing (quiet for 12s of 30s)" in line
    assert "empty waiting: empty folder" in line
