"""Search and near-duplicate speed over synthetic 512-d embeddings in a real DuckDB warehouse.

Per collection size N (default 100k and 1M), one run writes N clustered unit vectors (a mixture
of 2,000 centres, so cells and neighbours exist as in real embeddings; real CLIP data may give
other recall) into `clip_embeddings_d512` and measures:

- search, one query at a time, top 10:
  * baseline `sql`: today's brute force, `array_cosine_similarity` over every row, ORDER BY LIMIT;
  * `index`: the faiss IVF-SQ8 index beside the warehouse (`core.search.index`), approximate
    scores, at several `nprobe`; and `index+rescore`: `core.search.query.index_search`, what
    `python -m core.search` runs above EXACT_MAX vectors (candidates re-scored from DuckDB);
  * recall@10 of each against exact search (blocked numpy matrix multiply over all N);
- the `no_near_duplicates` check for a drop of D new images (default 10,000) with planted copies:
  * `index`: `near_duplicate_pairs(method="index")`, including the index update for the drop;
  * `exact blocked matmul`: numpy, drop x stored in blocks, timed on a sample of the drop and
    scaled to D (named as such);
  * `sql join`: today's check, pairs/s measured on a small drop and scaled to D x N;
  * recall of `index` against the exact pairs of the sampled drop images.

python benchmarks/search.py --sizes 100000 1000000 --out data/bench/search.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.clip.near_duplicates import near_duplicate_pairs
from core.clip.store import write_embeddings
from core.search.index import VectorIndex
from core.search.query import Query, StoredModel, exact_search, index_search
from core.warehouse import Warehouse

DIM = 512
MODEL = "synthetic/bench"
CENTRES = 2000
CHUNK = 50_000
THRESHOLD = 0.98
NOISE = 1.0  # per dimension around a centre: cosine within a cluster about 0.5


def centres(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((CENTRES, DIM)).astype(np.float32)


def chunk_vectors(middle: np.ndarray, seed: int, index: int, n: int) -> np.ndarray:
    """Chunk `index` of the collection, regenerated identically whenever asked."""
    rng = np.random.default_rng([seed, index])
    x = middle[rng.integers(0, CENTRES, n)] + NOISE * rng.standard_normal((n, DIM)).astype(
        np.float32
    )
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def chunks(n: int):
    for start in range(0, n, CHUNK):
        yield start // CHUNK, start, min(CHUNK, n - start)


def ids_for(start: int, count: int, prefix: str = "s") -> list[str]:
    return [f"{prefix}{i:08d}" for i in range(start, start + count)]


def build(warehouse: Warehouse, middle: np.ndarray, seed: int, n: int) -> float:
    started = time.perf_counter()
    for number, start, count in chunks(n):
        with warehouse.transaction() as conn:
            write_embeddings(
                conn,
                ids_for(start, count),
                chunk_vectors(middle, seed, number, count),
                model_id=MODEL,
                kind="global",
            )
    return time.perf_counter() - started


def exact_top(middle, seed, n, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exact top-k row numbers per query by blocked matrix multiply; and its seconds."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), k), dtype=np.int64)
    compute = 0.0
    for number, start, count in chunks(n):
        block = chunk_vectors(middle, seed, number, count)
        started = time.perf_counter()
        scores = queries @ block.T
        scores = np.concatenate([best_scores, scores], axis=1)
        rows = np.concatenate(
            [best_rows, np.arange(start, start + count)[None, :].repeat(len(queries), 0)], axis=1
        )
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, keep, 1)
        best_rows = np.take_along_axis(rows, keep, 1)
        compute += time.perf_counter() - started
    return best_rows, compute


def recall(found: list[list[str]], truth: np.ndarray) -> float:
    hits = [
        len({int(i[1:]) for i in row if i.startswith("s")} & set(want.tolist()))
        for row, want in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits) / truth.shape[1])


def plant_drop(warehouse, middle, seed, n, drop: int) -> tuple[list[str], np.ndarray]:
    """A drop of `drop` new images: 2% copies of stored images, 1% pairs inside the drop."""
    rng = np.random.default_rng([seed, 999])
    vectors = chunk_vectors(middle, seed + 1, 0, drop)
    copies = max(1, drop // 50)
    sources = rng.choice(n, copies, replace=False)
    for j, source in enumerate(sources):
        number, offset = divmod(int(source), CHUNK)
        base = chunk_vectors(middle, seed, number, min(CHUNK, n - number * CHUNK))[offset]
        noisy = base + 0.004 * rng.standard_normal(DIM).astype(np.float32)
        vectors[j] = noisy / np.linalg.norm(noisy)
    inner = max(1, drop // 100)
    for j in range(inner):
        noisy = vectors[copies + inner + j] + 0.004 * rng.standard_normal(DIM).astype(np.float32)
        vectors[copies + j] = noisy / np.linalg.norm(noisy)
    ids = ids_for(0, drop, "n")
    now = datetime.now(UTC)
    with warehouse.transaction() as conn:
        conn.executemany(
            "INSERT INTO image_files VALUES ('new', ?, ?, false, 1, 0, ?)",
            [[f"new/{image_id}.jpg", image_id, now] for image_id in ids],
        )
        write_embeddings(conn, ids, vectors, model_id=MODEL, kind="global")
    return ids, vectors


def exact_pairs(middle, seed, n, ids, vectors, sample: int) -> tuple[set, float]:
    """Exact pairs (sampled drop image, other) at >= THRESHOLD, by blocked matmul; seconds."""
    mine = vectors[:sample]
    pairs: set = set()
    compute = 0.0
    for number, start, count in chunks(n):
        block = chunk_vectors(middle, seed, number, count)
        started = time.perf_counter()
        rows, cols = np.nonzero(mine @ block.T >= THRESHOLD)
        compute += time.perf_counter() - started
        pairs |= {(ids[r], f"s{start + c:08d}") for r, c in zip(rows, cols, strict=True)}
    started = time.perf_counter()
    rows, cols = np.nonzero(mine @ vectors.T >= THRESHOLD)
    compute += time.perf_counter() - started
    for r, c in zip(rows, cols, strict=True):
        if r != c:
            pairs.add((min(ids[r], ids[c]), max(ids[r], ids[c])))
    return pairs, compute


def run_size(n: int, args, workdir: Path) -> dict:
    seed = 11
    middle = centres(seed)
    warehouse = Warehouse(workdir / f"bench{n}.duckdb")
    print(f"-- N = {n:,}: writing vectors", flush=True)
    write_s = build(warehouse, middle, seed, n)
    model = StoredModel(MODEL, DIM, n)
    rng = np.random.default_rng(5)
    queries = chunk_vectors(middle, seed + 7, 0, args.recall_queries)
    truth, exact_s = exact_top(middle, seed, n, queries, 10)
    out: dict = {"n": n, "write_s": round(write_s, 1), "search": [], "near_duplicates": {}}

    sql_times = []
    for q in queries[: args.queries]:
        started = time.perf_counter()
        exact_search(warehouse, model, Query(q), 10)
        sql_times.append(time.perf_counter() - started)
    sql_hits = [[i for i, _ in exact_search(warehouse, model, Query(q), 10)] for q in queries[:5]]
    out["search"].append(
        {
            "method": "sql brute force (baseline)",
            "median_ms": round(1000 * statistics.median(sql_times), 1),
            "recall@10": round(recall(sql_hits, truth[:5]), 3),
        }
    )
    out["search"].append(
        {
            "method": "numpy exact, vectors in RAM (blocked; no DB)",
            "median_ms": round(1000 * exact_s / len(queries), 1),
            "recall@10": 1.0,
            "note": "batched over all recall queries, per-query average",
        }
    )
    index = VectorIndex(warehouse, MODEL, "global", DIM)
    report = index.sync()
    out["index_build_s"] = round(report.seconds, 1)
    out["index_factory"] = report.factory
    out["index_bytes"] = sum(p.stat().st_size for p in index.folder.iterdir())
    for nprobe in args.nprobe:
        times, found = [], []
        for q in queries:
            started = time.perf_counter()
            row, _ = index.search(q[None, :], 10, nprobe=nprobe)
            times.append(time.perf_counter() - started)
            found.append(row[0])
        out["search"].append(
            {
                "method": f"index {report.factory} nprobe={nprobe}",
                "median_ms": round(1000 * statistics.median(times), 2),
                "recall@10": round(recall(found, truth), 3),
            }
        )
    times, found = [], []
    for q in queries:
        started = time.perf_counter()
        hits = index_search(warehouse, model, Query(q), 10)
        times.append(time.perf_counter() - started)
        found.append([i for i, _ in hits])
    out["search"].append(
        {
            "method": "index + exact rescore (core.search, nprobe=128)",
            "median_ms": round(1000 * statistics.median(times), 1),
            "recall@10": round(recall(found, truth), 3),
        }
    )
    del rng

    print(f"-- N = {n:,}: near-duplicate check, drop of {args.drop:,}", flush=True)
    ids, vectors = plant_drop(warehouse, middle, seed, n, args.drop)
    started = time.perf_counter()
    update = index.sync()
    update_s = time.perf_counter() - started
    started = time.perf_counter()
    pairs = near_duplicate_pairs(
        warehouse, "new", model_id=MODEL, dim=DIM, threshold=THRESHOLD, method="index"
    )
    check_s = time.perf_counter() - started
    sample = min(args.exact_sample, args.drop)
    truth_pairs, exact_pairs_s = exact_pairs(middle, seed, n, ids, vectors, sample)
    sampled = set(ids[:sample])
    found_pairs = {
        (a, b)
        for a, b in pairs.select("image_id", "other_image_id").rows()
        if a in sampled or (b in sampled and b.startswith("n"))
    }
    truth_in_sample = {p for p in truth_pairs}
    hit = len(found_pairs & truth_in_sample)
    # SQL join: pairs/s on a small drop of 100 images, scaled to drop x N
    small = Warehouse(workdir / f"sql{n}.duckdb")
    stored_small = min(n, args.sql_stored)
    build(small, middle, seed, stored_small)
    plant_drop(small, middle, seed, stored_small, 100)
    started = time.perf_counter()
    near_duplicate_pairs(small, "new", model_id=MODEL, dim=DIM, threshold=THRESHOLD, method="sql")
    sql_s = time.perf_counter() - started
    pairs_per_s = 100 * (stored_small + 100) / sql_s
    out["near_duplicates"] = {
        "drop": args.drop,
        "index_update_s (drop's vectors added)": round(update_s, 1),
        "index_check_s (up-to-date sync + range search + exact rescore)": round(check_s, 1),
        "pairs_found": pairs.height,
        "exact_blocked_matmul_s (scaled from sample)": round(exact_pairs_s * args.drop / sample, 1),
        "exact_sample": sample,
        "exact_pairs_in_sample": len(truth_in_sample),
        "recall_vs_exact": round(hit / len(truth_in_sample), 4) if truth_in_sample else None,
        "sql_pairs_per_s": round(pairs_per_s),
        "sql_join_s (scaled)": round(args.drop * (n + args.drop) / pairs_per_s),
        "update_added": update.added,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--drop", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=5, help="timed one-by-one SQL queries")
    parser.add_argument("--recall-queries", type=int, default=100)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--exact-sample", type=int, default=1000)
    parser.add_argument("--sql-stored", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="search-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n in args.sizes:
            results.append(run_size(n, args, workdir))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for result in results:
        print(
            f"\nN = {result['n']:,} x 512-d ({result['index_factory']}, index build "
            f"{result['index_build_s']} s, {result['index_bytes'] / 1e6:.0f} MB on disk)"
        )
        print(f"{'method':<52} {'median ms/query':>16} {'recall@10':>10}")
        for row in result["search"]:
            print(f"{row['method']:<52} {row['median_ms']:>16} {row['recall@10']:>10}")
        print(f"near-duplicate check, drop of {result['near_duplicates']['drop']:,}:")
        for key, value in result["near_duplicates"].items():
            print(f"  {key:<66} {value}")
    print(f"peak RSS {peak_mb:.0f} MB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"results": results, "peak_rss_mb": round(peak_mb)}, indent=2)
        )


if __name__ == "__main__":
    main()
