"""What one CUDA GPU does with this pipeline, measured in one short run (`benchmarks/gpu_check.sh`).

Contenders, all with one random-weight ViT-B-32 checkpoint (same speed as trained weights):
- CLIP files -> DuckDB rows (`embed_drop`, the `clip_embeddings` code path) with the JPEGs
  decoded on the GPU (nvJPEG, `gpu_decode: on`) and on the CPU (`gpu_decode: off`), same files;
- CLIP model only (ready tensors) at fp16 and at bf16, and the GPU's measured matrix-multiply
  rate over the model's FLOPs per image (a compute bound for the model's own kernels);
- the transformers VLM stand-in (tiny random LLaVA, built locally) extracting every built-in
  task from a small drop on CUDA: images/s through `extract_drop`, rows written.
Prints a table and writes JSON (`--out`). `--allow-cpu` runs the same code on a machine without
a GPU (the GPU-decoding contender is then skipped and named so): that is how the test checks it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.embed import (
    MODEL,
    make_checkpoint,
    matmul_flop_s,
    measure_model_only,
    measure_ours,
    model_flops_per_image,
)
from benchmarks.ingest import generate, with_comment
from benchmarks.report import print_table, write_json

REPO = Path(__file__).resolve().parent.parent


def measure_vlm(work: Path, images: int, device: str) -> dict:
    """Every built-in task on `images` copies of the bundled samples, transformers backend."""
    from core.ingest.ingest import DropIngestor
    from core.ingest.scan import DropRef
    from core.tasks.registry import TASKS
    from core.vlm.run import extract_drop
    from core.vlm.standin import STANDIN_MODEL_ID, ensure_standin
    from core.vlm.transformers_backend import TransformersBackend
    from core.warehouse import Warehouse

    samples = sorted((REPO / "data" / "samples").glob("*.jpg"))
    drop = work / "drops" / "vlm"
    drop.mkdir(parents=True, exist_ok=True)
    for index in range(images):
        source = samples[index % len(samples)]
        data = with_comment(source.read_bytes(), f"gpu check copy {index}")  # own hash each
        (drop / f"{index:04d}_{source.name}").write_bytes(data)
    warehouse = Warehouse(work / "vlm.duckdb")
    DropIngestor(warehouse, work / "drops", log=lambda _: None).ingest(DropRef.folder("vlm"))
    backend = TransformersBackend(
        ensure_standin(work / "models"), model_id=STANDIN_MODEL_ID, device=device
    )
    tasks = list(TASKS.values())
    started = time.perf_counter()
    reports = extract_drop(
        warehouse, backend, "vlm", work / "drops", tasks, log=lambda line: print(f"  {line}")
    )
    seconds = time.perf_counter() - started
    rows = int(warehouse.rows("SELECT count(*) FROM vlm_extractions")[0][0])
    done = {report.task: report.pending for report in reports}
    return {
        "images": images,
        "tasks": len(tasks),
        "rows": rows,
        "pending": done,
        "seconds": round(seconds, 2),
        "img_s": round(images / seconds, 2),
        "device": backend.device,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=MODEL, help="open_clip architecture (random weights)")
    parser.add_argument("--files", type=int, default=2000, help="files each CLIP run embeds")
    parser.add_argument("--large-fraction", type=float, default=0.5, help="share of 4000x3000")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="decode workers")
    parser.add_argument("--model-batches", type=int, default=20, help="least batches timed")
    parser.add_argument("--model-seconds", type=float, default=10.0, help="least seconds timed")
    parser.add_argument("--vlm-images", type=int, default=64, help="images the VLM extracts")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (a test)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        parser.exit(2, "gpu_check: torch sees no CUDA device; this check needs one GPU\n")
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    # fp16 is a GPU precision (the loader refuses it on a CPU); --allow-cpu times bf16 instead.
    precisions = ("fp16", "bf16") if on_gpu else ("bf16",)
    clip_precision = precisions[0]
    options = {"batch_size": args.batch_size, "decode_workers": args.workers}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        work = Path(scratch)
        print(f"generating {args.files} JPEGs ...", flush=True)
        counts = generate(work / "drops" / "bench", args.files, args.large_fraction)
        (work / "models" / "ckpt").mkdir(parents=True, exist_ok=True)
        checkpoint = make_checkpoint(
            args.model, work / "models" / "ckpt" / f"{args.model}-random-seed0.pt"
        )
        gpu_decoded = None
        if on_gpu:
            print("CLIP files -> DuckDB, JPEGs decoded on the GPU ...", flush=True)
            gpu_decoded = measure_ours(
                work,
                "bench",
                {**options, "gpu_decode": "on"},
                args.model,
                clip_precision,
                checkpoint,
            )
            # A fresh warehouse for the next contender: the first one's rows would be skipped.
            (work / f"bench-{clip_precision}.duckdb").unlink()
        print("CLIP files -> DuckDB, JPEGs decoded on the CPU ...", flush=True)
        cpu_decoded = measure_ours(
            work, "bench", {**options, "gpu_decode": "off"}, args.model, clip_precision, checkpoint
        )
        print(f"CLIP model only, {' and '.join(precisions)} ...", flush=True)
        model_only = {
            precision: measure_model_only(
                args.model, precision, args.batch_size, args.model_batches, args.model_seconds
            )
            for precision in precisions
        }
        print("matmul rate and model FLOPs ...", flush=True)
        flop_s = {precision: matmul_flop_s(precision) for precision in precisions}
        flops = model_flops_per_image(args.model)
        print(f"VLM stand-in ({device}), every task, {args.vlm_images} images ...", flush=True)
        vlm = measure_vlm(work, args.vlm_images, device)
        shutil.rmtree(work / "drops", ignore_errors=True)

    results = {
        "gpu": torch.cuda.get_device_name(0) if on_gpu else None,
        "torch": torch.__version__,
        "model": f"{args.model} (random weights, seed 0)",
        "files": args.files,
        "small_files": counts["small"],
        "large_files": counts["large"],
        "batch_size": args.batch_size,
        "decode_workers": args.workers,
        "clip_gpu_decode_img_s": round(gpu_decoded["img_s"], 2) if gpu_decoded else None,
        "clip_gpu_decode_note": None if on_gpu else "no CUDA device: GPU decoding not measured",
        "clip_cpu_decode_img_s": round(cpu_decoded["img_s"], 2),
        "clip_rows_written": cpu_decoded["rows"],
        "clip_device": cpu_decoded["device"],
        "clip_precision": clip_precision,
        **{f"model_only_{p}_img_s": _round(model_only.get(p), 2) for p in ("fp16", "bf16")},
        **{f"matmul_{p}_tflop_s": _round(flop_s.get(p, 0) / 1e12, 2) for p in ("fp16", "bf16")},
        "model_gflops_per_image": round(flops / 1e9, 3),
        **{
            f"compute_bound_{p}_img_s": _round(flop_s.get(p, 0) / flops, 1)
            for p in ("fp16", "bf16")
        },
        "vlm_standin_img_s": vlm["img_s"],
        "vlm_standin_rows": vlm["rows"],
        "vlm_standin_tasks": vlm["tasks"],
        "vlm_standin_images": vlm["images"],
        "vlm_device": vlm["device"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    print_table(
        [
            ("GPU", str(results["gpu"] or "none (--allow-cpu)")),
            ("CLIP files->DuckDB, GPU JPEG decode", _rate(results["clip_gpu_decode_img_s"])),
            ("CLIP files->DuckDB, CPU JPEG decode", _rate(results["clip_cpu_decode_img_s"])),
            ("CLIP model only, fp16", _rate(results["model_only_fp16_img_s"])),
            ("CLIP model only, bf16", _rate(results["model_only_bf16_img_s"])),
            ("compute bound, fp16 (matmul / FLOPs)", _rate(results["compute_bound_fp16_img_s"])),
            ("compute bound, bf16 (matmul / FLOPs)", _rate(results["compute_bound_bf16_img_s"])),
            (
                f"VLM stand-in ({vlm['device']}), {vlm['tasks']} tasks",
                f"{_rate(vlm['img_s'])} ({vlm['rows']} rows)",
            ),
            ("whole check", f"{results['seconds']} s"),
        ]
    )
    write_json(results, args.out)
    return results


def _round(value: float | None, digits: int) -> float | None:
    return round(value, digits) if value else None


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f} images/s"


if __name__ == "__main__":
    main()
