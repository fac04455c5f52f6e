"""The nothing-lost equation of a drop: every file seen has exactly one row, in exactly one table."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from core.warehouse import Warehouse


@dataclass(frozen=True)
class Accounting:
    files_seen: int
    image_file_rows: int  # rows in image_files for the seen paths
    rejected_rows: int  # rows in rejected_files for the seen paths
    missing: list[str] = field(default_factory=list)  # seen, but in neither table
    in_both: list[str] = field(default_factory=list)  # counted twice
    shared_keys: list[str] = field(default_factory=list)  # one row key for several entries

    @property
    def balanced(self) -> bool:
        return (
            not self.missing
            and not self.in_both
            and not self.shared_keys
            and self.files_seen == self.image_file_rows + self.rejected_rows
        )


def account_for_drop(
    warehouse: Warehouse,
    drop_id: str,
    seen_paths: Sequence[str],
    entries: Sequence[str] | None = None,
) -> Accounting:
    """Balance the rows of the drop against what the scan saw.

    `files_seen` counts distinct directory entries (`entries`: the paths as the OS spells them,
    compared as bytes), not the writer's row keys, so two entries mapped to one key by a bug
    show as unbalanced instead of as one file seen with one row.
    """
    entries = seen_paths if entries is None else entries
    distinct_entries = {os.fsencode(entry) for entry in entries}
    keys = sorted(set(seen_paths))
    shared = sorted(key for key, n in Counter(seen_paths).items() if n > 1)
    seen = pa.table({"path": pa.array(keys, type=pa.string())})
    with warehouse.reader() as conn:
        conn.register("seen", seen)
        rows = conn.execute(
            """
            SELECT s.path, f.path IS NOT NULL AS has_file, r.path IS NOT NULL AS has_rejection
            FROM seen s
            LEFT JOIN image_files f ON f.drop_id = $drop AND f.path = s.path
            LEFT JOIN rejected_files r ON r.drop_id = $drop AND r.path = s.path
            ORDER BY s.path
            """,
            {"drop": drop_id},
        ).fetchall()
    return Accounting(
        files_seen=len(distinct_entries),
        image_file_rows=sum(1 for _, has_file, _ in rows if has_file),
        rejected_rows=sum(1 for _, _, has_rejection in rows if has_rejection),
        missing=[path for path, has_file, has_rej in rows if not has_file and not has_rej],
        in_both=[path for path, has_file, has_rej in rows if has_file and has_rej],
        shared_keys=shared,
    )
