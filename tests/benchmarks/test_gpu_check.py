"""The GPU check's code path, run on the CPU (`--allow-cpu`) at toy sizes: every key it promises
is filled, GPU-only numbers are null and say why, and the VLM wrote one row per image and task.
On a machine with a GPU `benchmarks/gpu_check.sh` runs the same code at full size."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmarks.gpu_check import main
from core.clip.standin import STANDIN_MODEL


def test_gpu_check_runs_its_code_path_on_the_cpu(tmp_path: Path):
    out = tmp_path / "gpu_check.json"
    results = main(
        [
            "--allow-cpu", "--model", STANDIN_MODEL, "--files", "4", "--batch-size", "2",
            "--model-batches", "1", "--model-seconds", "0", "--vlm-images", "2",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert json.loads(out.read_text()) == results
    assert results["clip_rows_written"] == 4
    assert results["clip_cpu_decode_img_s"] > 0 and results["model_only_bf16_img_s"] > 0
    assert results["compute_bound_bf16_img_s"] > 0
    assert results["vlm_standin_rows"] == 2 * results["vlm_standin_tasks"]
    if not torch.cuda.is_available():
        assert results["gpu"] is None and results["clip_gpu_decode_img_s"] is None
        assert "no CUDA device" in results["clip_gpu_decode_note"]
        assert results["model_only_fp16_img_s"] is None
