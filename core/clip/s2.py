"""S2 multi-scale features ("Scaling on Scales", Shi et al. 2024) on an open_clip image trunk.

At each scale s the image is resized to s x the model's input size and split into tiles of at most
`max_split_size` pixels (default: the input size); each tile goes through the visual trunk to its
patch-token feature map (after the final LayerNorm, projected into the embedding space when the
trunk has a projection), tiles are stitched back in place, each scale's map is area-pooled to the
first scale's grid, scales are concatenated along channels, and the map is averaged to one vector.
ViTs have fixed position embeddings, so a tile of another size is resized to the input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.clip.loading import ClipModel


def feature_map(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) at the trunk's input size -> (B, C, h, w) patch-token map of the last block."""
    output = visual.forward_intermediates(
        pixels,
        indices=1,
        normalize_intermediates=True,
        intermediates_only=True,
        output_fmt="NCHW",
    )
    tokens = output["image_intermediates"][-1]
    proj = getattr(visual, "proj", None)
    if isinstance(proj, torch.Tensor):
        tokens = torch.einsum("bchw,cd->bdhw", tokens, proj)
    return tokens


def split_tiles(pixels: torch.Tensor, splits: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * splits², C, H / splits, W / splits), tiles in row-major order."""
    b, c, h, w = pixels.shape
    th, tw = h // splits, w // splits
    tiles = pixels[:, :, : th * splits, : tw * splits].reshape(b, c, splits, th, splits, tw)
    return tiles.permute(0, 2, 4, 1, 3, 5).reshape(b * splits * splits, c, th, tw)


def stitch_tiles(maps: torch.Tensor, splits: int) -> torch.Tensor:
    """Inverse of `split_tiles` for feature maps: (B * splits², C, h, w) -> (B, C, h * s, w * s)."""
    n, c, h, w = maps.shape
    b = n // (splits * splits)
    grid = maps.reshape(b, splits, splits, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(b, c, splits * h, splits * w)


def splits_for(scale: float, input_size: int, max_split_size: int) -> int:
    return max(1, math.ceil(scale * input_size / max_split_size))


def multiscale_map(
    visual: torch.nn.Module,
    pixels: torch.Tensor,
    scales: Sequence[float],
    input_size: int,
    max_split_size: int | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) at the largest scale's size -> (B, C * len(scales), h0, w0) stitched maps."""
    max_split_size = max_split_size or input_size
    maps = []
    grid: tuple[int, int] | None = None
    for scale in scales:
        side = round(scale * input_size)
        scaled = pixels
        if pixels.shape[-1] != side or pixels.shape[-2] != side:
            scaled = F.interpolate(
                pixels.float(),
                size=(side, side),
                mode="bicubic",
                antialias=True,
                align_corners=False,
            ).to(pixels.dtype)
        splits = splits_for(scale, input_size, max_split_size)
        tiles = split_tiles(scaled, splits)
        if tiles.shape[-1] != input_size or tiles.shape[-2] != input_size:
            tiles = F.interpolate(
                tiles.float(), size=(input_size, input_size), mode="bicubic", antialias=True
            ).to(pixels.dtype)
        stitched = stitch_tiles(feature_map(visual, tiles), splits)
        if grid is None:
            grid = (stitched.shape[-2], stitched.shape[-1])
        elif stitched.shape[-2:] != grid:
            stitched = F.adaptive_avg_pool2d(stitched.float(), grid).to(stitched.dtype)
        maps.append(stitched)
    return torch.cat(maps, dim=1)


def s2_dim(clip: ClipModel, scales: Sequence[float]) -> int:
    """Channels of the S2 vector: the trunk's map channels times the number of scales."""
    proj = getattr(clip.model.visual, "proj", None)
    channels = proj.shape[1] if isinstance(proj, torch.Tensor) else clip.model.visual.width
    return int(channels) * len(scales)


def s2_input_size(clip: ClipModel, scales: Sequence[float]) -> int:
    return round(max(scales) * max(clip.image_size))


def embed_s2(
    clip: ClipModel,
    pixels: torch.Tensor,
    scales: Sequence[float],
    max_split_size: int | None = None,
) -> np.ndarray:
    """(N, 3, S, S) pixels at the largest scale -> (N, C * len(scales)) unit-length float32 rows."""
    with torch.inference_mode():
        stacked = multiscale_map(
            clip.model.visual,
            pixels.to(clip.device, dtype=clip.dtype),
            scales,
            max(clip.image_size),
            max_split_size,
        )
        pooled = stacked.float().mean(dim=(-2, -1))
        return F.normalize(pooled, dim=-1).cpu().numpy()
