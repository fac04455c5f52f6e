"""The pipeline job's tags: Dagster's run retries always, and on Kubernetes the run pod's config
(`dagster-k8s/config`, e.g. its GPU) from IMAGE_PIPELINE_RUN_K8S_CONFIG (docs/deploy.md)."""

from __future__ import annotations

import json

import pytest

from orchestration.jobs import K8S_CONFIG_ENV, K8S_CONFIG_TAG, RETRY_TAGS, run_tags

GPU = {
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": 1}}},
    "pod_spec_config": {"node_selector": {"gpu": "h200"}},
}


def test_without_the_variable_the_job_has_only_the_retry_tags():
    assert run_tags({}) == RETRY_TAGS


def test_the_variable_becomes_the_runs_k8s_config_tag():
    tags = run_tags({K8S_CONFIG_ENV: json.dumps(GPU)})
    assert tags == {**RETRY_TAGS, K8S_CONFIG_TAG: GPU}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "is not JSON"),
        ('["container_config"]', "must be an object"),
        ('{"container": {}}', "must be an object with keys among"),
    ],
)
def test_a_malformed_config_fails_when_the_code_location_loads(value: str, message: str):
    with pytest.raises(ValueError, match=message):
        run_tags({K8S_CONFIG_ENV: value})
