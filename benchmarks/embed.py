"""CLIP embedding throughput: ours vs a naive loop vs clip-retrieval vs two bounds, plus RSS.

Every contender embeds the same generated JPEGs (640x480 and 4000x3000, mixed) with the same
random-weight checkpoint file (ViT-B-32 by default: same speed as trained weights, no hub):
- naive: open_clip's README recipe around a folder: `preprocess(Image.open(p))`, the default
  precision (fp32), batches of 32, one process; `ours_over_naive` compares it with ours at
  fp32 (equal precision) and `precision_gain` is ours at bf16 (or fp16) over ours at fp32;
- peer: clip-retrieval's `clip_inference` in its own venv (`make bench-peer-venv`; its pins
  conflict with ours), same folder, checkpoint, batch size and worker count; its per-batch
  loop time is counted (see `measure_peer`);
- ours: the `clip_embeddings` code path (`embed_drop`), files to DuckDB rows, in a fresh
  process, at our precision and at the other one; a smaller drop checks that peak RSS is flat;
- model only: forward passes of ready tensors at our batch size and precision, all cores;
- decode only: our decoding (JPEG draft + exact preprocess) in our thread pool, no model;
- shared-core bound: 1 / (1/model only + 1/decode only), what a pipeline reaches when both
  stages saturate all cores one after the other (on a CPU they share the cores; on a GPU the
  stages overlap and the bound is the smaller rate, so this one is then not a bound);
- compute bound: the best measured matrix-multiply rate (bf16 and fp32) / the model's FLOPs per
  image, so one sees how far the model's own kernels are from the hardware.
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
from queue import Empty

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ingest import generate, peak_rss_mb, representative_sample
from benchmarks.report import print_table, write_json

MODEL = "ViT-B-32"
GEMM_SHAPES = ((1024, 1024, 1024), (1600, 768, 3072))


def _load(model: str, precision: str, device: str = "auto", checkpoint: str | None = None):
    from core.clip.loading import ModelSpec, load_model

    return load_model(
        ModelSpec(model_name=model, pretrained=checkpoint, device=device, precision=precision)
    )


def _ours_child(
    work: str, drop: str, options: dict, model: str, precision: str, checkpoint: str, queue
) -> None:
    from core.clip.pipeline import EmbedOptions, embed_drop
    from core.ingest.ingest import DropIngestor
    from core.ingest.scan import DropRef
    from core.warehouse import Warehouse

    warehouse = Warehouse(Path(work) / f"{drop}-{precision}.duckdb")
    DropIngestor(warehouse, Path(work) / "drops", log=lambda _: None).ingest(DropRef.folder(drop))
    clip = _load(model, precision, checkpoint=checkpoint)
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


def measure_ours(
    work: Path, drop: str, options: dict, model: str, precision: str, checkpoint: Path
) -> dict:
    """`embed_drop` (files -> DuckDB rows) in a fresh process; its own timer excludes start-up,
    ingestion and the model load."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(
        target=_ours_child,
        args=(str(work), drop, options, model, precision, str(checkpoint), queue),
    )
    child.start()
    while True:  # a child that dies never puts its result: say so instead of waiting for ever
        try:
            result = queue.get(timeout=1.0)
            break
        except Empty:
            if not child.is_alive():
                raise RuntimeError(
                    f"the embed_drop child exited {child.exitcode} before reporting"
                ) from None
    child.join()
    return result


def make_checkpoint(model: str, path: Path) -> Path:
    """One random-weight checkpoint (seed 0) that every contender loads: same weights for all."""
    import open_clip
    import torch

    from core.clip.standin import STANDIN_MODEL, register_standin_config

    if model == STANDIN_MODEL:
        register_standin_config(path.parent.parent)
    torch.manual_seed(0)
    network = open_clip.create_model(model, pretrained=None)
    torch.save(network.state_dict(), path)
    return path


def measure_naive(paths: list[Path], model: str, checkpoint: Path, batch_size: int) -> float:
    """open_clip's README recipe as a user writes it around a folder: `preprocess(Image.open(p))`,
    the default precision (fp32), batches of `batch_size`, one process, unit-normalised rows."""
    import open_clip
    import torch
    from PIL import Image

    network, _, preprocess = open_clip.create_model_and_transforms(
        model, pretrained=str(checkpoint)
    )
    network.eval()
    rows = []
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([preprocess(Image.open(p)) for p in paths[start : start + batch_size]])
        with torch.no_grad():
            features = network.encode_image(batch)
            features /= features.norm(dim=-1, keepdim=True)
        rows.append(features.numpy())
    return len(paths) / (time.perf_counter() - started)


PEER_VENV = Path(__file__).resolve().parent.parent / ".venv-clip-retrieval"


