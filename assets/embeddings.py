"""CLIP assets: `clip_embeddings` (global and optional S2 vectors) and `clip_zero_shot` labels."""

import dagster as dg
import numpy as np
from pydantic import Field

from assets.metadata import (
    GROUP,
    column_schema,
    definition_schema,
    preview_table,
    previews_by,
    records_table,
)
from assets.quality import record_and_report
from core.clip import checks, store
from core.clip.loading import device_pool
from core.clip.near_duplicates import DEFAULT_THRESHOLD
from core.clip.pipeline import EmbedReport, embed_drop
from core.clip.zero_shot import label_drop
from core.quality import cross_stage
from core.quality.cross_stage import LabelSource
from core.quality.outcome import merge_outcomes
from core.tasks.label_sets import LABEL_SETS
from core.warehouse import Warehouse
from orchestration.partitions import image_drops
from resources.clip_model import ClipModelResource, configured_device
from resources.drop_folder import DropFolderResource
from resources.warehouse import WarehouseResource

NEAR_DUPLICATES_CHECK = checks.NEAR_DUPLICATES
# Blocking: zero-shot labels (and everything after) must not run on missing or broken vectors.
EMBEDDING_CHECKS = (
    checks.EMBEDDING_ONE_PER_IMAGE,
    checks.EMBEDDING_DIMENSION,
    checks.EMBEDDING_FINITE,
    checks.EMBEDDING_UNIT_NORM,
)
ZERO_SHOT_CHECKS = (checks.ZERO_SHOT_ONE_PER_IMAGE, checks.ZERO_SHOT_PROBABILITIES)
ZERO_SHOT_COLLAPSE_CHECK = checks.ZERO_SHOT_COLLAPSE
LABEL_DRIFT_CHECK = cross_stage.LABEL_DRIFT
PREVIEW_ROWS = 20
# On CUDA both CLIP steps hold the `gpu` pool (limit 1, shared with vlm_extractions), so two runs
# never load models onto one GPU at once; on the CPU they need no pool.
CLIP_POOL = device_pool(configured_device())


class EmbeddingsConfig(dg.Config):
    near_duplicate_threshold: float = Field(
        default=DEFAULT_THRESHOLD,
        ge=-1.0,
        le=1.0,
        description="Pairs of different images at or above this cosine are reported.",
    )
    norm_tolerance: float = Field(
        default=1e-3, gt=0, description="Largest |L2 norm - 1| the unit-norm check accepts."
    )


class ZeroShotConfig(dg.Config):
    label_sets: list[str] = Field(
        default_factory=lambda: list(LABEL_SETS),
        min_length=1,
        description="Label sets from core/tasks/label_sets.py to score every image against.",
    )
    drift_threshold: float = Field(
        default=0.25, gt=0, description="Warn when a label set's PSI vs earlier drops is above."
    )
    drift_min_images: int = Field(
        default=cross_stage.DRIFT_MIN_IMAGES,
        ge=1,
        description="Label drift check: judge only with this many images in the drop and in "
        "earlier drops.",
    )
    collapse_min_images: int = Field(
        default=10,
        ge=2,
        description="Label collapse check: judge a label set only on drops with this many images.",
    )


def _embedding_metadata(report: EmbedReport, warehouse: Warehouse) -> dict[str, object]:
    table = store.table_for(report.dims["global"])
    preview, total = store.embedding_preview(
        warehouse, report.drop_id, report.model_id, report.dims["global"], rows=PREVIEW_ROWS
    )
    metadata: dict[str, object] = {
        "dagster/row_count": total,
        "dagster/table_name": table,
        "dagster/column_schema": column_schema(warehouse, table),
        "model_id": report.model_id,
        "dimension": report.dims["global"],
        "images_in_drop": report.images_in_drop,
        "per_kind": records_table(
            [
                {
                    "kind": kind,
                    "dim": dim,
                    "embedded_this_run": report.written.get(kind, 0),
                    "already_embedded": report.already_embedded.get(kind, 0),
                }
                for kind, dim in report.dims.items()
            ],
            {
                "kind": "global: the whole image; s2: multi-scale tiles, pooled",
                "dim": "vector length",
                "embedded_this_run": "images given a vector of this kind by this run",
                "already_embedded": "images of the drop that had one before",
            },
        ),
        "decode_failures": len(report.failures),
        "unavailable_this_run": len(report.unreadable),
        "skipped_unavailable": report.skipped_unreadable,
        "images_per_s": dg.MetadataValue.float(round(report.images_per_s, 2)),
        "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
        "preview": preview_table(preview),
    }
    problems = [
        {"image": path, "status": "decode_failure", "error": error}
        for path, error in report.failures[:PREVIEW_ROWS]
    ] + [
        {"image": image_id[:12], "status": status, "error": ""}
        for image_id, status in list(report.unreadable.items())[:PREVIEW_ROWS]
    ]
    if problems:  # an empty table is noise: the counts above say there are none
        metadata["unreadable_preview"] = records_table(
            problems,
            {
                "image": "the file's path (decode failures) or the image id's start (unavailable)",
                "status": "decode_failure, unavailable or changed_since_ingest",
                "error": "the error text",
            },
        )
    return metadata


