"""The one job the sensor launches per drop: the whole chain, a launched GPU server once per run
(inside the extraction step)."""

import json
import os
from collections.abc import Mapping

import dagster as dg

from assets.embeddings import clip_embeddings, clip_zero_shot
from assets.evaluation import evaluation, label_agreement
from assets.extraction import vlm_extractions
from assets.ingestion import images
from assets.review import drop_page, review_queue
from orchestration.warehouse_waits import WAREHOUSE_WAIT_HOOKS

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

# One process runs every step in order. Only clip_embeddings and vlm_extractions could
# overlap, and they compete for the same GPU or cores; the multiprocess default paid a
# process start plus a torch import per step (6 per run), most of a no-op run's time.
# Definitions give Dagster's implicit asset job the same executor.
PIPELINE_EXECUTOR = dg.in_process_executor

# Dagster's run retries (enabled in dagster.yaml, `run_retries`): a failed run is re-executed
# from its failed steps up to twice; the sensor takes over once these are exhausted.
RETRY_TAGS = {"dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"}

# On Kubernetes (K8sRunLauncher) each run is a pod; this variable holds the JSON of the run's
# `dagster-k8s/config` tag, e.g. the GPU its CLIP steps use (docs/deploy.md).
K8S_CONFIG_ENV = "IMAGE_PIPELINE_RUN_K8S_CONFIG"
K8S_CONFIG_TAG = "dagster-k8s/config"
K8S_CONFIG_KEYS = {
    "container_config",
    "pod_spec_config",
    "pod_template_spec_metadata",
    "job_spec_config",
    "job_metadata",
}


def run_tags(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The pipeline job's tags: run retries, and the run pod's Kubernetes config when set."""
    env = os.environ if environ is None else environ
    tags: dict[str, object] = dict(RETRY_TAGS)
    raw = env.get(K8S_CONFIG_ENV, "").strip()
    if raw:
        try:
            config = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ValueError(f"{K8S_CONFIG_ENV} is not JSON: {error}") from None
        if not isinstance(config, dict) or not set(config) <= K8S_CONFIG_KEYS:
            raise ValueError(
                f"{K8S_CONFIG_ENV} must be an object with keys among {sorted(K8S_CONFIG_KEYS)}"
            )
        tags[K8S_CONFIG_TAG] = config
    return tags


JOB_DESCRIPTION = """One drop (a partition of `image_drops`) through the whole chain, in one process:
`images` (hash, decode, deduplicate) → `clip_embeddings` → `clip_zero_shot`, and
`vlm_extractions` (structured labels into the task tables) → `label_agreement` →
`review_queue` → `drop_page`, with `evaluation` against the labelled set. Blocking checks
stop the steps after a failure. The drop sensor launches it per drop; Materialize on this
job's page launches it too, while Materialize on an asset page launches Dagster's implicit
`__ASSET_JOB` for the selected assets, with the same executor, resources and run retries."""

image_pipeline_job = dg.define_asset_job(
    PIPELINE_JOB_NAME,
    selection=pipeline_assets,
    description=JOB_DESCRIPTION,
    tags=run_tags(),
    executor_def=PIPELINE_EXECUTOR,
    # each step's end logs the seconds the run's process waited on the warehouse
    hooks=WAREHOUSE_WAIT_HOOKS,
)
