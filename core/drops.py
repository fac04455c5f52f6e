"""Deciding when a drop is ready: the pure logic behind the drop sensor.

A sub-folder of the drop root is ready once its file set has not changed for a quiet period, or
at once when it holds a `_READY` marker. Loose files at the root are grouped into one drop named
by the time they became ready. The state between ticks is a small JSON document (the sensor's
cursor), so a restarted daemon carries on where it stopped.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from core.ingest.scan import LOOSE_PREFIX, READY_MARKER, InvalidDrop, validate_drop_id


class FileSetSummary(BaseModel):
    """A file set in a few numbers: enough to tell 'files were added' from 'files were removed'."""

    fingerprint: str
    count: int
    max_mtime_ns: int

    def grew_beyond(self, earlier: FileSetSummary) -> bool:
        """True if this set holds files `earlier` did not (new, replaced or modified)."""
        if self.fingerprint == earlier.fingerprint:
            return False
        return self.count >= earlier.count or self.max_mtime_ns > earlier.max_mtime_ns


class Pending(BaseModel):
    summary: FileSetSummary
    since: float  # unix time when this exact file set was first observed


class WatcherState(BaseModel):
    """The sensor cursor."""

    requested: dict[str, FileSetSummary] = Field(default_factory=dict)
    pending: dict[str, Pending] = Field(default_factory=dict)
    loose_assigned: dict[str, tuple[int, int]] = Field(default_factory=dict)  # name -> size, mtime
    loose_pending: Pending | None = None

    @classmethod
    def from_cursor(cls, cursor: str | None) -> WatcherState:
        return cls.model_validate_json(cursor) if cursor else cls()

    def to_cursor(self) -> str:
        return self.model_dump_json()


@dataclass(frozen=True)
class ReadyDrop:
    drop_id: str
    kind: Literal["folder", "loose"]
    summary: FileSetSummary
    files: tuple[str, ...] = ()  # loose drops only
    reason: str = ""

    @property
    def run_key(self) -> str:
        return f"{self.drop_id}:{self.summary.fingerprint[:16]}"


@dataclass(frozen=True)
class TickPlan:
    ready: list[ReadyDrop]
    waiting: dict[str, str]  # drop -> why it is not ready yet
    ignored: dict[str, str]  # entry -> why it can never be a drop
    state: WatcherState


def summarize(entries: list[tuple[str, int, int]]) -> FileSetSummary:
    digest = hashlib.sha256()
    for name, size, mtime_ns in sorted(entries):
        digest.update(f"{name}\0{size}\0{mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return FileSetSummary(
        fingerprint=digest.hexdigest(),
        count=len(entries),
        max_mtime_ns=max((m for _, _, m in entries), default=0),
    )


def _folder_entries(folder: Path) -> tuple[list[tuple[str, int, int]], bool]:
    """(relative name, size, mtime) of the drop's files, and whether the ready marker is there."""
    entries: list[tuple[str, int, int]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or (dirpath == str(folder) and name == READY_MARKER):
                continue
            full = os.path.join(dirpath, name)
            try:
                info = os.lstat(full)
            except OSError:
                continue  # vanished between listing and stat: the next tick sees the new state
            entries.append((os.path.relpath(full, folder), info.st_size, info.st_mtime_ns))
    return entries, (folder / READY_MARKER).exists()


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


def _settled(pending: Pending | None, summary: FileSetSummary, now: float) -> Pending:
    if pending is not None and pending.summary.fingerprint == summary.fingerprint:
        return pending
    return Pending(summary=summary, since=now)


def plan_tick(root: Path, state: WatcherState, *, now: float, quiet_period_s: float) -> TickPlan:
    """Look at the drop root once; say which drops are ready and what the new cursor is."""
    state = state.model_copy(deep=True)
    ready: list[ReadyDrop] = []
    waiting: dict[str, str] = {}
    ignored: dict[str, str] = {}
    if not root.is_dir():
        return TickPlan(ready, {}, {str(root): "drop root does not exist"}, state)

    folders = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir(follow_symlinks=False) and not entry.name.startswith((".", "_"))
    )
    for name in folders:
        try:
            validate_drop_id(name)
        except InvalidDrop as error:
            ignored[name] = str(error)
            continue
        entries, has_marker = _folder_entries(root / name)
        if not entries:
            waiting[name] = "empty folder"
            state.pending.pop(name, None)
            continue
        summary = summarize(entries)
        earlier = state.requested.get(name)
        if earlier is not None and not summary.grew_beyond(earlier):
            state.pending.pop(name, None)
            if summary.fingerprint != earlier.fingerprint:
                state.requested[name] = summary  # files were only removed: nothing to do
            continue
        pending = _settled(state.pending.get(name), summary, now)
        quiet_for = now - pending.since
        if has_marker or quiet_for >= quiet_period_s:
            why = f"{READY_MARKER} marker" if has_marker else f"unchanged for {quiet_for:.0f}s"
            if earlier is not None:
                why = f"files added; {why}"
            ready.append(ReadyDrop(name, "folder", summary, reason=why))
            state.requested[name] = summary
            state.pending.pop(name, None)
        else:
            state.pending[name] = pending
            waiting[name] = f"still changing (quiet for {quiet_for:.0f}s of {quiet_period_s:.0f}s)"

    present = _loose_entries(root)
    # Forget assigned files that left the root, so the cursor is bounded by what lies there now.
    state.loose_assigned = {n: e for n, e in state.loose_assigned.items() if n in present}
    loose = {
        name: entry
        for name, entry in present.items()
        if tuple(state.loose_assigned.get(name, ())) != entry
    }
    if loose:
        summary = summarize([(name, size, mtime) for name, (size, mtime) in loose.items()])
        pending = _settled(state.loose_pending, summary, now)
        quiet_for = now - pending.since
        if quiet_for >= quiet_period_s:
            stamp = datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            drop_id = f"{LOOSE_PREFIX}{stamp}"
            ready.append(
                ReadyDrop(
                    drop_id, "loose", summary, files=tuple(sorted(loose)), reason="loose files"
                )
            )
            state.loose_assigned.update(loose)
            state.loose_pending = None
        else:
            state.loose_pending = pending
            waiting["(loose files)"] = f"{len(loose)} files still changing"
    else:
        state.loose_pending = None
    return TickPlan(ready, waiting, ignored, state)
