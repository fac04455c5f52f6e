"""Search and near-duplicate speed over synthetic 512-d embeddings in a real DuckDB warehouse.

Per collection size N (default 100k and 1M), one run generates N clustered unit vectors (a
mixture of 2,000 centres, so cells and neighbours exist as in real embeddings; real CLIP data may
give other recall), loads them into the pipeline's `clip_embeddings_d512` table, and measures:

- search, one query at a time, top 10, each with recall@10 against exact search (a blocked numpy
  matrix multiply over all N vectors: the ground truth):
  * `sql exact`: today's brute force (`core.search.query.exact_search`: one DuckDB query,
    `array_cosine_similarity` over every row, ORDER BY ... LIMIT) -- the baseline;
  * `numpy flat`: the exact matrix multiply itself, all vectors in RAM, one query at a time;
  * `faiss IVF<nlist>,Flat`: full-precision cells in RAM (build = train + add), several nprobe;
  * `index IVF<nlist>,SQ8`: the index kept beside the warehouse (`core.search.index`, 8-bit
    codes; build = `VectorIndex.sync()` from the warehouse), several nprobe;
  * `index + exact rescore`: `core.search.query.index_search`, what `python -m core.search`
    runs above EXACT_MAX vectors (4 x k candidates re-scored exactly from the float32 vectors
    kept beside the index);
  * `search() end to end`: `core.search.search(vector=..., method="index")`, the whole query
    but the text embedding: model pick, index freshness check, index search, re-score, paths
    from an `images` table of N rows (written for this row), labels (no task tables here);
  * `index_open_ms`: a fresh process's first query also loads the index files (timed once);
- the `no_near_duplicates` check for a drop of D new images (default 10,000) with planted copies
  of stored images and pairs inside the drop:
  * `check`: `near_duplicate_pairs` as the check calls it (method `auto`, which picks the index
    at this size), the index update with the drop's vectors included;
  * `exact blocked matmul`: numpy, a sample of the drop x (stored + drop) in blocks, its time
    scaled to D (named as such); its pairs are the ground truth for the check's recall;
  * `sql join`: the exact DuckDB join, pairs/s measured on a small drop and scaled to D x N.

The machine is shared (2 cores, other processes running): the JSON records the load average
before and after each size, and every time is one run, not a best-of.

python benchmarks/search.py --sizes 100000 1000000 --out data/bench/search.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.clip.near_duplicates import near_duplicate_pairs
from core.clip.store import ensure_table, table_for, write_embeddings
from core.search.index import DEFAULT_NPROBE, TRAIN_PER_CELL, VectorIndex, nlist_for
from core.search.query import Query, StoredModel, exact_search, index_search, search
from core.warehouse import Warehouse

DIM = 512
MODEL = "synthetic/bench"
CENTRES = 2000
CHUNK = 50_000
THRESHOLD = 0.98
NOISE = 1.0  # per dimension around a centre: cosine within a cluster about 0.5
K = 10


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def generate(n: int, seed: int, centres_seed: int = 11) -> np.ndarray:
    """(n, DIM) float32 unit vectors around the CENTRES random centres of `centres_seed` (the
    same centres for the collection, the queries and the drop), made in chunks."""
    middle = np.random.default_rng(centres_seed).standard_normal((CENTRES, DIM), dtype=np.float32)
    rng = np.random.default_rng([centres_seed, seed])
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        block = out[start:stop]
        rng.standard_normal(block.shape, dtype=np.float32, out=block)
        block *= NOISE
        block += middle[rng.integers(0, CENTRES, stop - start)]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


def ids_for(start: int, count: int, prefix: str = "s") -> list[str]:
    return [f"{prefix}{i:08d}" for i in range(start, start + count)]


def load(warehouse: Warehouse, vectors: np.ndarray) -> float:
    """Bulk-load stored vectors into the pipeline's table: one transaction, one INSERT that
    streams CHUNK-row Arrow batches (the pipeline's own `write_embeddings` adds per-batch
    conflict checks a fresh synthetic table does not need)."""
    n = len(vectors)

    def batches() -> Iterator[pa.RecordBatch]:
        for start in range(0, n, CHUNK):
            block = vectors[start : start + CHUNK]
            yield pa.record_batch(
                {
                    "image_id": pa.array(ids_for(start, len(block)), pa.string()),
                    "embedding": pa.FixedSizeListArray.from_arrays(
                        pa.array(block.reshape(-1)), DIM
                    ),
                }
            )

    schema = pa.schema([("image_id", pa.string()), ("embedding", pa.list_(pa.float32(), DIM))])
    started = time.perf_counter()
    with warehouse.transaction() as conn:
        table = ensure_table(conn, DIM)
        conn.register("stored", pa.RecordBatchReader.from_batches(schema, batches()))
        conn.execute(
            f"INSERT INTO {table} SELECT image_id, ?, 'global', ?, embedding, now() FROM stored",
            [MODEL, DIM],
        )
        conn.unregister("stored")
    return time.perf_counter() - started


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k row numbers per query: blocked matrix multiply over all vectors."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(vectors), CHUNK):
        scores = queries @ vectors[start : start + CHUNK].T
        rows = np.arange(start, start + scores.shape[1])[None, :].repeat(len(queries), 0)
        scores = np.concatenate([best_scores, scores], axis=1)
        rows = np.concatenate([best_rows, rows], axis=1)
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, keep, 1)
        best_rows = np.take_along_axis(rows, keep, 1)
    return best_rows


def recall_rows(found: Sequence[Sequence[int]], truth: np.ndarray) -> float:
    hits = [
        len(set(map(int, row)) & set(want.tolist())) for row, want in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits) / truth.shape[1])


def recall_ids(found: Sequence[Sequence[str]], truth: np.ndarray) -> float:
    return recall_rows([[int(i[1:]) for i in row if i.startswith("s")] for row in found], truth)


def timed(fn, queries: np.ndarray) -> tuple[float, list]:
    """Median ms of `fn(query)` over the queries, one at a time; and the results."""
    times, results = [], []
    for q in queries:
        started = time.perf_counter()
        results.append(fn(q))
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times), results


def row(method: str, kind: str, median_ms: float, recall: float, build_s: float | None) -> dict:
    return {
        "method": method,
        "kind": kind,
        "query_median_ms": round(median_ms, 2),
        "recall_at_10": round(recall, 3),
        "build_s": None if build_s is None else round(build_s, 1),
    }


def search_rows(warehouse: Warehouse, vectors: np.ndarray, args) -> tuple[list[dict], dict]:
    n = len(vectors)
    model = StoredModel(MODEL, DIM, n)
    queries = generate(args.recall_queries, seed=77)
    truth = exact_top(vectors, queries, K)
    rows = []

    sql_ms, hits = timed(
        lambda q: exact_search(warehouse, model, Query(q), K), queries[: args.queries]
    )
    found = [[image_id for image_id, _ in h] for h in hits]
    rows.append(
        row(
            "sql exact (core.search exact_search)",
            "baseline",
            sql_ms,
            recall_ids(found, truth[: args.queries]),
            None,
        )
    )

    def numpy_flat(q: np.ndarray) -> np.ndarray:
        scores = np.concatenate([vectors[s : s + CHUNK] @ q for s in range(0, n, CHUNK)])
        return np.argpartition(-scores, K - 1)[:K]

    flat_ms, found = timed(numpy_flat, queries[: args.queries])
    rows.append(
        row(
            "numpy flat matmul, vectors in RAM (no DB)",
            "exact",
            flat_ms,
            recall_rows(found, truth[: args.queries]),
            None,
        )
    )

    nlist = nlist_for(n)
    started = time.perf_counter()
    quantizer = faiss.IndexFlatIP(DIM)
    ivf = faiss.IndexIVFFlat(quantizer, DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    sample = np.random.default_rng(3).choice(n, min(n, nlist * TRAIN_PER_CELL), replace=False)
    ivf.train(vectors[np.sort(sample)])
    ivf.add(vectors)
    ivf_build = time.perf_counter() - started
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        ms, found = timed(lambda q, ivf=ivf: ivf.search(q[None, :], K)[1][0], queries)
        rows.append(
            row(
                f"faiss IVF{nlist},Flat nprobe={nprobe} (RAM)",
                "approximate",
                ms,
                recall_rows(found, truth),
                ivf_build,
            )
        )
    del ivf, quantizer
    gc.collect()

    index = VectorIndex(warehouse, MODEL, "global", DIM)
    report = index.sync()
    for nprobe in args.nprobe:
        ms, found = timed(
            lambda q, nprobe=nprobe: index.search(q[None, :], K, nprobe=nprobe)[0][0], queries
        )
        rows.append(
            row(
                f"index {report.factory} nprobe={nprobe} (beside the warehouse)",
                "approximate",
                ms,
                recall_ids(found, truth),
                report.seconds,
            )
        )
    ms, hits = timed(lambda q: index_search(warehouse, model, Query(q), K), queries)
    rows.append(
        row(
            "index + exact rescore (core.search index_search, nprobe=128)",
            "approximate",
            ms,
            recall_ids([[i for i, _ in h] for h in hits], truth),
            report.seconds,
        )
    )
    add_image_rows(warehouse)
    ms, frames = timed(lambda q: search(warehouse, vector=q, k=K, method="index"), queries)
    rows.append(
        row(
            "search() end to end, method=index (query vector given: no text embedding)",
            "approximate",
            ms,
            recall_ids([frame["image_id"].to_list() for frame in frames], truth),
            report.seconds,
        )
    )
    started = time.perf_counter()
    fresh = VectorIndex(warehouse, MODEL, "global", DIM)  # as a new process finds the files
    assert fresh.ready()
    open_ms = 1000 * (time.perf_counter() - started)
    info = {
        "index_open_ms": round(open_ms, 1),
        "index_factory": report.factory,
        "index_build_s": round(report.seconds, 1),
        "index_bytes": sum(
            p.stat().st_size for p in index.folder.iterdir() if p.suffix in {".faiss", ".parquet"}
        ),
        "rescore_vectors_bytes": sum(p.stat().st_size for p in index.folder.glob("*.f32")),
    }
    return rows, info


def add_image_rows(warehouse: Warehouse) -> None:
    """An `images` row per stored vector, so the paths lookup of `search()` runs against a
    table of the collection's size (the pipeline writes one per ingested image)."""
    with warehouse.transaction() as conn:
        conn.execute(
            "INSERT INTO images SELECT image_id, 1, 'JPEG', 'RGB', 8, 8, NULL, 1, NULL, [],"
            f" 'bench', image_id || '.jpg', now() FROM {table_for(DIM)} ON CONFLICT DO NOTHING"
        )