def measure_peer(
    folder: Path, model: str, checkpoint: Path, batch_size: int, workers: int, venv: Path, out: Path
) -> tuple[dict | None, str]:
    """clip-retrieval's `clip_inference` in its own venv on the same folder and checkpoint.

    Its stats files sum, per batch, the wait for the DataLoader (its `num_prepro_workers`
    processes run `preprocess(Image.open(f))`, a full decode), the forward pass and the .npy
    writer. Their sum is its inference time: interpreter start, imports, model load and warm-up
    are left out. On a CPU it runs fp32 whatever the flags (all_clip's wrapper autocasts only
    on CUDA)."""
    import json
    import subprocess

    import numpy as np

    executable = venv / "bin" / "clip-retrieval"
    if not executable.exists():
        return None, f"{executable} not found: run `make bench-peer-venv` to create it"
    # all_clip splits `open_clip:<model>/<rest>` on the first "/" and passes <rest> as
    # `pretrained`, so an absolute path after the slash loads a local checkpoint file.
    command = [
        str(executable), "inference",
        "--input_dataset", str(folder),
        "--output_folder", str(out),
        "--clip_model", f"open_clip:{model}/{checkpoint.resolve()}",
        "--batch_size", str(batch_size),
        "--num_prepro_workers", str(workers),
        "--enable_text", "False",
        "--enable_metadata", "False",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    stats = sorted((out / "stats").glob("*.json")) if (out / "stats").exists() else []
    if result.returncode != 0 or not stats:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        return None, f"clip-retrieval inference exited {result.returncode}: {' | '.join(tail)}"
    totals: dict[str, float] = {}
    for file in stats:
        for key, value in json.loads(file.read_text()).items():
            totals[key] = totals.get(key, 0.0) + float(value)
    embeddings = sum(
        int(np.load(f, mmap_mode="r").shape[0]) for f in (out / "img_emb").glob("*.npy")
    )
    samples = int(totals.get("sample_count", 0))
    if samples != len(list(folder.iterdir())) or embeddings != samples:
        return None, f"clip-retrieval embedded {samples} images ({embeddings} rows) of the folder"
    return {
        "img_s": samples / totals["total_duration"],
        "forward_img_s": samples / totals["inference_duration"],
        "read_s": totals["read_duration"],
        "inference_s": totals["inference_duration"],
        "write_s": totals["write_duration"],
    }, (
        "clip-retrieval 2.45 clip_inference, own venv, fp32 on CPU, sequential distributor; "
        "counted: its per-batch loop (DataLoader wait incl. full decode + preprocess in "
        f"{workers} worker processes, forward, .npy write); not counted: start, imports, "
        "model load, warm-up"
    )


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


def matmul_flop_s(dtype_name: str, shapes: tuple[tuple[int, int, int], ...] = GEMM_SHAPES) -> float:
    """The best matrix-multiply rate torch reaches here (FLOP/s, all threads) over `shapes`
    (m, k, n): a square one and ViT-B-32's MLP layer at batch 32 (1600 tokens, 768 -> 3072),
    through `F.linear`, the call the model's layers make."""
    import torch
    import torch.nn.functional as F

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        w = torch.randn(n, k, device=device).to(dtype)
        F.linear(a, w)  # warm-up: the library picks and builds its kernel for this shape
        if device == "cuda":
            torch.cuda.synchronize()
        reps = 0
        started = time.perf_counter()
        while reps < 2 or time.perf_counter() - started < 1.0:
            F.linear(a, w)
            reps += 1
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - started))
    return best


