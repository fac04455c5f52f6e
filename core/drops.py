"""Deciding when a drop is ready: the pure logic behind the drop sensor.

A sub-folder of the drop root is ready once its file set has not changed for a quiet period (timed
from when the sensor first saw that exact set, never from file mtimes, which `cp -p` and
`rsync -t` set to the past), or at once when it holds a `_READY` marker. Any change of its file
set other than pure removal (a new path, a size or mtime that differs, older or newer) makes it
ready again; a drop whose files the warehouse already records with the same size and mtime is
not run again. Loose files at the root are judged quiet one by one and grouped into one drop
named by the time it became ready. The state between ticks is a small JSON document (the
sensor's cursor) that only describes what lies in the drop root now, so a restarted daemon
carries on where it stopped and the cursor does not grow with history.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import duckdb
from pydantic import BaseModel, Field

from core.ingest.scan import (
    LOOSE_PREFIX,
    READY_MARKER,
    InvalidDrop,
    display_path,
    os_path,
    validate_drop_id,
)
from core.warehouse import LockTimeout, Warehouse, WarehouseHeld, WarehouseNotFound

Entry = tuple[
    str, int, int
]  # path relative to the drop root (as the warehouse keys it), size, mtime
# drop ids -> {path: (size, mtime_ns)} of the files the warehouse already holds for each drop;
# None: the warehouse could not be read now (busy), so nothing is decided on it this tick
KnownFiles = Callable[[list[str]], Mapping[str, Mapping[str, tuple[int | None, int]]] | None]
# A directory modified this recently may still change within its timestamp's granularity: a tree
# is only trusted unchanged (walk skipped) once all its folders are older than this.
RACY_S = 2.0


class FileSetSummary(BaseModel):
    """A file set in two numbers: a fingerprint of every (path, size, mtime) and the count."""

    fingerprint: str
    count: int


def summarize(entries: list[Entry]) -> FileSetSummary:
    digest = hashlib.sha256()
    for name, size, mtime_ns in sorted(entries):
        digest.update(f"{name}\0{size}\0{mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return FileSetSummary(fingerprint=digest.hexdigest()[:32], count=len(entries))


def only_removed(entries: list[Entry], known: Mapping[str, tuple[int | None, int]] | None) -> bool:
    """True if every file is already recorded, with the same size and mtime: nothing to ingest.

    This is the only case that needs no run (files were removed, or the set is the one already
    ingested). A new path, or a path whose size or mtime differs in either direction, is work.
    """
    if known is None:
        return False
    return all(known.get(display_path(path)) == (size, mtime) for path, size, mtime in entries)


class Folder(BaseModel):
    """What the sensor knows about one sub-folder drop."""

    fingerprint: str  # the file set last requested, or found already ingested
    count: int
    signature: str = ""  # of the folder tree's directory mtimes at the last walk; "": walk again
    subdirs: list[str] = Field(default_factory=list)  # relative sub-folders at the last walk
    walked_at: float = 0.0  # sensor clock of the last full walk
    attempt: int = 0  # re-requests of the same file set, so every one gets a fresh run_key
    ingested: bool = False  # a run of it succeeded, or the warehouse held it: checked each tick


class Pending(BaseModel):
    fingerprint: str
    since: float  # sensor clock when this exact file set was first observed


class Failed(BaseModel):
    """A drop whose latest run failed and that Dagster will not retry any more."""

    run_id: str
    at: float  # sensor clock when the sensor learnt of it
    fingerprint: str = ""  # folder drops: the file set the failed run was asked to ingest
    files: list[str] = Field(default_factory=list)  # loose drops: the files of the failed run
    attempt: int = 0  # the failed run's attempt: its retry is attempt + 1, a run_key not used yet


class WatcherState(BaseModel):
    """The sensor cursor: bounded by the folders and loose files in the drop root now."""

    folders: dict[str, Folder] = Field(default_factory=dict)
    pending: dict[str, Pending] = Field(default_factory=dict)
    failed: dict[str, Failed] = Field(default_factory=dict)
    loose_assigned: dict[str, tuple[int, int]] = Field(default_factory=dict)  # name -> size, mtime
    # loose files not yet in a drop: name -> size, mtime, sensor clock when first seen like that
    loose_seen: dict[str, tuple[int, int, float]] = Field(default_factory=dict)
    runs_checked_at: float | None = None  # update time of the last run outcome read (wall clock)
    loose_ingested: list[str] = Field(default_factory=list)  # assigned loose files a run ingested

    @classmethod
    def from_cursor(cls, cursor: str | None) -> WatcherState:
        if not cursor:
            return cls()
        try:
            return cls.model_validate_json(cursor)
        except ValueError:
            # A cursor written by an older version: start afresh. Drops already ingested are
            # recognised from the warehouse, so nothing is run twice.
            return cls()

    def to_cursor(self) -> str:
        return self.model_dump_json(exclude_defaults=True)

    def record_failure(
        self, drop_id: str, run_id: str, now: float, files: list[str], attempt: int = 0
    ) -> None:
        folder = self.folders.get(drop_id)
        if folder is not None:
            folder.ingested = False
        self.failed[drop_id] = Failed(
            run_id=run_id,
            at=now,
            fingerprint=folder.fingerprint if folder else "",
            files=files,
            attempt=attempt,
        )

    def record_success(self, drop_id: str, files: list[str] | None = None) -> None:
        self.failed.pop(drop_id, None)
        folder = self.folders.get(drop_id)
        if folder is not None:
            folder.ingested = True
        done = set(self.loose_ingested) | {f for f in files or [] if f in self.loose_assigned}
        self.loose_ingested = sorted(done)


@dataclass(frozen=True)
class ReadyDrop:
    drop_id: str
    kind: Literal["folder", "loose"]
    summary: FileSetSummary
    files: tuple[str, ...] = ()  # loose drops only
    reason: str = ""
    attempt: int = 0
    suffix: str = ""  # names a re-request that no attempt counts (a loose drop's changed files)

    @property
    def run_key(self) -> str:
        key = f"{self.drop_id}:{self.summary.fingerprint[:16]}"
        if self.suffix:
            return f"{key}:{self.suffix}"
        return f"{key}:retry{self.attempt}" if self.attempt else key


@dataclass(frozen=True)
class TickPlan:
    ready: list[ReadyDrop]
    waiting: dict[str, str]  # drop -> why it is not ready yet
    ignored: dict[str, str]  # entry -> why it can never be a drop
    state: WatcherState
    already_ingested: dict[str, str] = field(default_factory=dict)  # drop -> why no run
    failed: dict[str, str] = field(default_factory=dict)  # drop -> its failed run, what happens
    walked: int = 0  # folders walked this tick (the others were unchanged by their signature)
    watching: int = 0  # folder drops in the root


@dataclass(frozen=True)
class WarehouseView:
    """What the warehouse holds, read once per tick: drops it lost or found changed are re-run."""

    held: frozenset[str]  # drop ids the warehouse has a `drops` row for
    changed: Mapping[str, tuple[int, str]]  # drop -> files found changed since ingestion, stamp
    loose_held: frozenset[str]  # of the loose files asked about, those it records


@dataclass(frozen=True)
class Timing:
    """The sensor's time settings."""

    quiet_period_s: float
    loose_max_wait_s: float = 300.0  # quiet loose files wait at most this for the rest
    rewalk_s: float = 600.0  # an unchanged-looking folder is still walked this often
    retry_failed_s: float = 3600.0  # a failed drop is re-requested this long after; 0: never