def plant_drop(
    warehouse: Warehouse, vectors: np.ndarray, drop: int
) -> tuple[list[str], np.ndarray]:
    """A drop of `drop` new images (drop_id 'new'): 2% noisy copies of stored images, 1% pairs
    inside the drop, at cosines spread over about 0.975-0.999 (some just below THRESHOLD);
    written as the pipeline writes them (image_files rows, write_embeddings)."""
    rng = np.random.default_rng(999)
    new = generate(drop, seed=1234)
    copies, inner = max(1, drop // 50), max(1, drop // 100)

    def near(originals: np.ndarray) -> np.ndarray:
        sigma = rng.uniform(0.002, 0.0095, (len(originals), 1)).astype(np.float32)
        noisy = originals + sigma * rng.standard_normal(originals.shape, dtype=np.float32)
        return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)

    new[:copies] = near(vectors[rng.choice(len(vectors), copies, replace=False)])
    new[copies : copies + inner] = near(new[copies + inner : copies + 2 * inner])
    ids = ids_for(0, drop, "n")
    now = datetime.now(UTC)
    with warehouse.transaction() as conn:
        conn.executemany(
            "INSERT INTO image_files (drop_id, path, image_id, is_duplicate, byte_size, mtime_ns,"
            " ingested_at) VALUES ('new', ?, ?, false, 1, 0, ?)",
            [[f"new/{image_id}.jpg", image_id, now] for image_id in ids],
        )
        write_embeddings(conn, ids, new, model_id=MODEL, kind="global")
    return ids, new


