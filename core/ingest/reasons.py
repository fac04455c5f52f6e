"""Why a file was rejected: a machine-readable reason plus the error text, never a silent skip."""

from __future__ import annotations

import re
from enum import Enum

# Python object text that error messages carry along: "<_io.BytesIO object at 0x7f...>".
_OBJECT_TEXT = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


class RejectReason(str, Enum):  # noqa: UP042 - str() and format() keep their behaviour
    EMPTY = "empty"  # zero bytes
    NOT_AN_IMAGE = "not_an_image"  # no decoder recognises the bytes
    TRUNCATED = "truncated"  # recognised, but the data ends early
    CORRUPT = "corrupt"  # recognised, but the decoder failed on the data
    TOO_LARGE = "too_large"  # over the byte or pixel limit (decompression bombs land here)
    EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"  # one side over max_aspect_ratio x the other
    UNSUPPORTED_MODE = "unsupported_mode"  # a pixel format we cannot turn into RGB
    PATH_ESCAPE = "path_escape"  # a link that resolves outside the drop root
    NOT_A_REGULAR_FILE = "not_a_regular_file"  # FIFO, socket, device, link to a directory
    UNREADABLE = "unreadable"  # the OS refused or failed the read (permissions, vanished, I/O)

    def __str__(self) -> str:
        return self.value


def clean_error(text: str) -> str:
    """The message a person reads: without the Python object text some errors carry (rows
    written before messages were cleaned are cleaned where they are shown)."""
    return _OBJECT_TEXT.sub("", text).strip()


class Rejected(Exception):
    """Raised inside ingestion for one file; the caller turns it into a rejected_files row."""

    def __init__(self, reason: RejectReason, error: str) -> None:
        error = clean_error(error)
        super().__init__(f"{reason.value}: {error}")
        self.reason = reason
        self.error = error
