"""The one job the sensor launches per drop: the whole chain, so GPU servers start once per run."""

import dagster as dg

from assets.embeddings import clip_embeddings, clip_zero_shot
from assets.evaluation import evaluation, label_agreement
from assets.extraction import vlm_extractions
from assets.ingestion import images
from assets.review import drop_page, review_queue

PIPELINE_JOB_NAME = "image_pipeline"

pipeline_assets = dg.AssetSelection.assets(
    images,
    clip_embeddings,
    clip_zero_shot,
    vlm_extractions,
    label_agreement,
    evaluation,
    review_queue,
    drop_page,
)

image_pipeline_job = dg.define_asset_job(
    PIPELINE_JOB_NAME,
    selection=pipeline_assets,
    description="Ingest a drop and run every downstream stage on it.",
)
