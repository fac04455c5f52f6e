"""Where the locally built stand-in models live when a deployment names no folder.

`core` takes the folder as an argument; the resources choose it, so this default lives here.
"""

import os
from pathlib import Path

MODEL_CACHE_ENV = "IMAGE_PIPELINE_MODEL_CACHE"
REPO_MODEL_CACHE = Path(__file__).resolve().parent.parent / "data" / "models"


def default_model_cache() -> str:
    """IMAGE_PIPELINE_MODEL_CACHE, else data/models/ in the repository."""
    return os.environ.get(MODEL_CACHE_ENV) or str(REPO_MODEL_CACHE)
