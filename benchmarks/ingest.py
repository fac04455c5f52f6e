"""Ingestion throughput: ours vs a naive loop vs the decode-only ceiling, plus re-scan time and RSS.

Generates N distinct JPEGs (a mix of 640x480 and 4000x3000), ingests them with the asset's code
path (`DropIngestor`) in a fresh process, re-scans the unchanged drop, and compares with:
- naive: one file at a time: read, SHA-256, full decode, one INSERT per file;
- ceiling: hashing and validating decodes in our thread pool with no database at all.
Prints a table and writes JSON (`--out`). Usage: python benchmarks/ingest.py [--files N] [--out F]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import multiprocessing
import os
import platform
import resource
import struct
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import print_table, write_json

SIZES = {"small": (640, 480), "large": (4000, 3000)}


def _base_jpeg(width: int, height: int, seed: int) -> bytes:
    """A photo-like picture: smooth gradients plus mild noise, so JPEG sizes are realistic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        127 + 100 * np.sin(x / (40 + 13 * c + seed) + c) * np.cos(y / (55 + 7 * c))
        for c in range(3)
    ]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 6, size=(height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def _with_comment(jpeg: bytes, text: str) -> bytes:
    """The same picture under different bytes: a COM segment right after SOI."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def generate(folder: Path, files: int, large_fraction: float) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    bases = {kind: [_base_jpeg(w, h, seed) for seed in range(4)] for kind, (w, h) in SIZES.items()}
    large_every = round(1 / large_fraction) if large_fraction > 0 else 0
    counts = {"small": 0, "large": 0}
    for index in range(files):
        kind = "large" if large_every and index % large_every == 0 else "small"
        data = _with_comment(bases[kind][index % 4], f"benchmark file {index}")
        (folder / f"{index:06d}_{kind}.jpg").write_bytes(data)
        counts[kind] += 1
    return counts


def peak_rss_mb() -> float:
    """High-water RSS of this process image: /proc's VmHWM restarts at exec, unlike ru_maxrss,
    which a spawned child inherits from its parent's fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _ingest_child(db: str, root: str, drop: str, queue: multiprocessing.Queue) -> None:
    from core.ingest.ingest import DropIngestor
    from core.ingest.scan import DropRef
    from core.warehouse import Warehouse

    ingestor = DropIngestor(
        Warehouse(db), Path(root), log=lambda line: print(f"  {line}", flush=True)
    )
    first = ingestor.ingest(DropRef.folder(drop))
    started = time.perf_counter()
    rescan = ingestor.ingest(DropRef.folder(drop))
    rescan_s = time.perf_counter() - started
    queue.put(
        {
            "files": first.files_seen,
            "ingest_s": first.seconds,
            "rejected": sum(first.rejected.values()),
            "rescan_s": rescan_s,
            "rescan_processed": rescan.files_processed,
            "peak_rss_mb": peak_rss_mb(),
        }
    )


def measure_ours(db: Path, root: Path, drop: str) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_ingest_child, args=(str(db), str(root), drop, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def representative_sample(paths: list[Path], size: int) -> list[Path]:
    """Evenly spread picks of each size class, in the drop's proportions."""
    sample: list[Path] = []
    for kind in SIZES:
        members = [p for p in paths if p.stem.endswith(kind)]
        take = min(len(members), max(1, round(size * len(members) / len(paths)))) if members else 0
        if take:
            step = len(members) / take
            sample += [members[int(i * step)] for i in range(take)]
    return sorted(sample)


def measure_naive(db: Path, paths: list[Path]) -> float:
    """What a hand-rolled script does: everything sequential, full decodes, a statement per file."""
    import duckdb

    conn = duckdb.connect(str(db))
    conn.execute("CREATE TABLE naive (path VARCHAR, sha256 VARCHAR, width INT, height INT)")
    started = time.perf_counter()
    for path in paths:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
        conn.execute("INSERT INTO naive VALUES (?, ?, ?, ?)", [str(path), digest, width, height])
    elapsed = time.perf_counter() - started
    conn.close()
    return len(paths) / elapsed


def measure_ceiling(paths: list[Path], workers: int) -> float:
    """Our hashing and validating decode in our thread pool, with no database: the upper bound."""
    from core.ingest.decode import inspect_image
    from core.ingest.hashing import sha256_file

    def work(path: Path) -> None:
        sha256_file(path)
        inspect_image(path)

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, paths))
    return len(paths) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--files", type=int, default=10_000, help="files in the drop (default 10000)"
    )
    parser.add_argument(
        "--large-fraction", type=float, default=0.02, help="share of 4000x3000 JPEGs"
    )
    parser.add_argument("--sample", type=int, default=400, help="files timed for naive and ceiling")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--workdir", type=Path, help="keep generated files here (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    from core.ingest.ingest import default_workers

    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as scratch:
        work = args.workdir or Path(scratch)
        root = work / "drops"
        print(f"generating {args.files} JPEGs in {root} ...", flush=True)
        counts = generate(root / "bench", args.files, args.large_fraction)
        sample = representative_sample(sorted((root / "bench").iterdir()), args.sample)
        print("ingesting (ours) ...", flush=True)
        ours = measure_ours(work / "ours.duckdb", root, "bench")
        print(f"naive loop over {len(sample)} files ...", flush=True)
        naive = measure_naive(work / "naive.duckdb", sample)
        print(f"decode-only ceiling over {len(sample)} files ...", flush=True)
        ceiling = measure_ceiling(sample, default_workers())

    # Ours is timed on the whole drop, naive and ceiling on an evenly spread sample of it.
    ours_rate = ours["files"] / ours["ingest_s"]
    results = {
        "files": ours["files"],
        "small_files": counts["small"],
        "large_files": counts["large"],
        "ingest_files_s": round(ours_rate, 1),
        "naive_files_s": round(naive, 1),
        "ceiling_files_s": round(ceiling, 1),
        "ours_over_naive": round(ours_rate / naive, 2),
        "ours_over_ceiling": round(ours_rate / ceiling, 2),
        "rescan_s": round(ours["rescan_s"], 3),
        "rescan_files_processed": ours["rescan_processed"],
        "peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "workers": default_workers(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    rows = [
        ("files (small / large)", f"{results['files']} ({counts['small']} / {counts['large']})"),
        ("ours: first ingest", f"{results['ingest_files_s']} files/s"),
        ("naive loop", f"{results['naive_files_s']} files/s"),
        ("ceiling: hash + decode, no DB", f"{results['ceiling_files_s']} files/s"),
        ("ours / naive", f"{results['ours_over_naive']}x"),
        ("ours / ceiling", f"{results['ours_over_ceiling']}"),
        (
            "re-scan of unchanged drop",
            f"{results['rescan_s']} s ({ours['rescan_processed']} files read)",
        ),
        ("peak RSS (ingesting process)", f"{results['peak_rss_mb']} MB"),
    ]
    print_table(rows)
    write_json(results, args.out)
    return results


if __name__ == "__main__":
    main()
