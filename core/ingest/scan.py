"""Which files make up a drop, and which of them can be read at all.

A drop is either a sub-folder of the drop root (walked recursively) or a list of loose files at
the root that the sensor grouped together. Hidden entries (names starting with '.') and the
`_READY` marker are not part of a drop. Every other entry is returned exactly once, with the
problem found from its directory entry alone (a link leaving the drop root, a FIFO, a folder that
cannot be listed) so the caller can record it instead of losing it. Every path, a loose drop's
list included, is walked component by component beneath the root (`core.files`): a link in a
folder on the way is followed only while it stays inside the root.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from core.files import FileTooLargeError, NotRegularFileError, PathEscapeError, stat_drop_file
from core.ingest.reasons import Rejected, RejectReason

READY_MARKER = "_READY"
LOOSE_PREFIX = "_loose-"
_FORBIDDEN_IN_DROP_ID = ("/", "\\", "\x00", "...")


class InvalidDrop(ValueError):
    """The partition key does not name a drop that can be ingested."""


@dataclass(frozen=True)
class DropRef:
    drop_id: str
    kind: Literal["folder", "loose"]
    files: tuple[str, ...] = ()  # loose drops: paths relative to the drop root

    @classmethod
    def folder(cls, drop_id: str) -> DropRef:
        return cls(drop_id=drop_id, kind="folder")

    @classmethod
    def loose(cls, drop_id: str, files: list[str] | tuple[str, ...]) -> DropRef:
        return cls(drop_id=drop_id, kind="loose", files=tuple(sorted(files)))


@dataclass(frozen=True)
class SeenFile:
    path: str  # relative to the drop root, '/'-separated, as text; the key of every row
    relative: str  # the same path as the OS spells it: what `core.files` opens
    size: int | None
    mtime_ns: int | None
    problem: Rejected | None = None


def is_loose_drop_id(drop_id: str) -> bool:
    return drop_id.startswith(LOOSE_PREFIX)


def validate_drop_id(drop_id: str) -> None:
    """A drop id is a folder name as `display_path` spells it: a name that is not UTF-8 is a
    drop too, its undecodable bytes written `\\xNN` (`os_path` gives the name back)."""
    if not drop_id or drop_id in {".", ".."} or drop_id.startswith("."):
        raise InvalidDrop(f"{drop_id!r} is not a valid drop name")
    name = os_path(drop_id)
    if (
        any(part in name for part in _FORBIDDEN_IN_DROP_ID)
        or display_path(name) != drop_id
        or not "".join(c for c in name if not 0xDC80 <= ord(c) <= 0xDCFF).isprintable()
    ):
        raise InvalidDrop(f"drop name {drop_id!r} contains a path separator or control character")


def display_path(relative: str) -> str:
    """The row key for a path: the name itself when it is plain text without a backslash.

    Otherwise backslashes are doubled and bytes that are not UTF-8 (surrogate escapes from the
    OS) become `\\xNN`, so distinct names always get distinct keys: a file named with the raw
    byte 0xFF and one literally named backslash-x-f-f no longer share a row.
    """
    if not any(c == "\\" or 0xD800 <= ord(c) <= 0xDFFF for c in relative):
        return relative
    out = []
    for c in relative:
        code = ord(c)
        if c == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as os.fsdecode spells it
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(c)
    return "".join(out)


_ESCAPE = re.compile(r"\\\\|\\x([0-9a-f]{2})|\\u([0-9a-f]{4})")


def os_path(key: str) -> str:
    """The name as the OS spells it (undecodable bytes as surrogates) of a `display_path` key."""
    if "\\" not in key:
        return key

    def name(match: re.Match[str]) -> str:
        byte, code = match.group(1), match.group(2)
        if byte is not None:
            return chr(0xDC00 + int(byte, 16))
        return chr(int(code, 16)) if code is not None else "\\"

    return _ESCAPE.sub(name, key)


_FILE_ERRORS: tuple[tuple[type[OSError], RejectReason], ...] = (
    (PathEscapeError, RejectReason.PATH_ESCAPE),
    (NotRegularFileError, RejectReason.NOT_A_REGULAR_FILE),
    (FileTooLargeError, RejectReason.TOO_LARGE),
)


def file_problem(error: OSError) -> Rejected:
    """The rejection a `core.files` error stands for (anything else the OS said: unreadable)."""
    for kind, reason in _FILE_ERRORS:
        if isinstance(error, kind):
            return Rejected(reason, error.strerror or str(error))
    return Rejected(RejectReason.UNREADABLE, f"{type(error).__name__}: {error.strerror or error}")


def _classify(root: Path, relative: str) -> SeenFile:
    """Stat `relative` by walking it beneath the root: links are followed only inside it."""
    path = display_path(relative)
    try:
        info = stat_drop_file(root, relative)
    except OSError as error:
        return SeenFile(path, relative, None, None, file_problem(error))
    return SeenFile(path, relative, info.st_size, info.st_mtime_ns)


def _walk_folder(root: Path, folder: Path) -> list[SeenFile]:
    seen: list[SeenFile] = []

    def unlistable(error: OSError) -> None:
        relative = os.path.relpath(error.filename or folder, root)
        problem = Rejected(RejectReason.UNREADABLE, f"folder could not be listed: {error}")
        seen.append(SeenFile(display_path(relative) + "/", relative, None, None, problem))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unlistable, followlinks=False):
        here = Path(dirpath)
        linked_dirs = [d for d in dirnames if (here / d).is_symlink()]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in linked_dirs)
        for name in sorted([*filenames, *linked_dirs]):
            if name.startswith(".") or (here == folder and name == READY_MARKER):
                continue
            seen.append(_classify(root, (here / name).relative_to(root).as_posix()))
    return sorted(seen, key=lambda f: f.path)


def _loose_files(root: Path, files: tuple[str, ...]) -> list[SeenFile]:
    seen: list[SeenFile] = []
    for relative in files:
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts:
            problem = Rejected(
                RejectReason.PATH_ESCAPE, f"{relative!r} points outside the drop root"
            )
            seen.append(SeenFile(display_path(relative), relative, None, None, problem))
            continue
        seen.append(_classify(root, os_path(relative)))
    return sorted(seen, key=lambda f: f.path)


def scan_drop(drop_root: Path, drop: DropRef) -> list[SeenFile]:
    """Every file of `drop`, sorted by path, each with its stat or the problem found."""
    validate_drop_id(drop.drop_id)
    root = Path(os.path.realpath(drop_root))
    if not root.is_dir():
        raise InvalidDrop(f"drop root {drop_root} is not a folder")
    if drop.kind == "loose":
        return _loose_files(root, drop.files)
    folder = root / os_path(drop.drop_id)
    if folder.is_symlink() or not folder.is_dir():
        raise InvalidDrop(f"drop {drop.drop_id!r} is not a folder under {root}")
    return _walk_folder(root, folder)