def model_flops_per_image(model: str) -> float:
    """FLOPs of one image through the image tower, counted by torch's FlopCounterMode (matmuls
    and convolutions, 2 per multiply-add; norms, softmax and GELU are left out)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    clip = _load(model, "fp32", device="cpu")
    counter = FlopCounterMode(display=False)
    # With gradients on, nn.MultiheadAttention skips its fused inference kernel, whose
    # projections the counter cannot see (it would miss a third of ViT-B-32's FLOPs).
    with torch.enable_grad(), counter:
        clip.model.encode_image(torch.zeros(1, 3, *clip.image_size))
    return float(counter.get_total_flops())


def link_subset(source: Path, target: Path, names: list[str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        (target / name).symlink_to(source / name)


def _shapes(text: str) -> tuple[tuple[int, int, int], ...]:
    shapes = tuple(tuple(int(v) for v in part.split("x")) for part in text.split(","))
    if any(len(shape) != 3 for shape in shapes):
        raise argparse.ArgumentTypeError(f"{text!r}: expected MxKxN[,MxKxN...]")
    return shapes  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=MODEL, help="open_clip architecture (random weights)")
    parser.add_argument("--files", type=int, default=320, help="files every contender embeds")
    parser.add_argument("--small-files", type=int, default=96, help="files in the RSS drop")
    parser.add_argument("--large-fraction", type=float, default=0.5, help="share of 4000x3000")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="decode workers")
    parser.add_argument("--model-batches", type=int, default=4, help="least batches timed")
    parser.add_argument("--model-seconds", type=float, default=10.0, help="least seconds timed")
    parser.add_argument("--decode-sample", type=int, default=160, help="files timed for decode")
    parser.add_argument(
        "--gemm-shapes",
        type=_shapes,
        default=GEMM_SHAPES,
        help="matrix-multiply shapes MxKxN,... timed for the compute bound",
    )
    parser.add_argument("--peer-venv", type=Path, default=PEER_VENV, help="clip-retrieval venv")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--workdir", type=Path, help="keep generated files here")
    args = parser.parse_args(argv)
    import torch

    options = {"batch_size": args.batch_size, "decode_workers": args.workers}
    other = "fp32" if args.precision != "fp32" else "bf16"
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as scratch:
        work = args.workdir or Path(scratch)
        drops = work / "drops"
        print(f"generating {args.files} JPEGs ...", flush=True)
        counts = generate(drops / "bench", args.files, args.large_fraction)
        files = sorted((drops / "bench").iterdir())
        small_names = [p.name for p in representative_sample(files, args.small_files)]
        link_subset(drops / "bench", drops / "small", small_names)
        decode_sample = representative_sample(files, args.decode_sample)
        (work / "models" / "ckpt").mkdir(parents=True, exist_ok=True)
        checkpoint = make_checkpoint(
            args.model, work / "models" / "ckpt" / f"{args.model}-random-seed0.pt"
        )

        print(f"ours ({args.precision}, batch {args.batch_size}): {args.files} files", flush=True)
        ours = measure_ours(work, "bench", options, args.model, args.precision, checkpoint)
        print(f"ours ({other}): {args.files} files", flush=True)
        ours_other = measure_ours(work, "bench", options, args.model, other, checkpoint)
        print(f"ours: {len(small_names)} files (peak RSS)", flush=True)
        ours_small = measure_ours(work, "small", options, args.model, args.precision, checkpoint)
        print(f"naive (open_clip README recipe, fp32): {args.files} files", flush=True)
        naive = measure_naive(files, args.model, checkpoint, args.batch_size)
        print(f"peer (clip-retrieval clip_inference): {args.files} files", flush=True)
        peer, peer_note = measure_peer(
            drops / "bench",
            args.model,
            checkpoint,
            args.batch_size,
            args.workers,
            args.peer_venv,
            work / "peer-out",
        )
        print(f"  {peer_note}", flush=True)
        print("model only ...", flush=True)
        model_only = measure_model_only(
            args.model, args.precision, args.batch_size, args.model_batches, args.model_seconds
        )
        model_other = measure_model_only(
            args.model, other, args.batch_size, args.model_batches, args.model_seconds
        )
        print(f"decode only over {len(decode_sample)} files ...", flush=True)
        decode_only = measure_decode_only(decode_sample, args.workers, args.model)
        print("matmul rate and model FLOPs ...", flush=True)
        flop_s = {name: matmul_flop_s(name, args.gemm_shapes) for name in ("fp32", "bf16")}
        flops = model_flops_per_image(args.model)
        cosine = bf16_cosine_on_samples(args.model)

    compute_bound = {name: rate / flops for name, rate in flop_s.items()}
    shared_core_bound = 1 / (1 / model_only + 1 / decode_only)
    ours_rate = ours["img_s"]
    peer_rate = peer["img_s"] if peer else None
    # Naive and the peer (on a CPU) run fp32: the headline ratios compare ours at fp32 with
    # them; what a lower precision adds is reported apart, as ours at it over ours at fp32.
    by_precision = {args.precision: ours["img_s"], other: ours_other["img_s"]}
    low = args.precision if args.precision != "fp32" else other
    ours_fp32, ours_low = by_precision["fp32"], by_precision[low]

    def ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
        return round(a / b, digits) if a and b else None

    results = {
        "model": f"{args.model} (random weights, seed 0, one checkpoint file for all)",
        "precision": args.precision,
        "batch_size": args.batch_size,
        "decode_workers": args.workers,
        "files": ours["images"],
        "small_files": counts["small"],
        "large_files": counts["large"],
        "rows_written": ours["rows"],
        "naive_img_s": round(naive, 2),
        "peer_clip_retrieval_img_s": round(peer_rate, 2) if peer_rate else None,
        "peer_forward_only_img_s": round(peer["forward_img_s"], 2) if peer else None,
        "peer_note": peer_note,
        "ours_img_s": round(ours_rate, 2),
        f"ours_{other}_img_s": round(ours_other["img_s"], 2),
        "model_only_img_s": round(model_only, 2),
        f"model_only_{other}_img_s": round(model_other, 2),
        "decode_only_img_s": round(decode_only, 2),
        "shared_core_bound_img_s": round(shared_core_bound, 2),
        "matmul_fp32_gflop_s": round(flop_s["fp32"] / 1e9, 1),
        "matmul_bf16_gflop_s": round(flop_s["bf16"] / 1e9, 1),
        "model_gflops_per_image": round(flops / 1e9, 3),
        "model_flops_per_image": int(flops),
        "gemm_shapes": [list(shape) for shape in args.gemm_shapes],
        "compute_bound_img_s": round(compute_bound.get(args.precision, compute_bound["bf16"]), 2),
        "compute_bound_fp32_img_s": round(compute_bound["fp32"], 2),
        "compute_bound_bf16_img_s": round(compute_bound["bf16"], 2),
        "naive_precision": "fp32",
        "ours_over_naive": ratio(ours_fp32, naive),  # equal precision: fp32 both
        "ours_over_peer": ratio(ours_fp32, peer_rate),  # the peer runs fp32 on a CPU
        "low_precision": low,
        "precision_gain": ratio(ours_low, ours_fp32),
        f"ours_{low}_over_naive": ratio(ours_low, naive),
        f"ours_{low}_over_peer": ratio(ours_low, peer_rate),
        "ours_over_shared_core_bound": ratio(ours_rate, shared_core_bound, 3),
        "model_only_over_compute_bound": ratio(
            model_only, compute_bound.get(args.precision, compute_bound["bf16"]), 3
        ),
        "peak_rss_mb_small": round(ours_small["peak_rss_mb"], 1),
        "peak_rss_mb_large": round(ours["peak_rss_mb"], 1),
        "rss_files_small": ours_small["images"],
        "rss_files_large": ours["images"],
        "bf16_vs_fp32_min_cosine": round(cosine, 5),
        "device": ours["device"],
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    print_table(table_rows(results, other))
    write_json(results, args.out)
    return results


def _rate(value: float | None) -> str:
    return f"{value} img/s" if value is not None else "n/a"


def _times(value: float | None) -> str:
    return f"{value}x" if value is not None else "n/a"


def table_rows(results: dict, other: str) -> list[tuple[str, str]]:
    """The printed table; `benchmarks/readme_tables.py` prints the README's from the same keys."""
    precision = results["precision"]
    low = results["low_precision"]
    return [
        (
            "model / precision / batch",
            f"{results['model']} / {precision} / {results['batch_size']}",
        ),
        (
            "files (640x480 / 4000x3000)",
            f"{results['files']} ({results['small_files']} / {results['large_files']})",
        ),
        ("naive (open_clip README recipe, fp32, batch 32)", _rate(results["naive_img_s"])),
        ("peer: clip-retrieval clip_inference", _rate(results["peer_clip_retrieval_img_s"])),
        (f"ours (files -> DuckDB rows, {precision})", _rate(results["ours_img_s"])),
        (f"ours at {other}", _rate(results[f"ours_{other}_img_s"])),
        (
            f"model only ({precision})",
            f"{results['model_only_img_s']} img/s ({other}: {results[f'model_only_{other}_img_s']})",
        ),
        ("decode only (draft + preprocess)", _rate(results["decode_only_img_s"])),
        ("shared-core bound 1/(1/model+1/decode)", _rate(results["shared_core_bound_img_s"])),
        (
            "compute bound (matmul rate / FLOPs per image)",
            f"{results['compute_bound_img_s']} img/s (fp32: {results['compute_bound_fp32_img_s']};"
            f" {results['model_gflops_per_image']} GFLOP/img at {results['matmul_bf16_gflop_s']}"
            f" bf16 / {results['matmul_fp32_gflop_s']} fp32 GFLOP/s)",
        ),
        ("ours / naive, both fp32", _times(results["ours_over_naive"])),
        (
            "ours / peer, both fp32",
            f"{_times(results['ours_over_peer'])} "
            f"(ours at {low}: {_times(results[f'ours_{low}_over_peer'])})",
        ),
        (
            f"precision gain: ours at {low} / ours at fp32",
            _times(results["precision_gain"]),
        ),
        ("ours / shared-core bound", f"{results['ours_over_shared_core_bound']}"),
        ("model only / compute bound", f"{results['model_only_over_compute_bound']}"),
        (
            "peak RSS: small / large drop",
            f"{results['peak_rss_mb_small']} MB ({results['rss_files_small']} files) / "
            f"{results['peak_rss_mb_large']} MB ({results['rss_files_large']} files)",
        ),
        (
            "bf16 vs fp32 cosine (random weights, samples, min)",
            f"{results['bf16_vs_fp32_min_cosine']}",
        ),
        ("peer note", results["peer_note"]),
    ]


if __name__ == "__main__":
    main()
