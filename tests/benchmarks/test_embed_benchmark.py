"""The embedding benchmark runs end to end on a tiny drop and reports every promised key.

It runs the tiny stand-in architecture here to stay fast; the default is ViT-B-32. The peer
(clip-retrieval) lives in its own venv, which CI does not build: pointed at a missing venv the
benchmark must say so in `peer_note` and leave the peer's numbers null, never invent them.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.embed import main
from core.clip.standin import STANDIN_MODEL


def test_benchmark_writes_its_table_as_json(tmp_path: Path):
    out = tmp_path / "embed.json"
    results = main(
        [
            "--model", STANDIN_MODEL, "--files", "6", "--small-files", "3",
            "--large-fraction", "0.5", "--batch-size", "2",
            "--model-batches", "1", "--model-seconds", "0", "--decode-sample", "2",
            "--gemm-shapes", "256x256x256", "--peer-venv", str(tmp_path / "no-such-venv"), "--out", str(out),
        ]
    )  # fmt: skip
    assert json.loads(out.read_text()) == results
    assert results["files"] == results["rows_written"] == 6 and results["large_files"] == 3
    for key in (
        "naive_img_s",
        "ours_img_s",
        "ours_fp32_img_s",
        "model_only_img_s",
        "decode_only_img_s",
        "shared_core_bound_img_s",
        "compute_bound_img_s",
        "compute_bound_fp32_img_s",
        "compute_bound_bf16_img_s",
        "ours_over_naive",
        "ours_over_shared_core_bound",
        "model_only_over_compute_bound",
        "peak_rss_mb_small",
        "peak_rss_mb_large",
    ):
        assert results[key] > 0, key
    bound = 1 / (1 / results["model_only_img_s"] + 1 / results["decode_only_img_s"])
    assert abs(results["shared_core_bound_img_s"] - bound) < 0.01 * bound + 0.01
    flops = results["model_flops_per_image"]
    assert flops > 0 and results["gemm_shapes"] == [[256, 256, 256]]
    expected = results["matmul_bf16_gflop_s"] * 1e9 / flops
    assert abs(results["compute_bound_bf16_img_s"] - expected) < 0.02 * expected + 0.01
    assert results["peer_clip_retrieval_img_s"] is None and results["ours_over_peer"] is None
    assert "no-such-venv" in results["peer_note"] and "not found" in results["peer_note"]
    assert results["bf16_vs_fp32_min_cosine"] >= 0.99
    # The headline compares equal precision (naive is fp32); the precision gain is apart.
    assert results["naive_precision"] == "fp32"
    assert results["ours_over_naive"] == round(
        results["ours_fp32_img_s"] / results["naive_img_s"], 2
    )
    assert results["precision_gain"] == round(results["ours_img_s"] / results["ours_fp32_img_s"], 2)
    assert results["ours_bf16_over_naive"] == round(
        results["ours_img_s"] / results["naive_img_s"], 2
    )


def test_flop_count_of_vit_b_32_matches_its_architecture():
    """ViT-B-32 at 224 px: 50 tokens, 12 blocks of width 768; about 4.4 GFLOP (2 per MAC)."""
    from benchmarks.embed import model_flops_per_image

    flops = model_flops_per_image("ViT-B-32")
    tokens, width, layers = 50, 768, 12
    per_block = 2 * tokens * (4 * width * width + 2 * width * 4 * width) + 2 * 2 * tokens**2 * width
    patch = 2 * 49 * (3 * 32 * 32) * width
    expected = layers * per_block + patch + 2 * width * 512
    assert abs(flops - expected) / expected < 0.02


def test_a_child_that_dies_fails_the_measurement_instead_of_hanging(tmp_path: Path):
    """The child's error must reach the caller: it used to wait on the queue for ever."""
    import pytest

    from benchmarks.embed import measure_ours

    with pytest.raises(RuntimeError, match="exited 1"):
        measure_ours(tmp_path, "bench", {}, STANDIN_MODEL, "fp16", tmp_path / "none.pt")
