"""GPU JPEG decoding: when it is chosen, and per-file CPU fallback (run here with device="cpu")."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from core.clip.decoding import load_tensors
from core.clip.gpu_decode import GpuPreprocess, decode_batch, gpu_decoding_enabled
from tests.conftest import SAMPLES

MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD


def test_gpu_decoding_is_chosen_only_for_a_cuda_model():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert gpu_decoding_enabled("auto", cuda)
    assert not gpu_decoding_enabled("auto", cpu)
    assert not gpu_decoding_enabled("off", cuda)
    assert gpu_decoding_enabled("on", cuda)
    with pytest.raises(ValueError, match="CUDA"):
        gpu_decoding_enabled("on", cpu)
    with pytest.raises(ValueError):
        gpu_decoding_enabled("yes", cuda)


def test_batch_decode_matches_the_cpu_path_and_falls_back_per_file(tmp_path: Path):
    preprocess = open_clip.image_transform(64, is_train=False)
    good = sorted(SAMPLES.glob("*.jpg"))[:2]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good[0].read_bytes()[:2000])  # a JPEG header, then nothing
    png = tmp_path / "image.png"
    from PIL import Image

    Image.open(good[1]).save(png)
    calls: list[bytes] = []

    def cpu(data: bytes) -> torch.Tensor:
        calls.append(data)
        return load_tensors(data, {"g": preprocess}, None)["g"]

    datas = [p.read_bytes() for p in (good[0], broken, png, good[1])]
    with pytest.raises(Exception):  # noqa: B017 - the truncated file fails on the CPU as well
        decode_batch(datas, GpuPreprocess(64, MEAN, STD), cpu, device="cpu")
    assert calls == [datas[1]]  # the good JPEG decoded in the batch; the bad one fell back

    calls.clear()
    pixels, fallbacks = decode_batch(
        [datas[0], datas[2], datas[3]], GpuPreprocess(64, MEAN, STD), cpu, device="cpu"
    )
    assert pixels.shape == (3, 3, 64, 64) and fallbacks == [1]
    reference = cpu(datas[3])
    assert (pixels[2] - reference).abs().mean() < 0.05  # same transform, another resampler
