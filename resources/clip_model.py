"""The CLIP model as a Dagster resource: open_clip weights loaded inside the step that uses them.

`local` deployments may fall back to the offline stand-in when real weights cannot load, with a
loud banner; `prod` deployments set `allow_standin_fallback=False` and fail instead. Nothing loads
at import, construction or Dagster's resource set-up (which the in-process executor does for every
resource when a run starts): a step enters `loaded()`, and the model is released when the last
step holding it leaves, so a model on the GPU never outlives the step that holds the `gpu` pool.
"""

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

from core.clip.loading import (
    ClipModel,
    ModelSpec,
    ModelUnavailable,
    free_device_memory,
    hub_reachable,
    is_checkpoint_path,
    load_model,
    standin_spec,
)
from core.clip.pipeline import EmbedOptions
from resources.model_cache import default_model_cache

DEVICE_ENV = "IMAGE_PIPELINE_CLIP_DEVICE"


def configured_device() -> str:
    """The CLIP device of this deployment: IMAGE_PIPELINE_CLIP_DEVICE, default `auto`. The
    assets read it at load time to declare their pool, so it is an environment setting."""
    return os.environ.get(DEVICE_ENV, "auto")


# The models steps hold now, per spec, and how many holders each has: steps of one process
# (and threads inside them) share a load; the last holder to leave releases it.
_cache: dict[ModelSpec, ClipModel] = {}
_holders: dict[ModelSpec, int] = {}
_cache_lock = threading.Lock()

STANDIN_BANNER = """
################################################################################
#  USING THE OFFLINE STAND-IN CLIP MODEL ({model_id})
#  Real weights ({wanted}) could not load: {reason}
#  Its embeddings and zero-shot labels are random-weight placeholders; every row
#  carries model_id={model_id!r} so they are never mistaken for real results.
################################################################################
"""


def acquire(spec: ModelSpec) -> ClipModel:
    """The model of `spec`, loaded unless a holder already has it; pair with `release`."""
    with _cache_lock:
        if spec not in _cache:
            _cache[spec] = load_model(spec)
        _holders[spec] = _holders.get(spec, 0) + 1
        return _cache[spec]


def release(spec: ModelSpec) -> bool:
    """One holder fewer; the last one drops the model and frees its device memory. True when
    the model was released."""
    with _cache_lock:
        left = _holders.get(spec, 0) - 1
        if left > 0:
            _holders[spec] = left
            return False
        _holders.pop(spec, None)
        clip = _cache.pop(spec, None)
    if clip is None:
        return False
    device = clip.device
    clip.unload()  # a step's local name for it must not keep the weights on the device
    del clip
    free_device_memory(device)
    return True


class ClipModelResource(dg.ConfigurableResource):
    """An open_clip model (CLIP, SigLIP, ...) with its inference settings."""

    model_name: str = Field(default="ViT-B-32", description="open_clip architecture name.")
    pretrained: str | None = Field(
        default="laion2b_s34b_b79k",
        description="open_clip pretrained tag, or the path of a local checkpoint file.",
    )
    model_id: str | None = Field(
        default=None,
        description="Recorded on every row; default `<model_name>/<tag or file stem>`.",
    )
    device: str = Field(
        default_factory=configured_device,
        description="`auto` (CUDA when present), `cpu`, `cuda:0`; default IMAGE_PIPELINE_CLIP_DEVICE.",
    )
    precision: str = Field(
        default="fp32",
        description="fp32, bf16 (weights converted; fast on AVX-512 BF16 CPUs), fp16 (GPU).",
    )
    batch_size: int = Field(default=32, ge=1, description="Images per forward pass and write.")
    decode_workers: int = Field(default=2, ge=1, description="Decode/preprocess threads.")
    prefetch_batches: int = Field(
        default=2, ge=0, description="Batches decoded ahead (bounds memory)."
    )
    s2_scales: list[float] = Field(
        default_factory=list, description="S2 multi-scale embedding kind, e.g. [1, 2]; empty: off."
    )
    s2_max_split_size: int | None = Field(
        default=None, description="Largest S2 tile side in pixels; default the model's input size."
    )
    gpu_decode: str = Field(
        default="auto",
        description="JPEG decoding on the GPU: auto (when the model is on CUDA), on, off.",
    )
    allow_standin_fallback: bool = Field(
        default=False,
        description="Use the offline stand-in (with a banner) when real weights cannot load. Local only.",
    )
    standin_cache_dir: str = Field(
        default_factory=default_model_cache,
        description="Where the stand-in checkpoint is built (default: IMAGE_PIPELINE_MODEL_CACHE "
        "or data/models/).",
    )

    def spec(self) -> ModelSpec:
        if self.precision not in {"fp32", "bf16", "fp16"}:
            raise ValueError(f"precision must be fp32, bf16 or fp16, not {self.precision!r}")
        return ModelSpec(
            model_name=self.model_name,
            pretrained=self.pretrained,
            device=self.device,
            precision=self.precision,  # type: ignore[arg-type]
            model_id=self.model_id,
        )

    def options(self) -> EmbedOptions:
        return EmbedOptions(
            batch_size=self.batch_size,
            decode_workers=self.decode_workers,
            prefetch_batches=self.prefetch_batches,
            s2_scales=tuple(self.s2_scales),
            s2_max_split_size=self.s2_max_split_size,
            gpu_decode=self.gpu_decode,
        )

    def _standin_spec(self) -> ModelSpec:
        return standin_spec(
            Path(self.standin_cache_dir), device=self.device, precision=self.spec().precision
        )

    def _standin(self, reason: str, warn: Callable[[str], None]) -> tuple[ModelSpec, ClipModel]:
        spec = self._standin_spec()
        clip = acquire(spec)
        banner = STANDIN_BANNER.format(
            model_id=clip.model_id, wanted=self.spec().derived_model_id(), reason=reason
        )
        print(banner, file=sys.stderr, flush=True)
        warn(banner)
        return spec, clip

    def _acquire(self, warn: Callable[[str], None]) -> tuple[ModelSpec, ClipModel]:
        spec = self.spec()
        wants_download = bool(spec.pretrained) and not is_checkpoint_path(spec.pretrained or "")
        if self.allow_standin_fallback and wants_download and not hub_reachable():
            # Skip a minute of hub retries when the machine is plainly offline.
            return self._standin("the model hub is unreachable (offline)", warn)
        try:
            return spec, acquire(spec)
        except ModelUnavailable as error:
            if not self.allow_standin_fallback:
                raise
            return self._standin(str(error).splitlines()[0][:300], warn)

    @contextmanager
    def loaded(
        self, info: Callable[[str], None] = print, warn: Callable[[str], None] = print
    ) -> Iterator[ClipModel]:
        """The model while inside (loaded on entry unless another holder has it); released on
        exit, also on error: the step that enters this holds the model, and nothing after it."""
        spec, clip = self._acquire(warn)
        info(f"CLIP model loaded: {clip.model_id} on {clip.device} ({clip.dtype})")
        model_id = clip.model_id
        try:
            yield clip
        finally:
            del clip
            if release(spec):
                info(f"CLIP model released: {model_id}")
