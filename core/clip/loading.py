"""Load an open_clip model once: model name + pretrained tag, or a local checkpoint path.

Real weights and the offline stand-in go through the same `open_clip.create_model_and_transforms`
call (`pretrained=<tag or file>`); only the name differs. SigLIP and other open_clip models load
through the same settings. Precision `bf16`/`fp16` converts the weights themselves (open_clip's
`convert_weights_to_lp`), which on CPUs with AVX-512 BF16 runs about 3x faster than fp32, while
autocast does not.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import open_clip
import torch
from PIL import Image

from core.clip import standin

Precision = Literal["fp32", "bf16", "fp16"]
HUB_HOST = ("huggingface.co", 443)


class ModelUnavailable(RuntimeError):
    """The requested weights could not be loaded (no hub, no file, unknown tag)."""


@dataclass(frozen=True)
class ModelSpec:
    """What to load. `pretrained` is an open_clip tag or a checkpoint file path."""

    model_name: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    device: str = "auto"
    precision: Precision = "fp32"
    model_id: str | None = None  # overrides the derived id, e.g. for fine-tuned checkpoints

    def derived_model_id(self) -> str:
        """`<model>/<tag>` or `<model>/<checkpoint file stem>`: the key of every output row."""
        if self.model_id:
            return self.model_id
        if not self.pretrained:
            return f"{self.model_name}/random-init"
        if is_checkpoint_path(self.pretrained):
            return f"{self.model_name}/{Path(self.pretrained).stem}"
        return f"{self.model_name}/{self.pretrained}"


@dataclass
class ClipModel:
    """A loaded model with everything inference needs, kept for the whole run."""

    model: torch.nn.Module
    preprocess: object  # open_clip's inference transform: PIL image -> CHW float tensor
    tokenizer: object
    model_id: str
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype  # of the image tower's weights; inputs are cast to it
    image_size: tuple[int, int]
    embed_dim: int
    is_standin: bool

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        return self.preprocess(image)

    def unload(self) -> None:
        """Drop the weights, even while someone still holds this object, so the device memory
        can be freed; the model cannot be used afterwards (AttributeError)."""
        self.__dict__.pop("model", None)

    @property
    def min_decode_side(self) -> int:
        """JPEG draft decoding stops at twice the input size, so the exact resize stays sharp."""
        return 2 * max(self.image_size)


def is_checkpoint_path(pretrained: str) -> bool:
    return os.path.sep in pretrained or Path(pretrained).suffix in {
        ".pt",
        ".bin",
        ".safetensors",
        ".npz",
    }


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def free_device_memory(device: torch.device) -> None:
    """After a model's last reference is dropped: collect it now, and on CUDA hand the cached
    blocks back, so the next holder of the `gpu` pool (another run's step) finds them free."""
    import gc

    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


GPU_POOL = "gpu"


def device_pool(device: str) -> str | None:
    """The Dagster pool a step using `device` must hold: `gpu` on CUDA (one step at a time on
    the instance, shared with the VLM step), none on the CPU."""
    return GPU_POOL if resolve_device(device).type == "cuda" else None


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A cheap probe, so an offline machine does not sit through a minute of hub retries."""
    if os.environ.get("HF_HUB_OFFLINE") in {"1", "true", "True"}:
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout_s):
            return True
    except OSError:
        return False


def _image_size(model: torch.nn.Module) -> tuple[int, int]:
    size = getattr(model.visual, "image_size", None) or model.visual.preprocess_cfg["size"]
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def _embed_dim(model: torch.nn.Module, size: tuple[int, int], device: torch.device) -> int:
    dim = getattr(model.visual, "output_dim", None)
    if isinstance(dim, int):
        return dim
    dtype = next(model.visual.parameters()).dtype
    with torch.inference_mode():
        return int(
            model.encode_image(torch.zeros(1, 3, *size, device=device, dtype=dtype)).shape[-1]
        )


def load_model(spec: ModelSpec) -> ClipModel:
    """Load `spec` in eval mode on its device and precision; raise `ModelUnavailable` on failure."""
    device = resolve_device(spec.device)
    if spec.precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if spec.model_name == standin.STANDIN_MODEL:  # our own architecture: register its config
        # Its config lives beside the checkpoint (<cache>/<model>/seedN.pt); random init: temp.
        standin.register_standin_config(
            Path(spec.pretrained).parent.parent
            if spec.pretrained
            else Path(tempfile.gettempdir()) / "image-pipeline-standin-clip"
        )
    if (
        spec.pretrained
        and is_checkpoint_path(spec.pretrained)
        and not Path(spec.pretrained).is_file()
    ):
        raise ModelUnavailable(f"checkpoint {spec.pretrained} does not exist")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model_name, pretrained=spec.pretrained, precision=spec.precision, device=device
        )
    except (RuntimeError, OSError, ValueError) as error:
        raise ModelUnavailable(
            f"could not load {spec.model_name} with pretrained={spec.pretrained!r}: {error}"
        ) from error
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.model_name)
    size = _image_size(model)
    logging.getLogger(__name__).info(
        "loaded %s on %s (%s)", spec.derived_model_id(), device, spec.precision
    )
    return ClipModel(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        model_id=spec.derived_model_id(),
        spec=spec,
        device=device,
        dtype=model.visual.conv1.weight.dtype
        if hasattr(model.visual, "conv1")
        else next(model.visual.parameters()).dtype,
        image_size=size,
        embed_dim=_embed_dim(model, size, device),
        is_standin=spec.model_name == standin.STANDIN_MODEL,
    )


def standin_spec(
    cache_dir: Path,
    *,
    seed: int = 0,
    device: str = "auto",
    precision: Precision = "fp32",
) -> ModelSpec:
    """The offline stand-in as a `ModelSpec`: a local checkpoint path, like any fine-tuned model."""
    path = standin.standin_checkpoint(cache_dir, seed=seed)
    return ModelSpec(
        model_name=standin.STANDIN_MODEL, pretrained=str(path), device=device, precision=precision
    )