def exact_pairs(
    vectors: np.ndarray, ids: list[str], new: np.ndarray, sample: int
) -> tuple[set, float]:
    """Exact pairs of the first `sample` drop images at >= THRESHOLD (blocked matmul against the
    stored vectors and the whole drop); and the matmul's seconds."""
    mine = new[:sample]
    pairs: set = set()
    started = time.perf_counter()
    for start in range(0, len(vectors), CHUNK):
        r, c = np.nonzero(mine @ vectors[start : start + CHUNK].T >= THRESHOLD)
        pairs |= {
            (ids[i], f"s{start + j:08d}") for i, j in zip(r.tolist(), c.tolist(), strict=True)
        }
    r, c = np.nonzero(mine @ new.T >= THRESHOLD)
    pairs |= {
        (min(ids[i], ids[j]), max(ids[i], ids[j]))
        for i, j in zip(r.tolist(), c.tolist(), strict=True)
        if i != j
    }
    return pairs, time.perf_counter() - started


def near_duplicate_block(warehouse: Warehouse, vectors: np.ndarray, args, workdir: Path) -> dict:
    n = len(vectors)
    started = time.perf_counter()
    ids, new = plant_drop(warehouse, vectors, args.drop)
    write_s = time.perf_counter() - started
    sample = min(args.exact_sample, args.drop)
    truth, exact_s = exact_pairs(vectors, ids, new, sample)
    sampled = set(ids[:sample])
    runs = []
    for number, nprobe in enumerate([DEFAULT_NPROBE, *args.check_nprobe]):
        if number and nprobe == DEFAULT_NPROBE:
            continue
        started = time.perf_counter()
        pairs = near_duplicate_pairs(
            warehouse, "new", model_id=MODEL, dim=DIM, threshold=THRESHOLD, nprobe=nprobe
        )
        seconds = time.perf_counter() - started
        found = {
            (a, b)
            for a, b in pairs.select("image_id", "other_image_id").rows()
            if a in sampled or b in sampled
        }
        runs.append(
            {
                "nprobe": nprobe,
                "default": nprobe == DEFAULT_NPROBE,
                "includes_index_update": number == 0,
                "check_s": round(seconds, 1),
                "pairs_found": pairs.height,
                "found_pairs_in_sample": len(found & truth),
                "false_pairs_in_sample": len(found - truth),
                "recall_vs_exact": round(len(found & truth) / len(truth), 4) if truth else None,
            }
        )
    # The SQL join, pairs/s on a small warehouse (100 new x sql_stored), scaled to drop x N.
    small = Warehouse(workdir / f"sql{n}.duckdb")
    stored_small = min(n, args.sql_stored)
    load(small, vectors[:stored_small])
    plant_drop(small, vectors[:stored_small], 100)
    started = time.perf_counter()
    near_duplicate_pairs(small, "new", model_id=MODEL, dim=DIM, threshold=THRESHOLD, method="sql")
    sql_s = time.perf_counter() - started
    pairs_per_s = 100 * (stored_small + 100) / sql_s
    return {
        "drop": args.drop,
        "stored": n,
        "threshold": THRESHOLD,
        "drop_write_s": round(write_s, 1),
        "check_s": runs[0]["check_s"],
        "check_method": f"index {DEFAULT_NPROBE=} (auto), index update for the drop included",
        "recall_vs_exact": runs[0]["recall_vs_exact"],
        "exact_sample": sample,
        "exact_pairs_in_sample": len(truth),
        "check_runs": runs,
        "exact_blocked_matmul_s_scaled_to_drop": round(exact_s * args.drop / sample, 1),
        "sql_join_pairs_per_s": round(pairs_per_s),
        "sql_join_s_scaled_to_drop": round(args.drop * (n + args.drop) / pairs_per_s),
    }


