"""Content identity: an image is the SHA-256 of its bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_BYTES = 1 << 20


def sha256_file(path: Path, *, max_bytes: int | None = None) -> tuple[str, int]:
    """Stream the file through SHA-256; return (hex digest, bytes read).

    Stops with `OverflowError` past `max_bytes`, so a huge file costs at most that much I/O.
    """
    digest = hashlib.sha256()
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK_BYTES):
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise OverflowError(f"file is larger than the {max_bytes} byte limit")
            digest.update(chunk)
    return digest.hexdigest(), total
