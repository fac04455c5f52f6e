"""Imported first by conftest: the whole test run keeps model hubs offline.

huggingface_hub and transformers read these variables when they are first imported, so they must
be set before anything imports them. On a machine with internet a test would otherwise download
ViT-B-32 instead of falling back to the stand-in, and the stand-in assertions would fail.
"""

from __future__ import annotations

import os

for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[variable] = "1"
