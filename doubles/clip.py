"""A test implementation of the `clip_model` resource: the offline stand-in CLIP for a seed.

It loads through the real resource's path (a local checkpoint, `pretrained=<path>`); only the
model is chosen differently: the stand-in for `seed`, built under `standin_cache_dir` on first use.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from core.clip.loading import ModelSpec, standin_spec
from resources.clip_model import ClipModelResource


class StandinClip(ClipModelResource):
    """Random-weight stand-in CLIP (model_id `standin-tiny-clip/seed<seed>`); for tests."""

    seed: int = Field(default=0, ge=0, description="Which stand-in: each seed its own weights.")
    device: str = "cpu"

    def spec(self) -> ModelSpec:
        configured = super().spec()  # validates precision as the real resource does
        return standin_spec(
            Path(self.standin_cache_dir),
            seed=self.seed,
            device=configured.device,
            precision=configured.precision,
        )
