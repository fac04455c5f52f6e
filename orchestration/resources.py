"""Resource sets by environment: `local` (demo defaults under data/) and `prod` (explicit paths)."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from orchestration.settings import MissingSetting, Settings
from resources.clip_model import ClipModelResource
from resources.drop_folder import DropFolderResource
from resources.labelled_set import LabelledSetResource
from resources.reports import ReportsResource
from resources.sglang_server import SGLangServer
from resources.vlm import VLMResource
from resources.warehouse import WarehouseResource


def build_vlm_resources(
    settings: Settings, environ: dict[str, str] | None = None
) -> dict[str, Any]:
    """`vlm`, with its SGLang server nested for backend `sglang`. Local: the embedded stand-in
    unless a model or server is named.

    Prod names its backend explicitly (IMAGE_PIPELINE_VLM_BACKEND) and never gets a stand-in.
    """
    env = dict(os.environ if environ is None else environ)
    backend = env.get("IMAGE_PIPELINE_VLM_BACKEND")
    model = env.get("IMAGE_PIPELINE_VLM_MODEL")
    url = env.get("IMAGE_PIPELINE_SGLANG_URL")
    api_key = dg.EnvVar("SGLANG_API_KEY") if env.get("SGLANG_API_KEY") else None
    sglang = SGLangServer(url=url, api_key=api_key) if url else None
    if settings.environment == "prod":
        if backend not in ("sglang", "transformers"):
            raise MissingSetting(
                "IMAGE_PIPELINE_ENV=prod needs IMAGE_PIPELINE_VLM_BACKEND=sglang|transformers"
            )
        if backend == "sglang" and not url:
            raise MissingSetting(
                "IMAGE_PIPELINE_VLM_BACKEND=sglang needs IMAGE_PIPELINE_SGLANG_URL"
            )
        if backend == "transformers" and not model:
            raise MissingSetting(
                "IMAGE_PIPELINE_VLM_BACKEND=transformers needs IMAGE_PIPELINE_VLM_MODEL"
            )
        if backend == "sglang":
            return {"vlm": VLMResource(backend="sglang", sglang=sglang, allow_standin=False)}
        return {"vlm": VLMResource(model_path=model or "", allow_standin=False)}
    backend = backend or ("sglang" if url else "transformers")
    if backend == "sglang":
        return {"vlm": VLMResource(backend="sglang", sglang=sglang)}
    if model:
        return {"vlm": VLMResource(model_path=model)}
    return {"vlm": VLMResource(standin=True)}


def build_resources(settings: Settings) -> dict[str, Any]:
    return {
        "warehouse": WarehouseResource(
            path=str(settings.warehouse_path), data_path=settings.lake_data_path
        ),
        "drop_folder": DropFolderResource(root=str(settings.drop_root)),
        # local: real ViT-B-32 weights when they load, else the offline stand-in with a banner;
        # prod: the configured weights or a failed run, never a silent stand-in.
        "clip_model": ClipModelResource(allow_standin_fallback=settings.environment == "local"),
        **build_vlm_resources(settings),
        "labelled_set": LabelledSetResource(
            location=str(settings.labelled_path) if settings.labelled_path else ""
        ),
        # the drop pages' server that `make ui` starts (orchestration/ui.py)
        "reports": ReportsResource(url=settings.reports_url),
    }
