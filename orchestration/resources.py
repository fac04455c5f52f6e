"""Resource sets by environment: `local` (demo defaults under data/) and `prod` (explicit paths)."""

from __future__ import annotations

from typing import Any

from orchestration.settings import Settings
from resources.clip_model import ClipModelResource
from resources.drop_folder import DropFolderResource
from resources.warehouse import WarehouseResource


def build_resources(settings: Settings) -> dict[str, Any]:
    return {
        "warehouse": WarehouseResource(path=str(settings.warehouse_path)),
        "drop_folder": DropFolderResource(root=str(settings.drop_root)),
        # local: real ViT-B-32 weights when they load, else the offline stand-in with a banner;
        # prod: the configured weights or a failed run, never a silent stand-in.
        "clip_model": ClipModelResource(allow_standin_fallback=settings.environment == "local"),
    }
