"""CLIP embedding throughput: ours vs a naive loop vs the machine's limit, plus peak RSS.

Uses the ingest benchmark's generated JPEGs (640x480 and 4000x3000, mixed) and the ViT-B-32
architecture with random weights (same speed as trained ones; no hub needed):
- naive: per image, open, full decode, preprocess, batch-1 fp32 forward;
- ours: the `clip_embeddings` code path (`embed_drop`) end to end, files to DuckDB rows, in a
  fresh process per run, at two drop sizes (peak RSS must stay flat);
- model only: forward passes of ready tensors at our batch size and precision, all cores;
- decode only: our decoding (JPEG draft + exact preprocess) in our thread pool, no model;
- ceiling: on a CPU decoding and the model share the cores, so 1 / (1/model + 1/decode);
  on a GPU the smaller of the two rates.
Prints a table and writes JSON (`--out`). Usage: python benchmarks/embed.py [--files N] [--out F]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ingest import SIZES, generate, peak_rss_mb, representative_sample
from benchmarks.report import print_table, write_json

MODEL = "ViT-B-32"


def _load(model: str, precision: str, device: str = "auto"):
    from core.clip.loading import ModelSpec, load_model

    return load_model(
        ModelSpec(model_name=model, pretrained=None, device=device, precision=precision)
    )


def _ours_child(work: str, drop: str, options: dict, model: str, precision: str, queue) -> None:
    from core.clip.pipeline import EmbedOptions, embed_drop
    from core.ingest.ingest import DropIngestor
    from core.ingest.scan import DropRef
    from core.warehouse import Warehouse

    warehouse = Warehouse(Path(work) / f"{drop}-{precision}.duckdb")
    DropIngestor(warehouse, Path(work) / "drops", log=lambda _: None).ingest(DropRef.folder(drop))
    clip = _load(model, precision)
    report = embed_drop(
        warehouse,
        Path(work) / "drops",
        drop,
        clip,
        EmbedOptions(**options),
        log=lambda line: print(f"  {line}", flush=True),
    )
    rows = warehouse.rows("SELECT count(*) FROM clip_embeddings")[0][0]
    queue.put(
        {
            "images": report.images_processed,
            "rows": int(rows),
            "seconds": report.seconds,
            "img_s": report.images_per_s,
            "failures": len(report.failures),
            "peak_rss_mb": peak_rss_mb(),
            "device": str(clip.device),
        }
    )


def measure_ours(work: Path, drop: str, options: dict, model: str, precision: str) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(
        target=_ours_child, args=(str(work), drop, options, model, precision, queue)
    )
    child.start()
    result = queue.get()
    child.join()
    return result


def measure_naive(paths: list[Path], model: str) -> dict[str, float]:
    """A hand-rolled loop: one file at a time, full decode, batch of one, fp32."""
    import torch
    from PIL import Image

    clip = _load(model, "fp32")
    seconds = {kind: 0.0 for kind in SIZES}
    counts = {kind: 0 for kind in SIZES}
    for path in paths:
        started = time.perf_counter()
        with Image.open(path) as image:
            pixels = clip.preprocess(image.convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            clip.model.encode_image(pixels.to(clip.device))
        kind = "large" if path.stem.endswith("large") else "small"
        seconds[kind] += time.perf_counter() - started
        counts[kind] += 1
    rates = {kind: counts[kind] / seconds[kind] for kind in SIZES if counts[kind]}
    rates["all"] = sum(counts.values()) / sum(seconds.values())
    return rates


def measure_model_only(
    model: str, precision: str, batch_size: int, batches: int, min_seconds: float = 0.0
) -> float:
    import torch

    from core.clip.embed import embed_image_tensors

    clip = _load(model, precision)
    pixels = torch.randn(batch_size, 3, *clip.image_size)
    for _ in range(2):  # warm-up: allocator, oneDNN kernels for this shape
        embed_image_tensors(clip, pixels)
    done = 0
    started = time.perf_counter()
    while done < batches or time.perf_counter() - started < min_seconds:
        embed_image_tensors(clip, pixels)  # returns CPU numpy: includes the device sync
        done += 1
    return batch_size * done / (time.perf_counter() - started)


def measure_decode_only(paths: list[Path], workers: int, model: str) -> float:
    from core.clip.decoding import load_tensors

    clip = _load(model, "fp32", device="cpu")
    transforms = {"global": clip.preprocess}
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: load_tensors(p, transforms, clip.min_decode_side), paths))
    return len(paths) / (time.perf_counter() - started)


def bf16_cosine_on_samples(model: str) -> float:
    """Lowest cosine between bf16-weight and fp32 embeddings of the bundled photographs."""
    import torch

    from core.clip.embed import embed_image_tensors
    from core.ingest.decode import load_rgb
    from orchestration.settings import REPO_ROOT

    torch.manual_seed(0)
    fp32 = _load(model, "fp32", device="cpu")
    bf16 = _load(model, "bf16", device="cpu")
    bf16.model.load_state_dict(fp32.model.state_dict())  # same weights, then rounded to bf16
    from open_clip.model import convert_weights_to_lp

    convert_weights_to_lp(bf16.model, dtype=torch.bfloat16)
    samples = sorted((REPO_ROOT / "data" / "samples").glob("*.jpg"))
    pixels = torch.stack([fp32.preprocess(load_rgb(p, min_side=448)) for p in samples])
    a, b = embed_image_tensors(fp32, pixels), embed_image_tensors(bf16, pixels)
    return float((a * b).sum(axis=1).min())


def link_subset(source: Path, target: Path, names: list[str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        (target / name).symlink_to(source / name)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=MODEL, help="open_clip architecture (random weights)")
    parser.add_argument("--files", type=int, default=480, help="files in the large drop")
    parser.add_argument("--small-files", type=int, default=120, help="files in the small drop")
    parser.add_argument("--large-fraction", type=float, default=0.5, help="share of 4000x3000")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="decode threads")
    parser.add_argument("--sample", type=int, default=40, help="files timed for naive/decode")
    parser.add_argument("--model-batches", type=int, default=4, help="least batches timed")
    parser.add_argument("--model-seconds", type=float, default=15.0, help="least seconds timed")
    parser.add_argument("--decode-sample", type=int, default=200, help="files timed for decode")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--workdir", type=Path, help="keep generated files here")
    args = parser.parse_args(argv)
    import torch

    options = {"batch_size": args.batch_size, "decode_workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as scratch:
        work = args.workdir or Path(scratch)
        drops = work / "drops"
        print(f"generating {args.files} JPEGs ...", flush=True)
        counts = generate(drops / "large", args.files, args.large_fraction)
        names = sorted(p.name for p in (drops / "large").iterdir())
        small_names = [
            p.name for p in representative_sample([Path(n) for n in names], args.small_files)
        ]
        link_subset(drops / "large", drops / "small", small_names)
        big_only = [n for n in names if n.endswith("_large.jpg")][: max(8, args.small_files // 2)]
        link_subset(drops / "large", drops / "bigonly", big_only)
        sample = representative_sample(sorted((drops / "large").iterdir()), args.sample)
        decode_sample = representative_sample(
            sorted((drops / "large").iterdir()), args.decode_sample
        )

        print(
            f"ours ({args.precision}, batch {args.batch_size}): {len(small_names)} files",
            flush=True,
        )
        ours_small = measure_ours(work, "small", options, args.model, args.precision)
        print(f"ours: {args.files} files", flush=True)
        ours_large = measure_ours(work, "large", options, args.model, args.precision)
        print(f"ours: {len(big_only)} 4000x3000 files", flush=True)
        ours_big = measure_ours(work, "bigonly", options, args.model, args.precision)
        print(f"naive loop over {len(sample)} files ...", flush=True)
        naive = measure_naive(sample, args.model)
        print("model only ...", flush=True)
        model_only = measure_model_only(
            args.model, args.precision, args.batch_size, args.model_batches, args.model_seconds
        )
        other = "fp32" if args.precision != "fp32" else "bf16"
        model_other = measure_model_only(
            args.model, other, args.batch_size, args.model_batches, args.model_seconds
        )
        print(f"decode only over {len(decode_sample)} files ...", flush=True)
        decode_only = measure_decode_only(decode_sample, args.workers, args.model)
        cosine = bf16_cosine_on_samples(args.model)

    on_gpu = ours_large["device"].startswith("cuda")
    ceiling = min(model_only, decode_only) if on_gpu else 1 / (1 / model_only + 1 / decode_only)
    ours_rate = ours_large["img_s"]
    results = {
        "model": f"{args.model} (random weights)",
        "precision": args.precision,
        "batch_size": args.batch_size,
        "decode_workers": args.workers,
        "files": ours_large["images"],
        "small_files": counts["small"],
        "large_files": counts["large"],
        "rows_written": ours_large["rows"],
        "naive_img_s": round(naive["all"], 2),
        "naive_large_img_s": round(naive.get("large", 0.0), 2),
        "ours_img_s": round(ours_rate, 2),
        "ours_large_img_s": round(ours_big["img_s"], 2),
        "model_only_img_s": round(model_only, 2),
        f"model_only_{other}_img_s": round(model_other, 2),
        "decode_only_img_s": round(decode_only, 2),
        "ceiling_img_s": round(ceiling, 2),
        "ours_over_ceiling": round(ours_rate / ceiling, 3),
        "ours_over_naive": round(ours_rate / naive["all"], 2),
        "ours_over_naive_large": round(ours_big["img_s"] / naive["large"], 2)
        if naive.get("large")
        else None,
        "peak_rss_mb_small": round(ours_small["peak_rss_mb"], 1),
        "peak_rss_mb_large": round(ours_large["peak_rss_mb"], 1),
        "rss_files_small": ours_small["images"],
        "rss_files_large": ours_large["images"],
        "bf16_vs_fp32_min_cosine": round(cosine, 5),
        "device": ours_large["device"],
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    rows = [
        ("model / precision / batch", f"{results['model']} / {args.precision} / {args.batch_size}"),
        (
            "files (640x480 / 4000x3000)",
            f"{results['files']} ({counts['small']} / {counts['large']})",
        ),
        ("naive (fp32, batch 1, full decode)", f"{results['naive_img_s']} img/s"),
        ("ours (files -> DuckDB rows)", f"{results['ours_img_s']} img/s"),
        ("model only", f"{results['model_only_img_s']} img/s ({other}: {model_other:.2f})"),
        ("decode only (draft + preprocess)", f"{results['decode_only_img_s']} img/s"),
        (
            "ceiling (" + ("min" if on_gpu else "1/(1/model+1/decode)") + ")",
            f"{results['ceiling_img_s']} img/s",
        ),
        ("ours / ceiling", f"{results['ours_over_ceiling']}"),
        ("ours / naive", f"{results['ours_over_naive']}x"),
        (
            "4000x3000 only: ours / naive",
            f"{results['ours_large_img_s']} / {results['naive_large_img_s']} img/s = "
            f"{results['ours_over_naive_large']}x",
        ),
        (
            "peak RSS: small / large drop",
            f"{results['peak_rss_mb_small']} MB ({ours_small['images']} files) / "
            f"{results['peak_rss_mb_large']} MB ({ours_large['images']} files)",
        ),
        ("bf16 vs fp32 cosine (samples, min)", f"{results['bf16_vs_fp32_min_cosine']}"),
    ]
    print_table(rows)
    write_json(results, args.out)
    return results


if __name__ == "__main__":
    main()
