"""The one way every stage opens a drop file: beneath the root, never blocking, read once.

A path is walked one component at a time from a descriptor of the drop root, each component
opened with `O_NOFOLLOW` relative to its parent (`openat`), so a directory swapped for a link
between two steps cannot redirect the walk. A symbolic link met on the way is resolved by hand
(`readlinkat`) and followed only while it stays inside the root; `..` never climbs above it.
The file itself is opened `O_NONBLOCK` (a FIFO swapped in after the scan cannot hang the run),
`fstat` of the opened descriptor must say regular file, and its bytes are read once: the caller
hashes and decodes the same bytes, so what a model sees is what was hashed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

MAX_LINKS = 40  # as the kernel's own limit on links followed in one lookup
_READ_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class DropFileError(OSError):
    """A drop file that cannot be read safely; `kind` names why, for rows and logs."""

    kind = "unreadable"


class PathEscapeError(DropFileError):
    """The path, or a link on it, leads outside the drop root."""

    kind = "path_escape"


class NotRegularFileError(DropFileError):
    """The entry is a FIFO, socket, device or directory."""

    kind = "not_a_regular_file"


class FileMissingError(DropFileError):
    """Nothing is at the path any more (deleted or moved)."""

    kind = "missing"


class FileTooLargeError(DropFileError):
    """More bytes than the caller allows."""

    kind = "too_large"


@dataclass(frozen=True)
class DropFile:
    """The bytes of one file, with the `fstat` of the descriptor they were read from."""

    data: bytes
    size: int
    mtime_ns: int


def _parts(relative: str | os.PathLike[str]) -> list[str]:
    text = os.fspath(relative)
    if not text or PurePosixPath(text).is_absolute():
        raise PathEscapeError(errno.EACCES, "not a path relative to the drop root", text)
    return [part for part in text.split("/") if part not in ("", ".")]


def _open_root(drop_root: Path) -> tuple[int, str]:
    real = os.path.realpath(drop_root)
    return os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), real


def _link_parts(target: str, real_root: str, shown: str) -> tuple[list[str], bool]:
    """(components to walk next, whether they start at the root) for a link's target."""
    if not target.startswith("/"):
        return [p for p in target.split("/") if p not in ("", ".")], False
    resolved = os.path.normpath(target)
    if resolved != real_root and not resolved.startswith(real_root.rstrip("/") + "/"):
        raise PathEscapeError(
            errno.EACCES, f"link resolves to {target}, outside the drop root", shown
        )
    inside = os.path.relpath(resolved, real_root)
    return ([] if inside == "." else inside.split("/")), True


def _walk(root_fd: int, real_root: str, relative: str) -> tuple[list[int], str]:
    """Resolve every directory of `relative` beneath the root.

    Returns the chain of open directory descriptors (root first; the caller closes all but the
    root) and the final name, which is not a link that still needs following when the caller
    opens it with `O_NOFOLLOW` (links there are resolved here, inside the root only).
    """
    pending = list(reversed(_parts(relative)))
    if not pending:
        raise NotRegularFileError(errno.EISDIR, "the drop root is a directory", relative)
    chain = [root_fd]
    links = 0
    try:
        while True:
            name = pending.pop()
            if name == "..":
                if len(chain) == 1:
                    raise PathEscapeError(errno.EACCES, "'..' climbs above the drop root", relative)
                os.close(chain.pop())
                if not pending:
                    raise NotRegularFileError(errno.EISDIR, "a directory", relative)
                continue
            try:
                info = os.stat(name, dir_fd=chain[-1], follow_symlinks=False)
            except FileNotFoundError as error:
                raise FileMissingError(errno.ENOENT, "no such file", relative) from error
            except NotADirectoryError as error:
                raise FileMissingError(
                    errno.ENOTDIR, "a path component is a file", relative
                ) from error
            if stat.S_ISLNK(info.st_mode):
                links += 1
                if links > MAX_LINKS:
                    raise DropFileError(errno.ELOOP, "too many levels of links", relative)
                target = os.readlink(name, dir_fd=chain[-1])
                parts, from_root = _link_parts(target, real_root, relative)
                if from_root:
                    for fd in chain[1:]:
                        os.close(fd)
                    del chain[1:]
                pending.extend(reversed(parts))
                if not pending:  # the link names the root itself
                    raise NotRegularFileError(errno.EISDIR, "link to the drop root", relative)
                continue
            if not pending:
                return chain, name
            if not stat.S_ISDIR(info.st_mode):
                raise FileMissingError(errno.ENOTDIR, "a path component is not a folder", relative)
            try:
                chain.append(os.open(name, _DIR_FLAGS, dir_fd=chain[-1]))
            except OSError as error:  # swapped for a link or removed since the stat
                raise DropFileError(
                    error.errno, f"folder changed while opening: {error}", relative
                ) from error
    except BaseException:
        for fd in chain[1:]:
            os.close(fd)
        raise


