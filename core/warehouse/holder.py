"""Who holds the warehouse file: DuckDB names the PID in its lock error; /proc adds the command.

A run blocked by a process outside the pipeline (a notebook's `duckdb.connect(path)`, the DuckDB
CLI) fails with one line naming that process, so the person who sees the failure knows which
program to close. Anything password-like in the command line is masked.
"""

from __future__ import annotations

import re
from pathlib import Path

_PID = re.compile(r"\(PID (\d+)\)")
_WORDS = r"(?:password|passwd|pwd|secret|token|api[_-]?key)"
_SECRETS = (
    re.compile(rf"(?i)(\w*{_WORDS}\w*\s*[=:]\s*)(\S+)"),  # password=x, PGPASSWORD=x, key: x
    re.compile(rf"(?i)(--{_WORDS}[\w-]*\s+)(\S+)"),  # --password x
    re.compile(r"(//[^:/@\s]+:)([^@\s]+)(?=@)"),  # scheme://user:password@host
)


def redact(text: str) -> str:
    """Mask values after password-like words and the password of a URL's user:password@."""
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: f"{m.group(1)}***", text)
    return text


def holder_pid(error_text: str) -> int | None:
    """The PID in DuckDB's "Conflicting lock is held in ... (PID n)", if any."""
    match = _PID.search(error_text)
    return int(match.group(1)) if match else None


def command_line(pid: int) -> str | None:
    """The process's command line from /proc, redacted; None when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    return redact(" ".join(words)) if words else None


def describe_holder(error_text: str) -> str:
    """'PID n (command line)', or DuckDB's own words when no PID is given."""
    pid = holder_pid(error_text)
    if pid is None:
        return redact(error_text.splitlines()[0] if error_text else "an unknown process")
    command = command_line(pid)
    return f"PID {pid} ({command})" if command else f"PID {pid} (command line unreadable)"
