"""The one job the sensor launches per drop: the whole chain, so GPU servers start once per run."""

import dagster as dg

from assets.embeddings import clip_embeddings, clip_zero_shot
from assets.evaluation import evaluation, label_agreement
from assets.extraction import vlm_extractions
from assets.ingestion import images
from assets.review import drop_page, review_queue

PIPELINE_JOB_NAME = "image_pipeline"

# Every asset of the project is in the chain; `Definitions` loads this same list.
PIPELINE_ASSETS = [
    images,
    clip_embeddings,
    clip_zero_shot,
    vlm_extractions,
    label_agreement,
    evaluation,
    review_queue,
    drop_page,
]
pipeline_assets = dg.AssetSelection.assets(*PIPELINE_ASSETS)

# Dagster's run retries (enabled in dagster.yaml, `run_retries`): a failed run is re-executed
# from its failed steps up to twice; the sensor takes over once these are exhausted.
RETRY_TAGS = {"dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"}

image_pipeline_job = dg.define_asset_job(
    PIPELINE_JOB_NAME,
    selection=pipeline_assets,
    description="Ingest a drop and run every downstream stage on it.",
    tags=RETRY_TAGS,
    # One process runs every step in order. Only clip_embeddings and vlm_extractions could
    # overlap, and they compete for the same GPU or cores; the multiprocess default paid a
    # process start plus a torch import per step (6 per run), most of a no-op run's time.
    executor_def=dg.in_process_executor,
)