def run_size(n: int, args, workdir: Path) -> dict:
    load_before = load_average()
    print(f"-- N = {n:,}: generating and loading vectors (load {load_before})", flush=True)
    started = time.perf_counter()
    vectors = generate(n, seed=11)
    generate_s = time.perf_counter() - started
    warehouse = Warehouse(workdir / f"bench{n}.duckdb")
    load_s = load(warehouse, vectors)
    assert warehouse.rows(f"SELECT count(*) FROM {table_for(DIM)}")[0][0] == n
    print(f"-- N = {n:,}: search", flush=True)
    rows, info = search_rows(warehouse, vectors, args)
    print(f"-- N = {n:,}: near-duplicate check, drop of {args.drop:,}", flush=True)
    near = near_duplicate_block(warehouse, vectors, args, workdir)
    return {
        "n": n,
        "dim": DIM,
        "generate_s": round(generate_s, 1),
        "load_into_duckdb_s": round(load_s, 1),
        **info,
        "search": rows,
        "near_duplicates": near,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def print_table(results: dict) -> None:
    for result in results["results"]:
        print(
            f"\nN = {result['n']:,} x {result['dim']}-d: generated in {result['generate_s']} s,"
            f" loaded into DuckDB in {result['load_into_duckdb_s']} s; load average"
            f" {result['load_average_before']} -> {result['load_average_after']}"
        )
        print(f"{'method':<62} {'kind':<11} {'ms/query':>9} {'recall@10':>9} {'build s':>8}")
        for r in result["search"]:
            build = "" if r["build_s"] is None else r["build_s"]
            print(
                f"{r['method']:<62} {r['kind']:<11} {r['query_median_ms']:>9}"
                f" {r['recall_at_10']:>9} {build:>8}"
            )
        near = result["near_duplicates"]
        print(f"near-duplicate check, drop of {near['drop']:,} against {result['n']:,} stored:")
        for key, value in near.items():
            if key != "check_runs":
                print(f"  {key:<40} {value}")
        for run in near["check_runs"]:
            print(f"  run: {run}")
    print(f"peak RSS {results['peak_rss_mb']} MB; cores {results['cpu_count']}")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--drop", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=5, help="timed exact (SQL, numpy) queries")
    parser.add_argument("--recall-queries", type=int, default=100)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument(
        "--check-nprobe", type=int, nargs="*", default=[], help="near-duplicate check re-runs"
    )
    parser.add_argument("--exact-sample", type=int, default=1000)
    parser.add_argument("--sql-stored", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="search-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "note": "one run per number: times move with the machine's load, see"
        " load_average_before/after per size",
        "cpu_count": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "results": [],
    }
    try:
        for n in args.sizes:
            results["results"].append(run_size(n, args, workdir))
            gc.collect()
            if args.out:  # after each size: a long run that stops later keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=2))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print_table(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