@dg.asset(
    partitions_def=image_drops,
    deps=["images"],
    group_name=GROUP,
    kinds={"duckdb", "pytorch"},
    pool=CLIP_POOL,
    metadata=definition_schema("clip_embeddings"),
    check_specs=[
        dg.AssetCheckSpec(
            checks.EMBEDDING_ONE_PER_IMAGE,
            asset="clip_embeddings",
            blocking=True,
            description="Every image of the drop has exactly one embedding of this model per "
            "configured kind (global, s2); zero-shot labels do not run otherwise.",
        ),
        dg.AssetCheckSpec(
            checks.EMBEDDING_DIMENSION,
            asset="clip_embeddings",
            blocking=True,
            description="`dim` and the vector length equal the model's dimension.",
        ),
        dg.AssetCheckSpec(
            checks.EMBEDDING_FINITE,
            asset="clip_embeddings",
            blocking=True,
            description="No vector holds NaN, infinity or NULL.",
        ),
        dg.AssetCheckSpec(
            checks.EMBEDDING_UNIT_NORM,
            asset="clip_embeddings",
            blocking=True,
            description="Every vector has L2 norm 1 within `norm_tolerance` (cosine = dot).",
        ),
        dg.AssetCheckSpec(
            NEAR_DUPLICATES_CHECK,
            asset="clip_embeddings",
            blocking=False,
            description="No two different images (this drop vs itself and earlier drops) have "
            "CLIP cosine at or above the threshold: re-encoded or resized copies.",
        ),
    ],
)
def clip_embeddings(
    context: dg.AssetExecutionContext,
    config: EmbeddingsConfig,
    warehouse: WarehouseResource,
    drop_folder: DropFolderResource,
    clip_model: ClipModelResource,
) -> dg.MaterializeResult:
    """L2-normalised CLIP vectors of the drop's images, one per (image, model, kind); only
    images without a vector for this model are embedded, so reruns and duplicates cost nothing."""
    store_ = warehouse.get()
    # The model is held only inside this step, which holds the `gpu` pool on CUDA.
    with clip_model.loaded(info=context.log.info, warn=context.log.warning) as clip:
        model_id = clip.model_id
        report = embed_drop(
            store_,
            drop_folder.path,
            context.partition_key,
            clip,
            clip_model.options(),
            log=context.log.info,
        )
    if report.failures:
        context.log.warning(
            f"{len(report.failures)} images could not be decoded: {report.failures[:5]}"
        )
    outcomes = checks.embedding_checks_by_kind(
        store_,
        report.drop_id,
        model_id,
        report.dims,
        norm_tolerance=config.norm_tolerance,
    )
    near, pairs = checks.near_duplicates(
        store_,
        report.drop_id,
        model_id,
        report.dims["global"],
        config.near_duplicate_threshold,
    )
    near_metadata = {
        "model_id": model_id,
        "pairs_preview": preview_table(pairs.head(PREVIEW_ROWS)),
    }
    results = record_and_report(
        context,
        store_,
        [*outcomes, near],
        asset="clip_embeddings",
        extra_metadata={NEAR_DUPLICATES_CHECK: near_metadata},
    )
    metadata = (
        _embedding_metadata(report, store_)
        if report.images_in_drop
        else {
            "model_id": model_id,
            "images_in_drop": 0,
        }
    )
    return dg.MaterializeResult(metadata=metadata, check_results=results)