def _walk(folder: Path, drop_id: str) -> tuple[list[Entry], list[str], bool]:
    """The drop's files (path relative to the drop root, size, mtime), its sub-folders, marker."""
    entries: list[Entry] = []
    subdirs: list[str] = []
    has_marker = False
    stack = [""]
    while stack:
        relative = stack.pop()
        here = folder / relative if relative else folder
        try:
            listing = list(os.scandir(here))
        except OSError:
            continue  # vanished or unreadable: ingestion reports it; the next tick looks again
        for entry in listing:
            name = entry.name
            if name.startswith("."):
                continue
            child = f"{relative}/{name}" if relative else name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished between listing and stat: the next tick sees the new state
            if stat.S_ISDIR(info.st_mode):
                subdirs.append(child)
                stack.append(child)
            elif not relative and name == READY_MARKER:
                has_marker = True
            else:
                entries.append((f"{drop_id}/{child}", info.st_size, info.st_mtime_ns))
    return entries, sorted(subdirs), has_marker


def _signature(folder: Path, subdirs: list[str], wall_now: float) -> str:
    """A digest of the mtimes of the folder and its sub-folders; "" if any is missing or recent.

    Adding, removing or renaming an entry changes its directory's mtime, so an equal signature
    means the same names. A file rewritten in place keeps it: the periodic full walk finds those.
    """
    digest = hashlib.sha256()
    for relative in ["", *subdirs]:
        try:
            info = os.lstat(folder / relative if relative else folder)
        except OSError:
            return ""
        if not stat.S_ISDIR(info.st_mode) or info.st_mtime > wall_now - RACY_S:
            return ""
        digest.update(f"{relative}\0{info.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def _rewalk_due(drop_id: str, folder: Folder, now: float, rewalk_s: float) -> bool:
    """Spread full re-walks over a quarter of the interval so they do not all land on one tick."""
    spread = int(hashlib.sha256(drop_id.encode("utf-8", "surrogateescape")).hexdigest()[:4], 16)
    return now - folder.walked_at >= rewalk_s * (0.75 + 0.25 * spread / 0xFFFF)


def _loose_entries(root: Path) -> dict[str, tuple[int, int]]:
    loose: dict[str, tuple[int, int]] = {}
    with os.scandir(root) as listing:
        for entry in listing:
            if entry.name.startswith((".", "_")) or entry.is_dir(follow_symlinks=False):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                loose[entry.name] = (info.st_size, info.st_mtime_ns)
    return loose


def _folder_names(root: Path) -> list[str]:
    with os.scandir(root) as listing:
        return sorted(
            entry.name
            for entry in listing
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith((".", "_"))
        )


def plan_tick(
    root: Path,
    state: WatcherState,
    *,
    now: float,
    timing: Timing,
    known_files: KnownFiles | None = None,
    wall_now: float | None = None,
    running: Mapping[str, str] | None = None,
    view: WarehouseView | None = None,
) -> TickPlan:
    """Look at the drop root once; say which drops are ready and what the new cursor is.

    `now` is the sensor's clock (quiet periods, waits); `wall_now` the real time that file and
    folder mtimes are compared with (default: time.time()). `running` maps each drop with a run
    queued or in progress to that run: such a drop gets no second run until it ends. `view` is
    what the warehouse held at the start of the tick (None: not read, nothing is re-requested for
    what it lost or found changed).
    """
    wall_now = time.time() if wall_now is None else wall_now
    running = running or {}
    state = state.model_copy(deep=True)
    ready: list[ReadyDrop] = []
    waiting: dict[str, str] = {}
    ignored: dict[str, str] = {}
    ingested: dict[str, str] = {}
    failed: dict[str, str] = {}
    if not root.is_dir():
        return TickPlan(ready, {}, {str(root): "drop root does not exist"}, state)

    folders: dict[str, str] = {}  # drop id (the escaped name) -> the folder's name on disk
    for os_name in _folder_names(root):
        name = display_path(os_name)
        try:
            validate_drop_id(name)
        except InvalidDrop as error:
            ignored[name] = str(error)
            continue
        folders[name] = os_name
    present = set(folders)
    # The cursor only describes what lies in the root now.
    state.folders = {n: f for n, f in state.folders.items() if n in present}
    state.pending = {n: p for n, p in state.pending.items() if n in present}

    def busy(name: str) -> str | None:
        run_id = running.get(name)
        return f"run {run_id} of this drop has not ended; requested after it" if run_id else None

    changed: dict[str, tuple[list[Entry], FileSetSummary, bool]] = {}
    walked = 0
    for name, os_name in folders.items():
        record = state.folders.get(name)
        path = root / os_name
        if (
            record is not None
            and name not in state.pending
            and name not in state.failed
            and record.signature
            and not _rewalk_due(name, record, now, timing.rewalk_s)
            and _signature(path, [os_path(d) for d in record.subdirs], wall_now) == record.signature
        ):
            continue  # the same names as at the last walk, which found nothing to do
        walked += 1
        entries, subdirs, has_marker = _walk(path, os_name)
        signature = _signature(path, subdirs, wall_now)
        shown_subdirs = [display_path(d) for d in subdirs]  # the cursor is JSON: text only
        if not entries:
            waiting[name] = "empty folder"
            state.pending.pop(name, None)
            continue
        summary = summarize(entries)
        if record is not None and summary.fingerprint == record.fingerprint:
            state.pending.pop(name, None)
            record.signature, record.subdirs, record.walked_at = signature, shown_subdirs, now
            continue
        changed[name] = (entries, summary, has_marker)
        if record is not None:  # keep the tree signature for after the change is handled
            record.signature, record.subdirs = signature, shown_subdirs
        else:
            state.folders[name] = Folder(
                fingerprint="", count=0, signature=signature, subdirs=shown_subdirs, walked_at=now
            )

    to_check = [name for name in changed if name not in state.failed]
    known = known_files(to_check) if known_files is not None and to_check else {}
    for name, (entries, summary, has_marker) in changed.items():
        record = state.folders[name]
        first_seen = record.fingerprint == ""
        pending = state.pending.get(name)
        if pending is None or pending.fingerprint != summary.fingerprint:
            pending = Pending(fingerprint=summary.fingerprint, since=now)
        if known is None and name not in state.failed:
            state.pending[name] = pending  # walked again next tick, however its folder looks
            waiting[name] = "the warehouse is busy, so whether it is ingested is asked next tick"
            continue
        if name not in state.failed and only_removed(entries, (known or {}).get(name)):
            why = (
                "already ingested with these files"
                if first_seen
                else "files were only removed; the rest are ingested"
            )
            ingested[name] = why
            record.fingerprint, record.count, record.walked_at = (
                summary.fingerprint,
                summary.count,
                now,
            )
            record.ingested = True
            state.pending.pop(name, None)
            continue
        quiet_for = now - pending.since
        if (has_marker or quiet_for >= timing.quiet_period_s) and busy(name):
            state.pending[name] = pending
            waiting[name] = f"files added or changed; {busy(name)}"
        elif has_marker or quiet_for >= timing.quiet_period_s:
            why = f"{READY_MARKER} marker" if has_marker else f"unchanged for {quiet_for:.0f}s"
            attempt = record.attempt
            if name in state.failed:
                failure = state.failed.pop(name)
                attempt = max(attempt, failure.attempt) + 1
                why = f"files changed after failed run {failure.run_id}; {why}"
            elif not first_seen:
                why = f"files added or changed; {why}"
            ready.append(ReadyDrop(name, "folder", summary, reason=why, attempt=attempt))
            record.fingerprint, record.count, record.walked_at = (
                summary.fingerprint,
                summary.count,
                now,
            )
            record.attempt, record.ingested = attempt, False
            state.pending.pop(name, None)
        else:
            state.pending[name] = pending
            waiting[name] = (
                f"still changing (quiet for {quiet_for:.0f}s of {timing.quiet_period_s:.0f}s)"
            )

    loose_now = {display_path(n): entry for n, entry in _loose_entries(root).items()}
    if view is not None:
        _reconcile(state, view, ready, waiting, busy, set(changed))
    _plan_loose(state, loose_now, now, timing, ready, waiting)

    # Failed drops: named on every tick; re-requested on schedule (folder drops also at once
    # when their files change, above).
    for name, failure in list(state.failed.items()):
        if name.startswith(LOOSE_PREFIX):
            files = [f for f in failure.files if f in loose_now]
            if not files:
                del state.failed[name]  # its files left the root: nothing left to retry
                continue
        elif name not in present:
            del state.failed[name]
            continue
        due = timing.retry_failed_s > 0 and now - failure.at >= timing.retry_failed_s
        record = state.folders.get(name)
        if due and busy(name):
            failed[name] = f"last run {failure.run_id} failed; {busy(name)}"
        elif due and not name.startswith(LOOSE_PREFIX) and (record is None or not record.count):
            # Its folder holds no file now (a partition launched by hand before its files were
            # copied): the files' arrival requests it, above.
            failed[name] = (
                f"last run {failure.run_id} failed; its folder holds no files to run again: "
                "requested when files arrive"
            )
        elif due:
            del state.failed[name]
            if name.startswith(LOOSE_PREFIX):
                entries = [(f, *loose_now[f]) for f in files]
                summary = summarize(entries)
                attempt = failure.attempt + 1
                files_tuple = tuple(sorted(files))
                kind: Literal["folder", "loose"] = "loose"
            else:
                assert record is not None
                record.attempt = max(record.attempt, failure.attempt) + 1
                summary = FileSetSummary(fingerprint=record.fingerprint, count=record.count)
                attempt, files_tuple, kind = record.attempt, (), "folder"
            ready.append(
                ReadyDrop(
                    name,
                    kind,
                    summary,
                    files=files_tuple,
                    reason=f"retrying after failed run {failure.run_id}",
                    attempt=attempt,
                )
            )
            failed[name] = f"last run {failure.run_id} failed; re-requested now"
        else:
            when = (
                f"re-requested in {timing.retry_failed_s - (now - failure.at):.0f}s or"
                if timing.retry_failed_s > 0
                else "re-requested"
            )
            failed[name] = (
                f"last run {failure.run_id} failed and Dagster will not retry it; {when} "
                "when its files change"
            )
    return TickPlan(ready, waiting, ignored, state, ingested, failed, walked, watching=len(present))


def _reconcile(
    state: WatcherState,
    view: WarehouseView,
    ready: list[ReadyDrop],
    waiting: dict[str, str],
    busy: Callable[[str], str | None],
    changed: set[str],
) -> None:
    """Request again what the warehouse lost (its file deleted or replaced) or found changed.

    Only drops a run has ingested count, so a drop requested but not yet run is not doubled.
    Lost loose files are forgotten as assigned, so they are grouped into a new loose drop.
    """
    requested = {drop.drop_id for drop in ready}
    for name, record in state.folders.items():
        if name in requested or name in changed or name in state.failed or not record.ingested:
            continue
        if name not in view.held:
            why = "the warehouse holds nothing of it (its file was deleted or replaced)"
        elif name in view.changed:
            count = view.changed[name][0]
            why = f"{count} file(s) found changed after ingestion are to be ingested again"
        else:
            continue
        if busy(name):
            waiting[name] = f"{why}; {busy(name)}"
            continue
        record.attempt += 1
        record.ingested = False
        summary = FileSetSummary(fingerprint=record.fingerprint, count=record.count)
        ready.append(ReadyDrop(name, "folder", summary, reason=why, attempt=record.attempt))
    for name, (count, stamp) in sorted(view.changed.items()):
        if not name.startswith(LOOSE_PREFIX) or name in state.failed:
            continue
        if busy(name):
            waiting[name] = f"{count} file(s) found changed after ingestion; {busy(name)}"
            continue
        summary = FileSetSummary(fingerprint=hashlib.sha256(stamp.encode()).hexdigest(), count=0)
        why = f"{count} file(s) found changed after ingestion are to be ingested again"
        ready.append(ReadyDrop(name, "loose", summary, reason=why, suffix=f"changed-{stamp}"))
    lost = [n for n in state.loose_ingested if n not in view.loose_held]
    for name in lost:
        state.loose_assigned.pop(name, None)  # grouped again with the other new loose files
    if lost:
        state.loose_ingested = [n for n in state.loose_ingested if n in view.loose_held]
        waiting["(loose files)"] = (
            f"{len(lost)} ingested loose file(s) the warehouse no longer holds: grouped again"
        )


def _plan_loose(
    state: WatcherState,
    present: dict[str, tuple[int, int]],
    now: float,
    timing: Timing,
    ready: list[ReadyDrop],
    waiting: dict[str, str],
) -> None:
    """Loose files: quiet judged per file; the quiet ones leave together, at the latest after
    `loose_max_wait_s`, even while other files keep arriving."""
    # Forget files that left the root, so the cursor is bounded by what lies there now.
    state.loose_assigned = {n: e for n, e in state.loose_assigned.items() if n in present}
    seen: dict[str, tuple[int, int, float]] = {}
    for name, (size, mtime) in present.items():
        if tuple(state.loose_assigned.get(name, ())) == (size, mtime):
            continue
        earlier = state.loose_seen.get(name)
        since = earlier[2] if earlier is not None and earlier[:2] == (size, mtime) else now
        seen[name] = (size, mtime, since)
    state.loose_seen = seen
    if not seen:
        return
    quiet = sorted(n for n, (_, _, since) in seen.items() if now - since >= timing.quiet_period_s)
    still = len(seen) - len(quiet)
    oldest = min((seen[n][2] for n in quiet), default=now)
    waited = now - oldest - timing.quiet_period_s
    if quiet and (still == 0 or waited >= timing.loose_max_wait_s):
        stamp = datetime.fromtimestamp(now, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
        summary = summarize([(n, seen[n][0], seen[n][1]) for n in quiet])
        why = (
            "loose files quiet"
            if still == 0
            else f"loose files quiet; waited {waited:.0f}s for {still} still changing"
        )
        ready.append(ReadyDrop(f"{LOOSE_PREFIX}{stamp}", "loose", summary, tuple(quiet), why))
        for name in quiet:
            state.loose_assigned[name] = seen[name][:2]
            del state.loose_seen[name]
    if state.loose_seen:
        waiting["(loose files)"] = (
            f"{len(state.loose_seen) - still} quiet, {still} still changing "
            f"(each must be unchanged for {timing.quiet_period_s:.0f}s)"
        )


WAREHOUSE_BUSY = "warehouse busy: what it holds is asked again next tick"


def status_line(plan: TickPlan, *, warehouse_note: str = "") -> str:
    """One line for the sensor's tick page: what it watches, waits for, and why nothing runs."""
    parts = [f"watching {plan.watching} drop{'s' if plan.watching != 1 else ''}"]
    if plan.ready:
        parts.append("requesting " + ", ".join(d.drop_id for d in plan.ready))
    elif not plan.waiting:
        parts.append("none pending")
    for name, why in list(plan.waiting.items())[:3]:
        parts.append(f"{name} waiting: {why}")
    if len(plan.waiting) > 3:
        parts.append(f"{len(plan.waiting) - 3} more waiting")
    if plan.failed:
        parts.append(f"{len(plan.failed)} failed: " + ", ".join(sorted(plan.failed)[:3]))
    if plan.ignored:
        parts.append(f"{len(plan.ignored)} ignored: " + ", ".join(sorted(plan.ignored)[:3]))
    if warehouse_note:
        parts.append(warehouse_note)
    return "; ".join(parts)


def _busy(error: Exception) -> bool:
    """A lock another process held past the sensor's short wait: ask again next tick."""
    text = str(error)
    return isinstance(error, LockTimeout) or (
        isinstance(error, duckdb.IOException)
        and ("Conflicting lock" in text or "Could not set lock" in text)
    )


def ingested_files(
    warehouse: Warehouse, drop_ids: list[str]
) -> dict[str, dict[str, tuple[int | None, int]]] | None:
    """{drop: {path: (size, mtime)}} of every file the warehouse records for these drops.

    Ingested files and rejected files whose size and mtime were read both count: the next run
    would skip them as unchanged. A file a model stage found changed (`changed_at`) has no size
    here, so its drop is not "already ingested". Returns {} when there is no warehouse yet, and
    None when it cannot be read now (locked longer than the warehouse's timeout).
    """
    if not drop_ids:
        return {}
    sql = """
        SELECT drop_id, path, CASE WHEN changed_at IS NULL THEN byte_size END, mtime_ns
        FROM image_files
        WHERE list_contains(?::VARCHAR[], drop_id)
        UNION ALL
        SELECT drop_id, path, byte_size, mtime_ns FROM rejected_files
        WHERE list_contains(?::VARCHAR[], drop_id)
          AND byte_size IS NOT NULL AND mtime_ns IS NOT NULL
    """
    try:
        rows = warehouse.rows(sql, [drop_ids, drop_ids])
    except (WarehouseNotFound, LockTimeout, duckdb.Error, OSError) as error:
        return None if _busy(error) else {}
    known: dict[str, dict[str, tuple[int | None, int]]] = {}
    for drop_id, path, size, mtime in rows:
        known.setdefault(drop_id, {})[path] = (size, mtime)
    return known


def read_view(
    warehouse: Warehouse, drop_ids: list[str], loose_files: list[str]
) -> tuple[WarehouseView | None, str]:
    """What the warehouse holds of these drops and loose files, and a note when it could not
    be read: (None, why). No warehouse file at all holds nothing: every drop a run ingested is
    requested again.
    """
    try:
        with warehouse.reader() as conn:
            held = conn.execute(
                "SELECT drop_id FROM drops WHERE list_contains(?::VARCHAR[], drop_id)",
                [drop_ids],
            ).fetchall()
            changed = conn.execute(
                "SELECT drop_id, count(*), strftime(max(changed_at), '%Y%m%dT%H%M%S.%f')"
                " FROM image_files WHERE changed_at IS NOT NULL AND vanished_at IS NULL"
                " GROUP BY drop_id"
            ).fetchall()
            loose = conn.execute(
                "SELECT path FROM image_files WHERE list_contains(?::VARCHAR[], path)"
                " UNION SELECT path FROM rejected_files WHERE list_contains(?::VARCHAR[], path)",
                [loose_files, loose_files],
            ).fetchall()
    except WarehouseNotFound:
        return WarehouseView(held=frozenset(), changed={}, loose_held=frozenset()), ""
    except (LockTimeout, duckdb.Error, OSError) as error:
        if isinstance(error, WarehouseHeld):  # a program outside the pipeline: say which
            return None, f"{WAREHOUSE_BUSY} ({error})"
        if _busy(error):
            return None, WAREHOUSE_BUSY
        return None, f"warehouse unreadable ({type(error).__name__}): lost files not checked"
    view = WarehouseView(
        held=frozenset(row[0] for row in held),
        changed={drop: (count, stamp) for drop, count, stamp in changed},
        loose_held=frozenset(row[0] for row in loose),
    )
    return view, ""
