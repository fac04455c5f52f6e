"""Offline stand-in CLIP: a tiny random-weight open_clip model saved as a local checkpoint.

No model hub is reachable from our machines, so tests and the offline demo build this model once,
save it under a cache folder, and load it through `pretrained=<path>`: exactly the code path real
weights take. Its `model_id` says `standin`, so its rows are never mistaken for a real model's.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import open_clip
import torch

from core.atomic import atomic_write

STANDIN_MODEL = "standin-tiny-clip"

# A ViT-style image tower (so S2 sees patch tokens) and a text tower that reuses open_clip's
# bundled BPE tokenizer (vocab 49408), both a few layers deep and 64 wide: ~3.5M parameters.
STANDIN_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 64,
        "layers": 2,
        "width": 64,
        "head_width": 32,
        "patch_size": 16,
        "pool_type": "avg",  # mean of patch tokens: random weights then still tell images apart
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

_registered = threading.Lock()


def register_standin_config(cache_dir: Path) -> str:
    """Make `STANDIN_MODEL` a known open_clip architecture (a JSON config, like built-ins)."""
    with _registered:
        if STANDIN_MODEL not in open_clip.list_models():
            config_dir = Path(cache_dir) / "configs"
            config_dir.mkdir(parents=True, exist_ok=True)
            path = config_dir / f"{STANDIN_MODEL}.json"
            path.write_text(json.dumps(STANDIN_CONFIG, indent=2) + "\n")
            open_clip.add_model_config(path)
    return STANDIN_MODEL


def standin_checkpoint(cache_dir: Path, *, seed: int = 0) -> Path:
    """The stand-in's checkpoint for `seed`, built and saved on first use (atomically)."""
    register_standin_config(cache_dir)
    path = Path(cache_dir) / STANDIN_MODEL / f"seed{seed}.pt"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.create_model(STANDIN_MODEL, pretrained=None, device="cpu")
    atomic_write(path, lambda temporary: torch.save({"state_dict": model.state_dict()}, temporary))
    return path
