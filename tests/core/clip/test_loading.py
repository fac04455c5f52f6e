"""Loading: stand-in and real weights share one path (`pretrained=<file>`), ids say what loaded."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from core.clip.embed import embed_image_tensors
from core.clip.loading import ModelSpec, ModelUnavailable, load_model, resolve_device
from core.clip.standin import STANDIN_MODEL, standin_checkpoint


def test_standin_loads_through_the_pretrained_path_route(standin_cache: Path, standin_clip):
    checkpoint = standin_cache / STANDIN_MODEL / "seed0.pt"
    assert checkpoint.is_file()
    assert standin_clip.spec.pretrained == str(checkpoint)
    assert standin_clip.model_id == "standin-tiny-clip/seed0"
    assert standin_clip.is_standin
    assert standin_clip.embed_dim == 64 and standin_clip.image_size == (64, 64)
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    loaded = standin_clip.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_the_checkpoint_is_built_once_and_reused(standin_cache: Path):
    path = standin_checkpoint(standin_cache, seed=0)
    before = path.stat().st_mtime_ns
    assert standin_checkpoint(standin_cache, seed=0).stat().st_mtime_ns == before


def test_two_seeds_are_two_models_with_two_ids(standin_cache: Path, standin_clip):
    other = load_model(
        ModelSpec(
            model_name=STANDIN_MODEL,
            pretrained=str(standin_cache / STANDIN_MODEL / "seed1.pt"),
            device="cpu",
        )
    )
    assert other.model_id == "standin-tiny-clip/seed1" != standin_clip.model_id
    pixels = torch.rand(2, 3, 64, 64)
    assert not torch.allclose(
        torch.from_numpy(embed_image_tensors(other, pixels)),
        torch.from_numpy(embed_image_tensors(standin_clip, pixels)),
    )


def test_embeddings_are_unit_length_float32(standin_clip):
    vectors = embed_image_tensors(standin_clip, torch.rand(3, 3, 64, 64))
    assert vectors.dtype.name == "float32" and vectors.shape == (3, 64)
    assert torch.allclose(torch.from_numpy(vectors).norm(dim=1), torch.ones(3), atol=1e-5)


def test_bf16_weights_run_on_the_cpu_and_stay_close_to_fp32(standin_cache: Path, standin_clip):
    bf16 = load_model(
        ModelSpec(
            model_name=STANDIN_MODEL,
            pretrained=standin_clip.spec.pretrained,
            device="cpu",
            precision="bf16",
        )
    )
    assert bf16.dtype == torch.bfloat16
    pixels = torch.rand(4, 3, 64, 64)
    cosine = (embed_image_tensors(bf16, pixels) * embed_image_tensors(standin_clip, pixels)).sum(1)
    assert cosine.min() > 0.98


def test_missing_checkpoint_and_unknown_tag_are_reported(tmp_path: Path):
    with pytest.raises(ModelUnavailable, match="does not exist"):
        load_model(ModelSpec(model_name="ViT-B-32", pretrained=str(tmp_path / "nope.pt")))
    with pytest.raises(ModelUnavailable, match="not a known tag"):
        load_model(ModelSpec(model_name="ViT-B-32", pretrained="no_such_tag", device="cpu"))


def test_fp16_needs_a_gpu_and_auto_picks_what_exists():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            load_model(ModelSpec(pretrained=None, device="cpu", precision="fp16"))
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_model_ids_name_the_weights():
    assert ModelSpec().derived_model_id() == "ViT-B-32/laion2b_s34b_b79k"
    assert ModelSpec(pretrained="/m/ft-2024.pt").derived_model_id() == "ViT-B-32/ft-2024"
    assert ModelSpec(model_id="mine").derived_model_id() == "mine"
    assert "ViT-B-32" in open_clip.list_models()
