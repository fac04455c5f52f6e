"""The CLIP resource: loads once, falls back to the stand-in only where allowed, and says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.clip.loading import ModelUnavailable
from core.clip.standin import STANDIN_MODEL
from resources.clip_model import ClipModelResource


def test_a_model_is_shared_while_held_and_released_by_its_last_holder(standin_cache: Path):
    from resources import clip_model

    resource = ClipModelResource(
        model_name=STANDIN_MODEL,
        pretrained=str(standin_cache / STANDIN_MODEL / "seed1.pt"),
        device="cpu",
        s2_scales=[1, 2],
    )
    lines: list[str] = []
    with resource.loaded(info=lines.append) as first:
        assert first.model_id == "standin-tiny-clip/seed1"
        with resource.loaded(info=lines.append) as again:
            assert again is first  # one load while held
        assert resource.spec() in clip_model._cache
    assert resource.spec() not in clip_model._cache  # the last holder released it
    assert not hasattr(first, "model")  # its weights dropped though the caller holds the object
    assert lines[-1] == "CLIP model released: standin-tiny-clip/seed1"
    assert sum("released" in line for line in lines) == 1
    assert resource.options().kinds == ("global", "s2")


def test_local_falls_back_to_the_standin_with_a_banner(standin_cache: Path, tmp_path: Path, capsys):
    warnings: list[str] = []
    resource = ClipModelResource(
        pretrained=str(tmp_path / "missing.pt"),
        device="cpu",
        allow_standin_fallback=True,
        standin_cache_dir=str(standin_cache),
    )
    with resource.loaded(warn=warnings.append) as clip:
        assert clip.is_standin and clip.model_id == "standin-tiny-clip/seed0"
    assert "USING THE OFFLINE STAND-IN" in warnings[0] and "missing.pt" in warnings[0]
    assert "USING THE OFFLINE STAND-IN" in capsys.readouterr().err


def test_prod_never_falls_back(tmp_path: Path):
    resource = ClipModelResource(pretrained=str(tmp_path / "missing.pt"), device="cpu")
    with pytest.raises(ModelUnavailable), resource.loaded():
        pass


def test_precision_is_validated():
    with pytest.raises(ValueError, match="precision"):
        ClipModelResource(precision="int8").spec()


def test_definitions_wire_the_fallback_by_environment(settings, monkeypatch):
    from orchestration.resources import build_resources

    assert build_resources(settings)["clip_model"].allow_standin_fallback is True
    monkeypatch.setenv("IMAGE_PIPELINE_VLM_BACKEND", "sglang")  # prod names every backend
    monkeypatch.setenv("IMAGE_PIPELINE_SGLANG_URL", "http://127.0.0.1:30000")
    prod = settings.model_copy(update={"environment": "prod"})
    assert build_resources(prod)["clip_model"].allow_standin_fallback is False


def test_the_standin_test_implementation_loads_through_the_resource_path(standin_cache: Path):
    from doubles.clip import StandinClip

    resource = StandinClip(standin_cache_dir=str(standin_cache), seed=1)
    with resource.loaded() as clip:
        assert clip.model_id == "standin-tiny-clip/seed1" and clip.is_standin
    assert resource.spec().pretrained == str(standin_cache / STANDIN_MODEL / "seed1.pt")
    with pytest.raises(ValueError, match="precision"):
        StandinClip(standin_cache_dir=str(standin_cache), precision="int8").spec()
