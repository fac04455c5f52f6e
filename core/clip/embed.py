"""Image and text embeddings: batched, under `torch.inference_mode`, L2-normalised float32."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.clip.loading import ClipModel


def embed_image_tensors(clip: ClipModel, pixels: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) preprocessed pixels -> (N, D) unit-length float32 rows."""
    with torch.inference_mode():
        features = clip.model.encode_image(pixels.to(clip.device, dtype=clip.dtype))
        return F.normalize(features.float(), dim=-1).cpu().numpy()


def warm_up(clip: ClipModel, batch_size: int) -> None:
    """One forward pass at the batch shape: oneDNN builds its bf16/fp32 kernels for a shape on
    first use (about a second on a CPU), so that happens while the first batch decodes."""
    pixels = torch.zeros(batch_size, 3, *clip.image_size)
    embed_image_tensors(clip, pixels)


def embed_texts(clip: ClipModel, texts: list[str]) -> np.ndarray:
    """Unit-length float32 text embeddings, one row per text."""
    with torch.inference_mode():
        tokens = clip.tokenizer(texts).to(clip.device)
        features = clip.model.encode_text(tokens)
        return F.normalize(features.float(), dim=-1).cpu().numpy()


def logit_scale(clip: ClipModel) -> float:
    return float(clip.model.logit_scale.exp().float().item())