@dg.asset(
    partitions_def=image_drops,
    deps=[clip_embeddings],
    group_name=GROUP,
    kinds={"duckdb", "pytorch"},
    pool=CLIP_POOL,
    metadata=definition_schema("clip_zero_shot"),
    check_specs=[
        dg.AssetCheckSpec(
            checks.ZERO_SHOT_ONE_PER_IMAGE,
            asset="clip_zero_shot",
            blocking=True,
            description="Every image of the drop has a row per configured label set, of the "
            "label set's current version (fingerprint).",
        ),
        dg.AssetCheckSpec(
            checks.ZERO_SHOT_PROBABILITIES,
            asset="clip_zero_shot",
            blocking=True,
            description="Probabilities cover exactly the label set's labels, are finite and "
            "non-negative, sum to 1, and the top label is the most probable.",
        ),
        dg.AssetCheckSpec(
            LABEL_DRIFT_CHECK,
            asset="clip_zero_shot",
            description="Warns when a label set's top-label distribution in this drop departs "
            "from earlier drops (PSI above `drift_threshold`).",
        ),
        dg.AssetCheckSpec(
            ZERO_SHOT_COLLAPSE_CHECK,
            asset="clip_zero_shot",
            description="Model guard: warns when one label is the top label of every image of a "
            "drop with at least `collapse_min_images` images.",
        ),
    ],
)
def clip_zero_shot(
    context: dg.AssetExecutionContext,
    config: ZeroShotConfig,
    warehouse: WarehouseResource,
    clip_model: ClipModelResource,
) -> dg.MaterializeResult:
    """Per image and label set, CLIP's probability for every label and the top label: the
    zero-shot baseline the VLM extractions are compared against."""
    store_ = warehouse.get()
    unknown = sorted(set(config.label_sets) - set(LABEL_SETS))
    if unknown:
        raise dg.Failure(f"unknown label sets {unknown}; known: {sorted(LABEL_SETS)}")
    drop_id = context.partition_key
    # The model is held only inside this step, which holds the `gpu` pool on CUDA.
    with clip_model.loaded(info=context.log.info, warn=context.log.warning) as clip:
        model_id = clip.model_id
        report = label_drop(
            store_,
            clip,
            drop_id,
            [LABEL_SETS[name] for name in config.label_sets],
            log=context.log.info,
        )
    for name, missing in report.without_embedding.items():
        if missing:
            context.log.warning(
                f"{missing} images of the drop have no {model_id} embedding for {name}; "
                "materialize clip_embeddings first"
            )
    distribution, preview, total = store.zero_shot_preview(
        store_, drop_id, model_id, rows=PREVIEW_ROWS
    )
    per_set = {
        name: [
            *checks.zero_shot_checks(
                store_,
                drop_id,
                model_id,
                name,
                labels=LABEL_SETS[name].labels,
                fingerprint=LABEL_SETS[name].fingerprint,
            ),
            cross_stage.label_drift(
                store_,
                drop_id,
                LabelSource.zero_shot(name, model_id),
                categories=LABEL_SETS[name].labels,
                threshold=config.drift_threshold,
                min_images=config.drift_min_images,
            ),
            checks.zero_shot_collapse(
                store_,
                drop_id,
                model_id,
                name,
                fingerprint=LABEL_SETS[name].fingerprint,
                min_images=config.collapse_min_images,
            ),
        ]
        for name in config.label_sets
    }
    results = record_and_report(
        context, store_, merge_outcomes(per_set, key="label_set"), asset="clip_zero_shot"
    )
    return dg.MaterializeResult(
        check_results=results,
        metadata={
            "dagster/row_count": total,
            "dagster/table_name": "clip_zero_shot",
            "dagster/column_schema": column_schema(store_, "clip_zero_shot"),
            "model_id": model_id,
            "labelled_this_run": records_table(
                [
                    {"label_set": name, "images_labelled": count}
                    for name, count in report.written.items()
                ],
                {
                    "label_set": "the label set scored (core/tasks/label_sets.py)",
                    "images_labelled": "images of the drop given labels by this run",
                },
            ),
            "top_labels": preview_table(distribution),
            **previews_by(preview, "label_set"),
            "mean_top_probability": dg.MetadataValue.float(
                float(np.round(distribution["mean_p"].mean() or 0.0, 3))
                if distribution.height
                else 0.0
            ),
        },
    )
