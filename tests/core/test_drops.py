"""When a drop counts as changed: the summary the sensor keeps per drop."""

from __future__ import annotations

from core.drops import WatcherState, summarize


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
