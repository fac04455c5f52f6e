"""The GPU benchmark's path, run here on CPU with the tiny config and without the pipeline's
other dependencies (the GPU image has torch and transformers, no pydantic or xgrammar)."""

from __future__ import annotations

import json
import subprocess
import sys

from orchestration.settings import REPO_ROOT

BLOCKED = ("pydantic", "xgrammar", "dagster", "duckdb", "open_clip", "httpx", "torchvision")


def test_gpu_vlm_runs_both_layouts_without_pydantic_or_xgrammar(tmp_path):
    out = tmp_path / "gpu_vlm.json"
    args = ["--tiny", "--images", "2", "--batch", "2", "--device", "cpu", "--size", "128x96"]
    code = (
        "import sys, runpy\n"
        f"for name in {BLOCKED!r}: sys.modules[name] = None\n"
        f"sys.argv = ['gpu_vlm.py', *{args!r}, '--out', {str(out)!r}]\n"
        "runpy.run_path('benchmarks/gpu_vlm.py', run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    old, chosen = report["layouts"]["old"], report["layouts"]["chosen"]
    assert (
        old["vision_encoder_passes_per_image"] == 3
        and chosen["vision_encoder_passes_per_image"] == 1
    )
    assert chosen["prefilled_tokens_per_image"] < old["prefilled_tokens_per_image"]
    assert old["images_per_s"] > 0 and chosen["images_per_s"] > 0
