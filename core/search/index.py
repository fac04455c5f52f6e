"""An approximate nearest-neighbour index of the stored embeddings, kept beside the warehouse.

The warehouse stays the source of truth; the index is a derived copy that can be deleted at any
time and is rebuilt from the embedding table. Layout: `<warehouse>.index/<model>__<kind>__d<D>`
holds `vectors-<stamp>.faiss` (a faiss index), `ids-<stamp>.parquet` (the image id of each index
row, in row order), `rows-<stamp>.f32` segments (the full-precision float32 vectors, row-aligned
with the ids: one segment per update, merged when there are `MAX_SEGMENTS`) and `manifest.json`,
which names the files of the current generation. New files get new names and the manifest is
replaced last, atomically, under a lock, so a reader never sees a half-written index and two runs
never update it at once.

Queries re-score their candidates from the memory-mapped segments (k rows read, not a join over
the warehouse). Whether the index is current is decided without opening the warehouse when its
files (`.duckdb`, `.duckdb.wal`) are unchanged since a moment the index was known current;
otherwise by counting the rows of the model (see `VectorIndex.ready`).

Small collections use an exact flat index. From `IVF_FROM` vectors on it is faiss IVF with 8-bit
scalar quantisation (`IVF<nlist>,SQ8`): a query scans only `nprobe` of the `nlist` cells, and
each vector costs 1 byte per dimension (1M x 512 = 0.5 GB instead of 2 GB). Scores from the
quantised codes are approximate, so queries re-score the candidates exactly (above).
Embeddings are only ever inserted, so `sync` adds the rows the index lacks; it retrains (a full
rebuild) when the collection has grown `RETRAIN_GROWTH` times past what the cells were trained
on, or when the index holds an id the warehouse no longer has.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import atomic_write
from core.clip.store import has_table, table_for
from core.warehouse import FileWarehouse, Warehouse, locking
from core.warehouse.stamp import warehouse_stamp

IVF_FROM = 50_000  # below this many vectors, an exact flat index
RETRAIN_GROWTH = 4.0
TRAIN_PER_CELL = 40  # k-means sample per cell (faiss warns below 39)
KMEANS_ITERATIONS = 10
READ_CHUNK = 50_000  # rows per batch when (re)building from the warehouse
DEFAULT_NPROBE = 32  # near-duplicate range search
SEARCH_NPROBE = 128  # top-k search: about 10 ms a query at 1M (benchmarks/search.py)
MAX_SEGMENTS = 8  # vector segments before an update merges them into one


def nlist_for(count: int) -> int:
    """Cells for `count` vectors: about sqrt(n), so a cell holds about sqrt(n) vectors."""
    return int(min(4096, max(64, round(np.sqrt(count)))))


def _slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_") or "model"


@dataclass(frozen=True)
class SyncReport:
    """What `VectorIndex.sync` did: vectors added, total held, whether it rebuilt, seconds."""

    added: int
    total: int
    rebuilt: bool
    seconds: float
    factory: str


def index_root(warehouse: Warehouse) -> Path:
    """Where the indexes of a warehouse live: beside the DuckDB file (`<file>.index`), or for
    the lake in its local folder (`lake.index`)."""
    if isinstance(warehouse, FileWarehouse):
        return warehouse.path.with_name(warehouse.path.name + ".index")
    return warehouse.local_dir / "lake.index"


class VectorIndex:
    """The index of one (model, kind, dimension) of one warehouse."""

    def __init__(self, warehouse: Warehouse, model_id: str, kind: str, dim: int) -> None:
        self.warehouse = warehouse
        self.model_id = model_id
        self.kind = kind
        self.dim = dim
        self.table = table_for(dim)
        root = index_root(warehouse)
        self.folder = root / f"{_slug(model_id)}__{kind}__d{dim}"
        self._index: faiss.Index | None = None
        self._ids: list[str] = []
        self._segments: list[np.ndarray] = []  # memory-mapped (rows, dim) float32, in row order
        self._starts: np.ndarray = np.zeros(1, dtype=np.int64)  # first row of each segment
        self._manifest: dict = {}
        self._verified_stamp: list | None = None  # warehouse files seen while the index was current

    # -- files -----------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    def _read_manifest(self) -> dict:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        same = (
            manifest.get("model_id") == self.model_id
            and manifest.get("kind") == self.kind
            and manifest.get("dim") == self.dim
        )
        return manifest if same else {}

    def _load(self) -> bool:
        """Load the files (under the shared lock) if they changed; False when there is none."""
        if not self.manifest_path.exists():
            return self._load_unlocked()
        with locking.hold(self.folder / "index", exclusive=False, timeout_s=600):
            return self._load_unlocked()

    def _forget(self) -> bool:
        self._index, self._ids, self._segments, self._manifest = None, [], [], {}
        self._starts = np.zeros(1, dtype=np.int64)
        return False

    def _load_unlocked(self) -> bool:
        manifest = self._read_manifest()
        if not manifest or "segments" not in manifest:  # none, or written before the segments
            return self._forget()
        if self._index is not None and manifest.get("written_at") == self._manifest.get(
            "written_at"
        ):
            self._manifest = manifest  # a re-stamp keeps the generation
            return True
        # Memory-mapped: a new process's first query pages in the cells it probes instead of
        # reading the whole file (0.5 GB at 1M). A mapped IVF index must never be added to
        # (faiss crashes): `sync` adds to a full copy it reads itself.
        index = faiss.read_index(str(self.folder / manifest["index_file"]), faiss.IO_FLAG_MMAP)
        ids = pq.read_table(self.folder / manifest["ids_file"]).column("image_id").to_pylist()
        segments = self._map_segments(manifest["segments"])
        rows = sum(len(segment) for segment in segments) if segments is not None else -1
        if not (index.ntotal == len(ids) == manifest["count"] == rows):
            return self._forget()
        self._index, self._ids, self._manifest = index, ids, manifest
        self._set_segments(segments or [])
        self._verified_stamp = None  # a stamp proves currency for the generation it was seen with
        return True

    def _map_segments(self, names: list[dict]) -> list[np.ndarray] | None:
        """The manifest's vector segments, memory-mapped read-only; None if one is missing or
        of the wrong size (then the generation is not usable)."""
        segments = []
        for entry in names:
            path = self.folder / entry["file"]
            rows = int(entry["rows"])
            try:
                if path.stat().st_size != rows * self.dim * 4:
                    return None
            except FileNotFoundError:
                return None
            if rows:
                segments.append(np.memmap(path, dtype=np.float32, mode="r", shape=(rows, self.dim)))
        return segments

    def _set_segments(self, segments: list[np.ndarray]) -> None:
        self._segments = segments
        self._starts = np.cumsum([0, *(len(segment) for segment in segments)], dtype=np.int64)

    def vectors(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """The stored float32 vectors of these index rows (the warehouse's values, read from
        the memory-mapped segments: only these rows are read)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        which = np.searchsorted(self._starts, rows, side="right") - 1
        for number in np.unique(which):
            mask = which == number
            out[mask] = self._segments[number][rows[mask] - self._starts[number]]
        return out

    def _save(
        self,
        index: faiss.Index,
        ids: list[str],
        trained_for: int,
        factory: str,
        segments: list[dict],
        warehouse_files: list | None,
    ) -> None:
        """Write index and ids under new names, then the manifest that points at them and at
        the vector `segments` (already written, under their own new names)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.time_ns()}"
        index_file, ids_file = f"vectors-{stamp}.faiss", f"ids-{stamp}.parquet"
        atomic_write(self.folder / index_file, lambda tmp: faiss.write_index(index, tmp))
        atomic_write(
            self.folder / ids_file,
            lambda tmp: pq.write_table(pa.table({"image_id": pa.array(ids, pa.string())}), tmp),
        )
        manifest = {
            "model_id": self.model_id,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(ids),
            "trained_for": trained_for,
            "factory": factory,
            "index_file": index_file,
            "ids_file": ids_file,
            "segments": segments,
            "written_at": stamp,
            "warehouse_files": warehouse_files,
        }
        atomic_write(self.manifest_path, lambda tmp: Path(tmp).write_text(json.dumps(manifest)))
        current = {index_file, ids_file, *(entry["file"] for entry in segments)}
        for old in self.folder.iterdir():  # earlier generations nobody points at any more
            if old.suffix in {".faiss", ".parquet", ".f32"} and old.name not in current:
                old.unlink(missing_ok=True)
        mapped = self._map_segments(segments)
        if mapped is None:
            raise RuntimeError(f"vector segments of {self.folder} do not match what was written")
        self._index, self._ids, self._manifest = index, ids, manifest
        self._set_segments(mapped)
        self._verified_stamp = warehouse_files

    def _write_segment(self, blocks) -> tuple[dict, list]:
        """Stream float32 (rows, dim) blocks (with their ids) into a new segment file; returns
        its manifest entry and the ids of its rows, in order."""
        name = f"rows-{time.time_ns()}.f32"
        ids: list[str] = []
        rows = 0

        def write(temporary: str) -> None:
            nonlocal rows
            with open(temporary, "wb") as out:
                for batch_ids, vectors in blocks:
                    out.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
                    ids.extend(batch_ids)
                    rows += len(vectors)
                out.flush()
                os.fsync(out.fileno())

        atomic_write(self.folder / name, write)
        return {"file": name, "rows": rows}, ids

    def _merged_segment(self) -> dict:
        """The loaded segments copied into one new file (so updates never pile up files)."""
        entry, _ = self._write_segment(
            ([], segment[start : start + READ_CHUNK])
            for segment in self._segments
            for start in range(0, len(segment), READ_CHUNK)
        )
        return entry

    # -- warehouse -------------------------------------------------------------------------

    def stored_count(self) -> int:
        if not has_table(self.warehouse, self.dim):
            return 0
        return int(
            self.warehouse.rows(
                f"SELECT count(*) FROM {self.table} WHERE model_id = ? AND kind = ?",
                [self.model_id, self.kind],
            )[0][0]
        )

    def _batches(self, sql: str, params: list, indexed: list[str] | None):
        """(ids, vectors) batches of a query over the embedding table, READ_CHUNK rows each."""
        with self.warehouse.reader() as conn:
            if indexed is not None:
                conn.register("indexed_ids", pa.table({"image_id": pa.array(indexed, pa.string())}))
            reader = conn.sql(sql, params=params).to_arrow_reader(READ_CHUNK)
            for batch in reader:
                ids = batch.column(0).to_pylist()
                flat = batch.column(1).flatten().to_numpy(zero_copy_only=False)
                yield ids, np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, self.dim)

    def _rebuild(self, total: int) -> tuple[faiss.Index, list[str], str, dict]:
        if total < IVF_FROM:
            factory = "Flat"
            index = faiss.IndexFlatIP(self.dim)
        else:
            nlist = nlist_for(total)
            factory = f"IVF{nlist},SQ8"
            sample = min(total, nlist * TRAIN_PER_CELL)
            train = np.concatenate(
                [
                    vectors
                    for _, vectors in self._batches(
                        f"SELECT image_id, embedding FROM {self.table}"
                        f" WHERE model_id = ? AND kind = ? USING SAMPLE reservoir({sample} ROWS)"
                        " REPEATABLE (7)",
                        [self.model_id, self.kind],
                        None,
                    )
                ]
            )
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFScalarQuantizer(
                quantizer,
                self.dim,
                nlist,
                faiss.ScalarQuantizer.QT_8bit,
                faiss.METRIC_INNER_PRODUCT,
            )
            index.cp.niter = KMEANS_ITERATIONS
            index.train(train)
            del train

        def added():
            for batch_ids, vectors in self._batches(
                f"SELECT image_id, embedding FROM {self.table} WHERE model_id = ? AND kind = ?",
                [self.model_id, self.kind],
                None,
            ):
                index.add(vectors)
                yield batch_ids, vectors

        segment, ids = self._write_segment(added())
        return index, ids, factory, segment

    def sync(self) -> SyncReport:
        """Bring the index up to date with the warehouse: add new rows, or rebuild."""
        started = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        with locking.hold(self.folder / "index", exclusive=True, timeout_s=600):
            files = warehouse_stamp(self.warehouse)  # before counting: a later write changes it
            total = self.stored_count()
            have = self._load_unlocked()
            index, ids = self._index, list(self._ids)
            trained_for = int(self._manifest.get("trained_for", 0))
            factory = str(self._manifest.get("factory", ""))
            if have:
                # Equal counts are no proof (a replaced warehouse): the ids must all be known.
                known = self._count_known(ids)
                if known == len(ids) == total:
                    self._restamp_unlocked(files)
                    return SyncReport(0, total, False, time.perf_counter() - started, factory)
                outgrown = factory == "Flat" and total >= IVF_FROM
                outgrown |= factory != "Flat" and total > RETRAIN_GROWTH * trained_for
                have = known == len(ids) and not outgrown
            if not have or index is None:
                index, ids, factory, segment = self._rebuild(total)
                self._save(index, ids, len(ids), factory, [segment], files)
                return SyncReport(len(ids), len(ids), True, time.perf_counter() - started, factory)
            # A full in-memory copy to add to (the loaded one is memory-mapped, read-only).
            index = faiss.read_index(str(self.folder / self._manifest["index_file"]))

            def new_rows():
                for batch_ids, vectors in self._batches(
                    f"SELECT t.image_id, t.embedding FROM {self.table} t"
                    " ANTI JOIN indexed_ids USING (image_id)"
                    " WHERE t.model_id = ? AND t.kind = ? ORDER BY t.image_id",
                    [self.model_id, self.kind],
                    ids,
                ):
                    index.add(vectors)
                    yield batch_ids, vectors

            segment, new_ids = self._write_segment(new_rows())
            ids.extend(new_ids)
            segments = [*self._manifest["segments"], segment]
            if len(segments) > MAX_SEGMENTS:
                self._set_segments(self._map_segments(segments) or [])
                segments = [self._merged_segment()]
            self._save(index, ids, trained_for, factory, segments, files)
            return SyncReport(len(new_ids), len(ids), False, time.perf_counter() - started, factory)

    def _restamp_unlocked(self, files: list | None) -> None:
        """Record (in the manifest, same generation) that the index is current for these
        warehouse files, so the next process skips the count; the caller holds the lock."""
        self._verified_stamp = files
        if files is None or not self._manifest or self._manifest.get("warehouse_files") == files:
            return
        manifest = {**self._manifest, "warehouse_files": files}
        atomic_write(self.manifest_path, lambda tmp: Path(tmp).write_text(json.dumps(manifest)))
        self._manifest = manifest

    def _count_known(self, ids: list[str]) -> int:
        """How many of the indexed ids the warehouse still holds for this model and kind."""
        with self.warehouse.reader() as conn:
            conn.register("indexed_ids", pa.table({"image_id": pa.array(ids, pa.string())}))
            row = conn.execute(
                f"SELECT count(*) FROM {self.table} t JOIN indexed_ids USING (image_id)"
                " WHERE t.model_id = ? AND t.kind = ?",
                [self.model_id, self.kind],
            ).fetchone()
        return int(row[0]) if row else 0

    # -- queries ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Sync only if the warehouse may have moved (a cheap check before each query)."""
        if not self.ready():
            self.sync()

    def ready(self) -> bool:
        """Loaded and holding exactly the warehouse's rows of this model and kind.

        Unchanged warehouse files since the index was last known current answer without opening
        the warehouse; otherwise the rows are counted (and a matching count is recorded)."""
        if not self._load():
            return False
        files = warehouse_stamp(self.warehouse)
        if files is not None and files in (
            self._verified_stamp,
            self._manifest.get("warehouse_files"),
        ):
            return True
        generation = self._manifest.get("written_at")
        if len(self._ids) != self.stored_count():
            return False
        self._verified_stamp = files
        if files is not None:
            try:
                with locking.hold(self.folder / "index", exclusive=True, timeout_s=1):
                    if self._load_unlocked() and self._manifest.get("written_at") == generation:
                        self._restamp_unlocked(files)
            except locking.LockTimeout:
                pass  # another process is updating the index: it records its own stamp
        return True

    @property
    def count(self) -> int:
        return len(self._ids)

    @property
    def factory(self) -> str:
        return str(self._manifest.get("factory", ""))

    def _set_nprobe(self, nprobe: int) -> None:
        if self._index is not None and hasattr(self._index, "nprobe"):
            faiss.extract_index_ivf(self._index).nprobe = int(nprobe)

    def search(
        self, queries: np.ndarray, k: int, *, nprobe: int = DEFAULT_NPROBE
    ) -> tuple[list[list[str]], np.ndarray]:
        """Approximate top-k image ids per query row and their (approximate) inner products."""
        rows, scores = self.search_rows(queries, k, nprobe=nprobe)
        return [[self._ids[r] for r in row] for row in rows], scores

    def search_rows(
        self, queries: np.ndarray, k: int, *, nprobe: int = DEFAULT_NPROBE
    ) -> tuple[list[list[int]], np.ndarray]:
        """Like `search`, with index row numbers (for `vectors` and `id_of`) instead of ids."""
        if not self._load() or self._index is None:
            raise RuntimeError(f"no index in {self.folder}: call sync() first")
        self._set_nprobe(nprobe)
        scores, rows = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [[int(r) for r in row if r >= 0] for row in rows], scores

    def id_of(self, row: int) -> str:
        return self._ids[row]

    def range_search(
        self, queries: np.ndarray, threshold: float, *, nprobe: int = DEFAULT_NPROBE
    ) -> list[list[str]]:
        """Per query row, the ids whose approximate inner product is above `threshold`."""
        if not self._load() or self._index is None:
            raise RuntimeError(f"no index in {self.folder}: call sync() first")
        self._set_nprobe(nprobe)
        limits, _, rows = self._index.range_search(
            np.ascontiguousarray(queries, dtype=np.float32), float(threshold)
        )
        return [
            [self._ids[r] for r in rows[limits[i] : limits[i + 1]]] for i in range(len(queries))
        ]


_OPEN: dict[tuple[str, str, str, int], VectorIndex] = {}
OPEN_MAX = 4  # indexes kept loaded per process (one 1M x 512 SQ8 index is about 0.5 GB)


def open_index(warehouse: Warehouse, model_id: str, kind: str, dim: int) -> VectorIndex:
    """The process's loaded index of (warehouse, model, kind, dim): repeated searches from one
    process (a notebook, a service) skip re-reading the files, which `_load` still re-reads
    whenever another process has written a newer generation."""
    key = (warehouse.key, model_id, kind, dim)
    index = _OPEN.pop(key, None)
    if index is None:
        index = VectorIndex(warehouse, model_id, kind, dim)
        while len(_OPEN) >= OPEN_MAX:
            _OPEN.pop(next(iter(_OPEN)))  # the least recently used
    _OPEN[key] = index
    return index
