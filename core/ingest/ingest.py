"""Ingest one drop into the warehouse: stat, hash, decode, and record every file exactly once.

Work is done in batches. Each batch is hashed in a thread pool (hashlib and Pillow release the
GIL), only bytes never seen before are decoded, and the batch's rows are written in one DuckDB
transaction while the next batch is being decoded, so a crash leaves whole batches or nothing. A file whose size and mtime match its
row from an earlier run is not read at all; when they differ, the content hash decides.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from core.files import read_drop_file, sha256_hex
from core.ingest.decode import DecodeLimits, ImageInfo, inspect_image
from core.ingest.reasons import Rejected, RejectReason
from core.ingest.scan import DropRef, SeenFile, file_problem, scan_drop
from core.progress import Progress
from core.warehouse import Warehouse

# Reasons that depend only on the bytes: an unchanged file keeps them, so it is not re-read.
CONTENT_REASONS = frozenset(
    {
        RejectReason.EMPTY,
        RejectReason.NOT_AN_IMAGE,
        RejectReason.TRUNCATED,
        RejectReason.CORRUPT,
        RejectReason.UNSUPPORTED_MODE,
    }
)
# Reasons that depend on the bytes and the run's limits: kept while the limits are the same.
LIMIT_REASONS = frozenset({RejectReason.TOO_LARGE, RejectReason.EXTREME_ASPECT_RATIO})


def limits_text(limits: DecodeLimits) -> str:
    """How `rejected_files.limits` records the limits a verdict was reached under."""
    return (
        f"max_bytes={limits.max_bytes};max_pixels={limits.max_pixels}"
        f";max_aspect_ratio={limits.max_aspect_ratio:g}"
    )


_IMAGES = pa.schema(
    [
        ("image_id", pa.string()),
        ("byte_size", pa.int64()),
        ("format", pa.string()),
        ("mode", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("exif_orientation", pa.int16()),
        ("frame_count", pa.int32()),
        ("captured_at", pa.timestamp("us")),
        ("notes", pa.list_(pa.string())),
        ("path", pa.string()),
    ]
)
_FILES = pa.schema(
    [
        ("path", pa.string()),
        ("image_id", pa.string()),
        ("byte_size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("os_path", pa.binary()),
    ]
)
_REJECTED = pa.schema(
    [
        ("path", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
        ("byte_size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("sha256", pa.string()),
        ("limits", pa.string()),
        ("os_path", pa.binary()),
    ]
)


def default_workers() -> int:
    return min(16, (os.cpu_count() or 2) + 2)


@dataclass(frozen=True)
class IngestOptions:
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    workers: int = field(default_factory=default_workers)
    batch_size: int = 1024  # files per transaction, at most
    batch_bytes: int = 256 * 1024 * 1024  # file bytes per transaction, at most


@dataclass
class Outcome:
    """What happened to one file in this run."""

    seen: SeenFile
    sha256: str | None = None
    info: ImageInfo | None = None
    problem: Rejected | None = None
    data: bytes | None = None  # the bytes hashed, kept until they are decoded


@dataclass
class IngestReport:
    drop_id: str
    files_seen: int = 0
    files_unchanged: int = 0  # matched their earlier row by size and mtime: not read
    files_processed: int = 0
    images_new: int = 0
    files_duplicate: int = 0  # processed files whose bytes were already an image
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> files, this run
    bytes_read: int = 0
    seconds: float = 0.0
    seen_paths: list[str] = field(default_factory=list)  # row keys
    seen_entries: list[str] = field(default_factory=list)  # the same files as the OS names them
    vanished_paths: list[str] = field(default_factory=list)  # rows whose file is gone

    @property
    def files_per_s(self) -> float:
        return self.files_processed / self.seconds if self.seconds > 0 else 0.0


Known = tuple[int | None, int | None, str | None, str | None]  # size, mtime, reason, limits


def _is_unchanged(seen: SeenFile, known: Known | None, limits: str) -> bool:
    if known is None:
        return False
    size, mtime_ns, reason, limits_then = known
    if (size, mtime_ns) != (seen.size, seen.mtime_ns):
        return False
    if seen.problem is not None:  # decided from the directory entry: same verdict, same row
        return reason == seen.problem.reason.value
    if reason in LIMIT_REASONS:  # a verdict of the limits as much as of the bytes
        return limits_then == limits
    return reason is None or reason in CONTENT_REASONS


def os_path(seen: SeenFile) -> bytes | None:
    """The real name as bytes when the row key is escaped (`display_path`), else None."""
    return None if seen.path == seen.relative else os.fsencode(seen.relative)


def _known_rows(warehouse: Warehouse, drop_id: str) -> dict[str, Known]:
    """The drop's rows; a file a model stage found changed (`changed_at`) has no size or mtime
    here, so it is re-hashed however its stat looks, and so has an escaped key recorded before
    real names were kept (`os_path`), so its row gains the name the models open it by."""
    with warehouse.transaction() as conn:
        rows = conn.execute(
            "SELECT path, CASE WHEN changed_at IS NULL"
            " AND (os_path IS NOT NULL OR NOT contains(path, '\\')) THEN byte_size END,"
            " mtime_ns, NULL, NULL"
            " FROM image_files WHERE drop_id = ?"
            " UNION ALL SELECT path, byte_size, mtime_ns, reason, limits"
            " FROM rejected_files WHERE drop_id = ?",
            [drop_id, drop_id],
        ).fetchall()
    return {path: (size, mtime, reason, limits) for path, size, mtime, reason, limits in rows}


def _hash(outcome: Outcome, root: Path, limits: DecodeLimits) -> Outcome:
    """Read the file once (safely, `core.files`) and hash those bytes; decoding uses them too."""
    seen = outcome.seen
    if seen.size == 0:
        outcome.problem = Rejected(RejectReason.EMPTY, "file has zero bytes")
    elif seen.size is not None and seen.size > limits.max_bytes:
        outcome.problem = Rejected(
            RejectReason.TOO_LARGE, f"{seen.size} bytes is over the {limits.max_bytes} byte limit"
        )
    else:
        try:
            read = read_drop_file(root, seen.relative, max_bytes=limits.max_bytes)
        except OSError as error:
            outcome.problem = file_problem(error)
            return outcome
        # The row describes the bytes read, even if the file changed since the scan.
        outcome.seen = replace(seen, size=read.size, mtime_ns=read.mtime_ns)
        if read.size == 0:
            outcome.problem = Rejected(RejectReason.EMPTY, "file has zero bytes")
            return outcome
        outcome.data = read.data
        outcome.sha256 = sha256_hex(read.data)
    return outcome


def _decode(outcome: Outcome, limits: DecodeLimits) -> Outcome:
    try:
        assert outcome.data is not None
        outcome.info = inspect_image(outcome.data, limits)
    except Rejected as problem:
        outcome.problem = problem
    except MemoryError:
        outcome.problem = Rejected(RejectReason.TOO_LARGE, "decoding ran out of memory")
    except Exception as error:  # a decoder bug on one file must not fail the drop
        outcome.problem = Rejected(RejectReason.CORRUPT, f"{type(error).__name__}: {error}")
    return outcome


def _batches(items: list[SeenFile], max_files: int, max_bytes: int) -> Iterator[list[SeenFile]]:
    """Cut by count and by bytes: many small files amortise a transaction, large ones keep
    batches (and the work a crash can lose) short."""
    batch: list[SeenFile] = []
    size = 0
    for item in items:
        batch.append(item)
        size += item.size or 0
        if len(batch) >= max_files or size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class DropIngestor:
    """Ingests drops into one warehouse; reusable across drops, safe across processes."""

    def __init__(
        self,
        warehouse: Warehouse,
        drop_root: Path,
        options: IngestOptions | None = None,
        log: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.warehouse = warehouse
        self.drop_root = Path(drop_root)
        self.options = options or IngestOptions()
        self.log = log

    def ingest(self, drop: DropRef) -> IngestReport:
        started = time.monotonic()
        seen = scan_drop(self.drop_root, drop)
        known = _known_rows(self.warehouse, drop.drop_id)
        report = IngestReport(drop_id=drop.drop_id, files_seen=len(seen))
        report.seen_paths = [f.path for f in seen]
        report.seen_entries = [f.relative for f in seen]
        seen_set = set(report.seen_paths)
        report.vanished_paths = sorted(p for p in known if p not in seen_set)
        limits = limits_text(self.options.limits)
        todo = [f for f in seen if not _is_unchanged(f, known.get(f.path), limits)]
        report.files_unchanged = len(seen) - len(todo)
        self.log(
            f"drop {drop.drop_id}: {len(seen)} files, {report.files_unchanged} unchanged since the "
            f"last run, {len(todo)} to process"
        )
        progress = Progress(f"ingest {drop.drop_id}", len(todo), self.log, unit="files")
        # One writer thread commits batch k while the pool hashes and decodes batch k+1; waiting
        # for the previous write before queueing the next keeps at most two batches in memory.
        with (
            ThreadPoolExecutor(self.options.workers, thread_name_prefix="ingest") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="ingest-writer") as writer,
        ):
            pending: Future[None] | None = None
            for batch in _batches(todo, self.options.batch_size, self.options.batch_bytes):
                outcomes = self._process(pool, batch)
                if pending is not None:
                    pending.result()
                pending = writer.submit(self._write, drop.drop_id, outcomes, report)
                progress.advance(len(batch))
            if pending is not None:
                pending.result()
        progress.finish()
        self._record_drop(drop, report, changed=bool(todo))
        report.files_processed = len(todo)
        report.seconds = time.monotonic() - started
        return report

    def _process(self, pool: ThreadPoolExecutor, batch: list[SeenFile]) -> list[Outcome]:
        limits = self.options.limits
        outcomes = [Outcome(seen=f, problem=f.problem) for f in batch]
        readable = [o for o in outcomes if o.problem is None]
        list(pool.map(lambda o: _hash(o, self.drop_root, limits), readable))
        hashes = sorted({o.sha256 for o in readable if o.sha256})
        with self.warehouse.transaction() as conn:
            known = {
                row[0]
                for row in conn.execute(
                    "SELECT image_id FROM images WHERE image_id IN (SELECT unnest(?::VARCHAR[]))",
                    [hashes],
                ).fetchall()
            }
        first_of_hash: dict[str, Outcome] = {}
        for outcome in readable:
            if outcome.sha256 and outcome.sha256 not in known:
                first_of_hash.setdefault(outcome.sha256, outcome)
        list(pool.map(lambda o: _decode(o, limits), first_of_hash.values()))
        for outcome in readable:  # same bytes, same verdict: copy it to the other paths
            first = first_of_hash.get(outcome.sha256 or "")
            if first is not None and first is not outcome:
                outcome.info, outcome.problem = first.info, first.problem
        for outcome in outcomes:
            outcome.data = None  # hashed and decoded: free the batch's bytes before writing
        return outcomes

    def _write(self, drop_id: str, outcomes: list[Outcome], report: IngestReport) -> None:
        now = datetime.now(UTC)
        images, files, rejected = [], [], []
        for o in outcomes:
            if o.problem is not None:
                rejected.append(
                    {
                        "path": o.seen.path,
                        "reason": o.problem.reason.value,
                        "error": o.problem.error,
                        "byte_size": o.seen.size,
                        "mtime_ns": o.seen.mtime_ns,
                        "sha256": o.sha256,
                        "limits": limits_text(self.options.limits),
                        "os_path": os_path(o.seen),
                    }
                )
                report.rejected[o.problem.reason.value] += 1
                continue
            assert o.sha256 is not None
            report.bytes_read += o.seen.size or 0
            files.append(
                {
                    "path": o.seen.path,
                    "image_id": o.sha256,
                    "byte_size": o.seen.size,
                    "mtime_ns": o.seen.mtime_ns,
                    "os_path": os_path(o.seen),
                }
            )
            if o.info is not None:
                images.append(
                    {
                        "image_id": o.sha256,
                        "byte_size": o.seen.size,
                        "format": o.info.format,
                        "mode": o.info.mode,
                        "width": o.info.width,
                        "height": o.info.height,
                        "exif_orientation": o.info.exif_orientation,
                        "frame_count": o.info.frame_count,
                        "captured_at": o.info.captured_at,
                        "notes": list(o.info.notes),
                        "path": o.seen.path,
                    }
                )
        incoming_images = pa.Table.from_pylist(images, schema=_IMAGES)
        incoming_files = pa.Table.from_pylist(files, schema=_FILES)
        incoming_rejected = pa.Table.from_pylist(rejected, schema=_REJECTED)

        def write(conn: duckdb.DuckDBPyConnection) -> tuple[int, int]:
            conn.register("incoming_images", incoming_images)
            conn.register("incoming_files", incoming_files)
            conn.register("incoming_rejected", incoming_rejected)
            # A path that changed from rejected to good (or back) moves between the tables.
            conn.execute(
                "DELETE FROM rejected_files WHERE drop_id = ? AND path IN (SELECT path FROM incoming_files)",
                [drop_id],
            )
            conn.execute(
                "DELETE FROM image_files WHERE drop_id = ? AND path IN (SELECT path FROM incoming_rejected)",
                [drop_id],
            )
            # Duplicate: the bytes were already an image (first seen at another path) or an
            # earlier path of this batch carries them.
            conn.execute(
                """
                CREATE OR REPLACE TEMP TABLE staged_files AS
                SELECT ? AS drop_id, f.path, f.image_id,
                       CASE WHEN i.image_id IS NOT NULL
                            THEN NOT (i.first_drop_id = ? AND i.first_path = f.path)
                            ELSE row_number() OVER (PARTITION BY f.image_id ORDER BY f.path) > 1
                       END AS is_duplicate,
                       f.byte_size, f.mtime_ns, f.os_path
                FROM incoming_files f LEFT JOIN images i USING (image_id)
                """,
                [drop_id, drop_id],
            )
            new_images = (0,)
            if incoming_images.num_rows:
                # The guard row makes two transactions inserting images at once conflict on the
                # lake, so the one that commits second replays and finds the other's rows.
                conn.execute("UPDATE write_guards SET bumps = bumps + 1 WHERE name = 'images'")
                new_images = conn.execute(
                    """
                    MERGE INTO images USING (
                        SELECT image_id, byte_size, format, mode, width, height,
                               exif_orientation, frame_count, captured_at, notes,
                               ? AS first_drop_id, path AS first_path, ? AS ingested_at
                        FROM (SELECT *, row_number() OVER (PARTITION BY image_id ORDER BY path)
                                        AS nth
                              FROM incoming_images)
                        WHERE nth = 1
                    ) AS s ON images.image_id = s.image_id
                    WHEN NOT MATCHED THEN INSERT BY NAME
                    """,
                    [drop_id, now],
                ).fetchone() or (0,)
            conn.execute(
                """
                MERGE INTO image_files USING (
                    SELECT drop_id, path, image_id, is_duplicate, byte_size, mtime_ns,
                           ?::TIMESTAMPTZ AS ingested_at, os_path
                    FROM staged_files
                ) AS s ON image_files.drop_id = s.drop_id AND image_files.path = s.path
                WHEN MATCHED THEN UPDATE SET
                    image_id = s.image_id, is_duplicate = s.is_duplicate,
                    byte_size = s.byte_size, mtime_ns = s.mtime_ns, os_path = s.os_path,
                    ingested_at = s.ingested_at, vanished_at = NULL, changed_at = NULL
                WHEN NOT MATCHED THEN INSERT
                    (drop_id, path, image_id, is_duplicate, byte_size, mtime_ns, ingested_at,
                     os_path)
                VALUES (s.drop_id, s.path, s.image_id, s.is_duplicate, s.byte_size, s.mtime_ns,
                        s.ingested_at, s.os_path)
                """,
                [now],
            )
            duplicates = conn.execute(
                "SELECT count(*) FROM staged_files WHERE is_duplicate"
            ).fetchone()
            conn.execute(
                """
                MERGE INTO rejected_files USING (
                    SELECT ?::VARCHAR AS drop_id, path, reason, error, byte_size, mtime_ns,
                           sha256, ?::TIMESTAMPTZ AS rejected_at, limits, os_path
                    FROM incoming_rejected
                ) AS s ON rejected_files.drop_id = s.drop_id AND rejected_files.path = s.path
                WHEN MATCHED THEN UPDATE SET
                    rejected_at = CASE
                        WHEN rejected_files.reason = s.reason
                         AND rejected_files.error = s.error
                         AND rejected_files.byte_size IS NOT DISTINCT FROM s.byte_size
                         AND rejected_files.mtime_ns IS NOT DISTINCT FROM s.mtime_ns
                        THEN rejected_files.rejected_at ELSE s.rejected_at END,
                    reason = s.reason, error = s.error,
                    byte_size = s.byte_size, mtime_ns = s.mtime_ns,
                    sha256 = s.sha256, limits = s.limits, vanished_at = NULL,
                    os_path = s.os_path
                WHEN NOT MATCHED THEN INSERT
                    (drop_id, path, reason, error, byte_size, mtime_ns, sha256, rejected_at,
                     limits, os_path)
                VALUES (s.drop_id, s.path, s.reason, s.error, s.byte_size, s.mtime_ns, s.sha256,
                        s.rejected_at, s.limits, s.os_path)
                """,
                [drop_id, now],
            )
            conn.execute("DROP TABLE staged_files")
            for name in ("incoming_images", "incoming_files", "incoming_rejected"):
                conn.unregister(name)
            return int(new_images[0]), int(duplicates[0]) if duplicates else 0

        images_new, files_duplicate = self.warehouse.write(write)
        report.images_new += images_new
        report.files_duplicate += files_duplicate

    def _record_drop(self, drop: DropRef, report: IngestReport, *, changed: bool) -> None:
        """Mark rows whose file is gone (and clear the mark on those back), then count the
        drop: files_seen = files_ingested + files_rejected over the files present now."""
        now = datetime.now(UTC)
        seen = pa.table({"path": pa.array(sorted(set(report.seen_paths)), pa.string())})

        def write(conn: duckdb.DuckDBPyConnection) -> None:
            conn.register("seen_now", seen)
            for table in ("image_files", "rejected_files"):
                conn.execute(
                    f"""
                    UPDATE {table} SET vanished_at = CASE
                        WHEN path IN (SELECT path FROM seen_now) THEN NULL
                        ELSE coalesce(vanished_at, $now) END
                    WHERE drop_id = $drop_id
                      AND (vanished_at IS NULL) = (path NOT IN (SELECT path FROM seen_now))
                    """,
                    {"drop_id": drop.drop_id, "now": now},
                )
            conn.unregister("seen_now")
            conn.execute(
                """
                MERGE INTO drops USING (
                    SELECT $drop_id::VARCHAR AS drop_id, $kind::VARCHAR AS kind,
                           $now::TIMESTAMPTZ AS first_ingested_at,
                           $now::TIMESTAMPTZ AS last_ingested_at, $seen::INTEGER AS files_seen,
                           (SELECT count(*) FROM image_files
                            WHERE drop_id = $drop_id AND vanished_at IS NULL)::INTEGER
                               AS files_ingested,
                           (SELECT count(*) FROM rejected_files
                            WHERE drop_id = $drop_id AND vanished_at IS NULL)::INTEGER
                               AS files_rejected,
                           (SELECT count(*) FROM images WHERE first_drop_id = $drop_id)::INTEGER
                               AS images_new,
                           ((SELECT count(*) FROM image_files
                             WHERE drop_id = $drop_id AND vanished_at IS NOT NULL)
                          + (SELECT count(*) FROM rejected_files
                             WHERE drop_id = $drop_id AND vanished_at IS NOT NULL))::INTEGER
                               AS files_vanished
                ) AS s ON drops.drop_id = s.drop_id
                WHEN MATCHED THEN UPDATE SET
                    last_ingested_at = CASE
                        WHEN NOT $changed AND drops.files_seen = s.files_seen
                         AND drops.files_ingested = s.files_ingested
                         AND drops.files_rejected = s.files_rejected
                         AND drops.files_vanished IS NOT DISTINCT FROM s.files_vanished
                        THEN drops.last_ingested_at ELSE s.last_ingested_at END,
                    files_seen = s.files_seen, files_ingested = s.files_ingested,
                    files_rejected = s.files_rejected, images_new = s.images_new,
                    files_vanished = s.files_vanished
                WHEN NOT MATCHED THEN INSERT BY NAME
                """,
                {
                    "drop_id": drop.drop_id,
                    "kind": drop.kind,
                    "now": now,
                    "seen": report.files_seen,
                    "changed": changed,
                },
            )

        self.warehouse.write(write)


def recorded_paths(warehouse: Warehouse, drop_id: str) -> list[str]:
    """Paths an earlier run recorded for `drop_id`, as the OS spells them (the real name of an
    escaped key): the file list of a loose drop re-run by hand."""
    if not warehouse.exists():
        return []
    rows = warehouse.rows(
        "SELECT path, os_path FROM image_files WHERE drop_id = $d"
        " UNION SELECT path, os_path FROM rejected_files WHERE drop_id = $d ORDER BY 1",
        {"d": drop_id},
    )
    return [path if raw is None else os.fsdecode(bytes(raw)) for path, raw in rows]
