"""Embed one drop: the images without an embedding for this model and kind, files to DuckDB rows.

Worker threads decode and preprocess (JPEG draft to 2x the input size, then open_clip's exact
transform) while the main thread runs the model on the previous batch; each batch is written in
its own transaction, so a crash loses at most one batch and a rerun redoes only what has no row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.model import get_model_preprocess_cfg

from core.clip import s2, store
from core.clip.decoding import Transform, load_tensors, prefetched_batches
from core.clip.embed import embed_image_tensors, warm_up
from core.clip.gpu_decode import GpuPreprocess, decode_batch, gpu_decoding_enabled
from core.clip.loading import ClipModel
from core.copies import image_copies
from core.files import ImageUnreadable, read_image_copy
from core.progress import Progress
from core.warehouse import Warehouse


@dataclass(frozen=True)
class EmbedOptions:
    batch_size: int = 32
    decode_workers: int = 2
    prefetch_batches: int = 2
    s2_scales: tuple[float, ...] = ()  # empty: no S2 embeddings; e.g. (1, 2)
    s2_max_split_size: int | None = None  # default: the model's input size
    gpu_decode: str = "auto"  # JPEGs of the global kind decoded on CUDA when the model is there

    @property
    def kinds(self) -> tuple[str, ...]:
        return ("global", "s2") if self.s2_scales else ("global",)


@dataclass
class Loaded:
    """One image after its decode: tensors per kind, and its bytes when the GPU decodes them."""

    tensors: dict[str, torch.Tensor | None]
    data: bytes | None = None


@dataclass
class EmbedReport:
    drop_id: str
    model_id: str
    images_in_drop: int = 0
    written: dict[str, int] = field(default_factory=dict)  # kind -> new rows
    already_embedded: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, error)
    unreadable: dict[str, str] = field(default_factory=dict)  # image_id -> status, this run
    skipped_unreadable: int = 0  # unreadable at an earlier run, no usable file since
    dims: dict[str, int] = field(default_factory=dict)
    images_processed: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images_processed / self.seconds if self.seconds > 0 else 0.0


def kind_dims(clip: ClipModel, options: EmbedOptions) -> dict[str, int]:
    dims = {"global": clip.embed_dim}
    if options.s2_scales:
        dims["s2"] = s2.s2_dim(clip, options.s2_scales)
    return dims


def transforms_for(clip: ClipModel, options: EmbedOptions) -> dict[str, Transform]:
    transforms: dict[str, Transform] = {"global": clip.preprocess}
    if options.s2_scales:
        cfg = get_model_preprocess_cfg(clip.model)
        transforms["s2"] = open_clip.image_transform(
            s2.s2_input_size(clip, options.s2_scales),
            is_train=False,
            mean=cfg.get("mean"),
            std=cfg.get("std"),
            resize_mode=cfg.get("resize_mode"),
            interpolation=cfg.get("interpolation"),
        )
    return transforms


def min_decode_side(clip: ClipModel, options: EmbedOptions) -> int:
    side = clip.min_decode_side
    if options.s2_scales:
        side = max(side, s2.s2_input_size(clip, options.s2_scales))
    return side


def embed_drop(
    warehouse: Warehouse,
    drop_root: Path,
    drop_id: str,
    clip: ClipModel,
    options: EmbedOptions = EmbedOptions(),
    *,
    log: Callable[[str], None] = print,
) -> EmbedReport:
    started = time.perf_counter()
    report = EmbedReport(drop_id=drop_id, model_id=clip.model_id)
    images = store.drop_images(warehouse, drop_id)
    report.images_in_drop = len(images)
    report.dims = kind_dims(clip, options)
    ids = [image.image_id for image in images]
    skipped = store.unreadable_ids(warehouse, clip.model_id, ids)
    report.skipped_unreadable = len(skipped)
    ids = [i for i in ids if i not in skipped]
    missing: dict[str, set[str]] = {}
    for kind, dim in report.dims.items():
        done = store.embedded_ids(warehouse, dim, clip.model_id, kind, ids)
        missing[kind] = set(ids) - done
        report.already_embedded[kind] = len(done)
        report.written[kind] = 0
    todo = [image for image in images if any(image.image_id in m for m in missing.values())]
    if not todo:
        log(
            f"clip_embeddings: all {len(images)} images of {drop_id} already embedded by "
            f"{clip.model_id}" + (f" ({len(skipped)} have no readable file)" if skipped else "")
        )
        report.seconds = time.perf_counter() - started
        return report

    transforms = transforms_for(clip, options)
    side = min_decode_side(clip, options)
    on_gpu = gpu_decoding_enabled(options.gpu_decode, clip.device)
    gpu_preprocess = None
    if on_gpu:
        cfg = get_model_preprocess_cfg(clip.model)
        gpu_preprocess = GpuPreprocess(max(clip.image_size), cfg["mean"], cfg["std"])
        log("clip_embeddings: decoding JPEGs on the GPU (CPU fallback per file)")

    copies = image_copies(warehouse, drop_id, [image.image_id for image in todo])

    def cpu_global(data: bytes) -> torch.Tensor:
        return load_tensors(data, {"global": clip.preprocess}, clip.min_decode_side)["global"]

    def load(image: store.DropImage) -> Loaded:
        # The bytes are read once, safely, and must hash to the image id they are embedded as.
        _, data = read_image_copy(drop_root, image.image_id, copies[image.image_id])
        wanted = {k: t for k, t in transforms.items() if image.image_id in missing[k]}
        gpu_global = on_gpu and wanted.pop("global", None) is not None
        tensors: dict[str, torch.Tensor | None] = load_tensors(data, wanted, side) if wanted else {}
        if gpu_global:
            tensors["global"] = None  # decoded on the GPU with the whole batch
        return Loaded(tensors, data if gpu_global else None)

    progress = Progress(f"clip_embeddings {drop_id} ({clip.model_id})", len(todo), log)
    for batch in prefetched_batches(
        todo,
        load,
        batch_size=options.batch_size,
        workers=options.decode_workers,
        prefetch_batches=options.prefetch_batches,
        while_first_batch_decodes=lambda: warm_up(clip, min(options.batch_size, len(todo))),
    ):
        vectors: dict[str, tuple[list[str], np.ndarray]] = {}
        for kind in report.dims:
            picked = [i for i, loaded in enumerate(batch.results) if kind in loaded.tensors]
            if not picked:
                continue
            if kind == "global" and gpu_preprocess is not None:
                datas = [batch.results[i].data for i in picked]
                pixels, fallbacks = decode_batch(
                    datas, gpu_preprocess, cpu_global, device=clip.device
                )
                if fallbacks:
                    log(f"clip_embeddings: {len(fallbacks)} files decoded on the CPU instead")
            else:
                pixels = torch.stack([batch.results[i].tensors[kind] for i in picked])
            if kind == "global":
                matrix = embed_image_tensors(clip, pixels)
            else:
                matrix = s2.embed_s2(clip, pixels, options.s2_scales, options.s2_max_split_size)
            vectors[kind] = ([batch.items[i].image_id for i in picked], matrix)
        unreadable = [e for _, e in batch.errors if isinstance(e, ImageUnreadable)]

        def write(conn, vectors=vectors, batch=batch, unreadable=unreadable) -> dict[str, int]:
            written = {
                kind: store.write_embeddings(
                    conn, batch_ids, matrix, model_id=clip.model_id, kind=kind
                )
                for kind, (batch_ids, matrix) in vectors.items()
            }
            store.clear_failures(conn, [i.image_id for i in batch.items], clip.model_id)
            store.write_failures(conn, unreadable, model_id=clip.model_id, drop_id=drop_id)
            return written

        for kind, count in warehouse.write(write).items():
            report.written[kind] += count
        for failure in unreadable:
            report.unreadable[failure.image_id] = failure.status
            log(f"clip_embeddings: {failure.image_id[:12]} {failure}")
        for image, error in batch.failures:
            if image.image_id not in report.unreadable:
                report.failures.append((image.path, error))
                log(f"clip_embeddings: could not decode {image.path}: {error}")
        report.images_processed += len(batch)
        progress.advance(len(batch))
    progress.finish()
    report.seconds = time.perf_counter() - started
    return report
