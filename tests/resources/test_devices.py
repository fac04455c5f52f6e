"""Where the models run: `auto` means CUDA when present, for CLIP and the transformers VLM, and
CLIP steps on CUDA share the `gpu` pool with the VLM step so two runs never fight for a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from orchestration.settings import REPO_ROOT
from resources.vlm import VLMResource


def test_the_transformers_vlm_runs_on_cuda_when_present(monkeypatch: pytest.MonkeyPatch):
    assert VLMResource().device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    backend = VLMResource(model_path="some/model").open_backend()
    assert backend.device == "cuda"  # type: ignore[attr-defined]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    backend = VLMResource(model_path="some/model").open_backend()
    assert backend.device == "cpu"  # type: ignore[attr-defined]
    pinned = VLMResource(model_path="some/model", device="cuda:1").open_backend()
    assert pinned.device == "cuda:1"  # type: ignore[attr-defined]


def _clip_pools(device: str) -> str:
    code = (
        "from assets.embeddings import clip_embeddings, clip_zero_shot;"
        "from assets.evaluation import evaluation;"
        "from assets.extraction import vlm_extractions;"
        "print(clip_embeddings.op.pool, clip_zero_shot.op.pool, vlm_extractions.op.pool,"
        " evaluation.op.pool)"
    )
    env = {**os.environ, "IMAGE_PIPELINE_CLIP_DEVICE": device}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_clip_steps_on_cuda_join_the_gpu_pool():
    """evaluation may load CLIP (kNN over ImageNet classes), so it joins the pool with them."""
    assert _clip_pools("cuda") == ["gpu", "gpu", "gpu", "gpu"]
    assert _clip_pools("cpu") == ["None", "None", "gpu", "None"]