def _final_stat(chain: list[int], name: str, relative: str) -> os.stat_result:
    info = os.stat(name, dir_fd=chain[-1], follow_symlinks=False)
    if not stat.S_ISREG(info.st_mode):
        kind = "directory" if stat.S_ISDIR(info.st_mode) else "special file"
        raise NotRegularFileError(errno.EINVAL, f"{kind}, not a regular file", relative)
    return info


def stat_drop_file(drop_root: Path, relative: str) -> os.stat_result:
    """The `stat` of the regular file at `relative`, links followed only inside the root."""
    root_fd, real_root = _open_root(drop_root)
    try:
        chain, name = _walk(root_fd, real_root, relative)
        try:
            return _final_stat(chain, name, relative)
        finally:
            for fd in chain[1:]:
                os.close(fd)
    finally:
        os.close(root_fd)


def read_drop_file(drop_root: Path, relative: str, *, max_bytes: int | None = None) -> DropFile:
    """The bytes of the regular file at `relative` under `drop_root`, read once, safely.

    Raises a `DropFileError` subclass: `PathEscapeError` (outside the root), `FileMissingError`,
    `NotRegularFileError` (FIFO, device, folder; checked on the open descriptor, so a swap
    after any earlier check is caught), `FileTooLargeError` (over `max_bytes`).
    """
    root_fd, real_root = _open_root(drop_root)
    try:
        chain, name = _walk(root_fd, real_root, relative)
        try:
            _final_stat(chain, name, relative)  # refuse devices before opening them at all
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=chain[-1])
            except FileNotFoundError as error:
                raise FileMissingError(errno.ENOENT, "no such file", relative) from error
            except OSError as error:
                if error.errno == errno.ELOOP:
                    raise DropFileError(
                        errno.ELOOP, "replaced by a link while opening", relative
                    ) from error
                raise
        finally:
            for d in chain[1:]:
                os.close(d)
    finally:
        os.close(root_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(errno.EINVAL, "special file, not a regular file", relative)
        if max_bytes is not None and info.st_size > max_bytes:
            raise FileTooLargeError(
                errno.EFBIG, f"{info.st_size} bytes is over the {max_bytes} byte limit", relative
            )
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise FileTooLargeError(
                    errno.EFBIG, f"file grew over the {max_bytes} byte limit", relative
                )
        return DropFile(b"".join(chunks), info.st_size, info.st_mtime_ns)
    finally:
        os.close(fd)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ImageUnreadable(Exception):
    """No recorded copy of an image still holds its bytes; `status` says which case.

    `changed_since_ingest`: a copy exists but its bytes hash differently (the file was edited
    or replaced); `unavailable`: no copy can be read at all (deleted, moved, not a file).
    """

    def __init__(
        self,
        status: str,
        image_id: str,
        details: list[str],
        changed: list[str],
        missing: list[str] | None = None,
    ) -> None:
        self.status = status
        self.image_id = image_id
        self.details = details
        self.changed = changed  # paths whose bytes no longer hash to image_id, or not a file
        self.missing = missing or []  # paths where nothing exists any more
        super().__init__(f"{status}: " + "; ".join(details))


class FileCopy(NamedTuple):
    """One recorded file of an image: its row key, and its name as the OS spells it.

    They differ for a name with a backslash or a byte that is not UTF-8: the key is escaped
    (`core.ingest.scan.display_path`), and opening the key would find no file, or a sibling
    whose real name happens to be that key.
    """

    key: str
    relative: str


def read_image_copy(
    drop_root: Path, image_id: str, paths: Iterable[str | FileCopy]
) -> tuple[str, bytes]:
    """(key, bytes) of the first of `paths` that still exists and hashes to `image_id`.

    A plain string is both the key and the name. Raises `ImageUnreadable` when none does:
    `changed_since_ingest` if some copy was read and hashed differently, else `unavailable`
    (gone, or no regular file inside the root); its lists name the copies by key.
    """
    details: list[str] = []
    changed: list[str] = []
    missing: list[str] = []
    hash_changed = False
    for copy in paths:
        path, relative = (copy, copy) if isinstance(copy, str) else copy
        try:
            data = read_drop_file(drop_root, relative).data
        except FileMissingError:
            missing.append(path)
            details.append(f"{path}: missing")
            continue
        except OSError as error:  # a FIFO, a link out of the root, no permission: not that file
            changed.append(path)
            kind = getattr(error, "kind", "unreadable")
            details.append(f"{path}: {kind}: {error.strerror or error}")
            continue
        if sha256_hex(data) == image_id:
            return path, data
        changed.append(path)
        hash_changed = True
        details.append(f"{path}: bytes changed since ingestion")
    if not details:
        details.append("no file of this image is recorded")
    status = "changed_since_ingest" if hash_changed else "unavailable"
    raise ImageUnreadable(status, image_id, details, changed, missing)
