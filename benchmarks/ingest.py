"""Ingestion throughput: ours vs a naive loop vs a single-read bound, plus re-scan time and RSS.

Generates N distinct JPEGs (a mix of 640x480 and 4000x3000), ingests them with the asset's code
path (`DropIngestor`) in a fresh process, re-scans the unchanged drop, and compares with:
- naive: what a user writes: one process, one file at a time, `hashlib.sha256` over the file's
  bytes, `Image.open(path).load()` (a full decode), the rows inserted into DuckDB at the end;
- single_read_bound: each file read once, SHA-256 and a header parse (`Image.open` on the same
  bytes, no pixel decode) in a process pool over all cores, no database. Ours does strictly more
  per file (it also decodes pixels at 1/8 scale to reject truncated or corrupt files, and writes
  rows), so no ingestion that validates and records can beat this on the same machine.
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
from concurrent.futures import ProcessPoolExecutor
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


def with_comment(jpeg: bytes, text: str) -> bytes:
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
        data = with_comment(bases[kind][index % 4], f"benchmark file {index}")
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
    """What a user writes: one process, hashlib over the file, `Image.open().load()`, then rows."""
    import duckdb

    conn = duckdb.connect(str(db))
    conn.execute("CREATE TABLE naive (path VARCHAR, sha256 VARCHAR, width INT, height INT)")
    started = time.perf_counter()
    rows = []
    for path in paths:
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        with Image.open(path) as image:
            image.load()
            width, height = image.size
        rows.append((str(path), digest, width, height))
    conn.executemany("INSERT INTO naive VALUES (?, ?, ?, ?)", rows)
    elapsed = time.perf_counter() - started
    conn.close()
    return len(paths) / elapsed


def _read_hash_header(path: str) -> tuple[str, int, int]:
    """One read; the digest and the header parse both come from the same bytes."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return digest, width, height


def _read_hash_validate(path: str) -> tuple[str, int, int]:
    """One read; digest, header and the 1/8-scale validating decode from the same bytes."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if image.format == "JPEG":
            image.draft(None, (1, 1))
        image.load()
    return digest, width, height


def measure_single_read(paths: list[Path], workers: int, validate: bool = False) -> float:
    """Read each file once in a warm process pool on all cores, no database (files/s)."""
    work = _read_hash_validate if validate else _read_hash_header
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(work, [str(paths[0])] * workers))  # start every worker before timing
        started = time.perf_counter()
        list(pool.map(work, [str(p) for p in paths], chunksize=8))
        elapsed = time.perf_counter() - started
    return len(paths) / elapsed


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
    parser.add_argument(
        "--sample", type=int, default=400, help="files timed for naive (evenly spread)"
    )
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
        all_files = sorted((root / "bench").iterdir())
        print(f"single-read bound over all {len(all_files)} files ...", flush=True)
        bound = measure_single_read(all_files, os.cpu_count() or 1)
        print(f"single read + validating decode over all {len(all_files)} files ...", flush=True)
        validate = measure_single_read(all_files, os.cpu_count() or 1, validate=True)

    # Ours and the bound are timed on the whole drop, naive on an evenly spread sample of it.
    ours_rate = ours["files"] / ours["ingest_s"]
    results = {
        "files": ours["files"],
        "small_files": counts["small"],
        "large_files": counts["large"],
        "ingest_files_s": round(ours_rate, 1),
        "naive_files_s": round(naive, 1),
        "naive_sample_files": len(sample),
        "single_read_bound_files_s": round(bound, 1),
        "ours_over_naive": round(ours_rate / naive, 2),
        "ours_over_single_read_bound": round(ours_rate / bound, 3),
        "single_read_validate_files_s": round(validate, 1),
        "ours_over_single_read_validate": round(ours_rate / validate, 3),
        "rescan_s": round(ours["rescan_s"], 3),
        "rescan_files_processed": ours["rescan_processed"],
        "peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "workers": default_workers(),
        "bound_processes": os.cpu_count() or 1,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    rows = [
        ("files (small / large)", f"{results['files']} ({counts['small']} / {counts['large']})"),
        ("ours: first ingest", f"{results['ingest_files_s']} files/s"),
        (
            "naive (hashlib + Image.open().load(), 1 process)",
            f"{results['naive_files_s']} files/s",
        ),
        (
            "single-read bound (read once, hash + header, all cores, no DB)",
            f"{results['single_read_bound_files_s']} files/s",
        ),
        ("ours / naive", f"{results['ours_over_naive']}x"),
        ("ours / single-read bound", f"{results['ours_over_single_read_bound']}"),
        (
            "single read + our 1/8 validating decode, all cores, no DB",
            f"{results['single_read_validate_files_s']} files/s",
        ),
        ("ours / single read + validate", f"{results['ours_over_single_read_validate']}"),
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
