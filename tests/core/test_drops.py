"""When a drop counts as changed: the summary the sensor keeps per drop."""

from __future__ import annotations

from pathlib import Path

from core.drops import WatcherState, plan_tick, summarize


def test_adding_a_file_grows_the_set():
    before = summarize([("a.jpg", 10, 100)])
    assert summarize([("a.jpg", 10, 100), ("b.jpg", 5, 50)]).grew_beyond(before)


def test_replacing_a_file_with_newer_content_grows_the_set():
    before = summarize([("a.jpg", 10, 100), ("b.jpg", 10, 100)])
    assert summarize([("a.jpg", 10, 100), ("c.jpg", 10, 200)]).grew_beyond(before)


def test_removing_files_does_not_grow_the_set():
    before = summarize([("a.jpg", 10, 100), ("b.jpg", 10, 100)])
    assert not summarize([("a.jpg", 10, 100)]).grew_beyond(before)


def test_state_round_trips_through_the_cursor():
    state = WatcherState(
        requested={"d": summarize([("a.jpg", 1, 2)])}, loose_assigned={"x.jpg": (1, 2)}
    )
    assert WatcherState.from_cursor(state.to_cursor()) == state
    assert WatcherState.from_cursor(None) == WatcherState()


def test_the_cursor_forgets_loose_files_that_left_the_root(tmp_path: Path):
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"\xff\xd8" + name.encode())
    first = plan_tick(tmp_path, WatcherState(), now=1000.0, quiet_period_s=10)
    settled = plan_tick(tmp_path, first.state, now=1020.0, quiet_period_s=10)
    assert [d.files for d in settled.ready] == [("a.jpg", "b.jpg")]
    assert settled.state.loose_assigned.keys() == {"a.jpg", "b.jpg"}

    (tmp_path / "a.jpg").unlink()  # the user moved the ingested file away
    later = plan_tick(tmp_path, settled.state, now=1030.0, quiet_period_s=10)

    assert later.ready == []
    assert later.state.loose_assigned.keys() == {"b.jpg"}
