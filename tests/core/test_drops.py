"""When a drop counts as changed, and what the cursor keeps: the pure logic behind the sensor."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from core.drops import Timing, WatcherState, only_removed, plan_tick

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
