"""Local runs get the embedded stand-in; prod names its VLM backend and never gets a stand-in."""

from __future__ import annotations

import pytest

from orchestration.resources import build_vlm_resources
from orchestration.settings import MissingSetting, Settings

PROD = Settings(environment="prod", warehouse_path="/srv/w.duckdb", drop_root="/srv/drops")


def test_local_defaults_to_the_embedded_standin():
    resources = build_vlm_resources(Settings(), {})
    assert set(resources) == {"vlm"}
    assert resources["vlm"].backend == "transformers" and resources["vlm"].standin
    assert resources["vlm"].sglang is None  # no server resource where none is used


def test_local_with_a_server_url_uses_sglang():
    resources = build_vlm_resources(Settings(), {"IMAGE_PIPELINE_SGLANG_URL": "http://gpu:30000"})
    assert resources["vlm"].backend == "sglang"
    assert resources["vlm"].sglang.url == "http://gpu:30000"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "IMAGE_PIPELINE_VLM_BACKEND"),
        ({"IMAGE_PIPELINE_VLM_BACKEND": "sglang"}, "IMAGE_PIPELINE_SGLANG_URL"),
        ({"IMAGE_PIPELINE_VLM_BACKEND": "transformers"}, "IMAGE_PIPELINE_VLM_MODEL"),
    ],
)
def test_prod_never_falls_back(env, message):
    with pytest.raises(MissingSetting, match=message):
        build_vlm_resources(PROD, env)


def test_prod_transformers_forbids_the_standin():
    env = {"IMAGE_PIPELINE_VLM_BACKEND": "transformers", "IMAGE_PIPELINE_VLM_MODEL": "/models/ov"}
    vlm = build_vlm_resources(PROD, env)["vlm"]
    assert vlm.model_path == "/models/ov" and not vlm.standin and not vlm.allow_standin
    assert vlm.sglang is None


def test_prod_sglang_nests_its_server_with_the_key_from_the_environment():
    env = {
        "IMAGE_PIPELINE_VLM_BACKEND": "sglang",
        "IMAGE_PIPELINE_SGLANG_URL": "http://gpu:30000",
        "SGLANG_API_KEY": "s3cret",
    }
    vlm = build_vlm_resources(PROD, env)["vlm"]
    assert vlm.backend == "sglang" and not vlm.allow_standin
    assert vlm.sglang.url == "http://gpu:30000"
    assert vlm.sglang.api_key == "SGLANG_API_KEY"  # an EnvVar: resolved at launch, never stored
