"""The code location loads, and its settings behave the way the README promises."""

from __future__ import annotations

import dagster as dg
import pytest

from orchestration.definitions import build_definitions, defs
from orchestration.jobs import PIPELINE_JOB_NAME
from orchestration.settings import DEMO_LABELLED, MissingSetting, Settings
from sensors.drop_sensor import SENSOR_NAME


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def(PIPELINE_JOB_NAME) is not None


def test_the_drop_sensor_runs_by_default_and_can_be_switched_off():
    running = build_definitions(Settings.from_env({}))
    assert running.resolve_sensor_def(SENSOR_NAME).default_status == dg.DefaultSensorStatus.RUNNING
    stopped = build_definitions(Settings.from_env({"IMAGE_DROP_SENSOR": "stopped"}))
    assert stopped.resolve_sensor_def(SENSOR_NAME).default_status == dg.DefaultSensorStatus.STOPPED


def test_the_sensor_gets_the_drop_folder_and_the_warehouse_only():
    """The warehouse tells it which drops are ingested already; no model resource is built."""
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    assert sensor.required_resource_keys == {"drop_folder", "warehouse"}


def test_the_pipeline_job_runs_in_one_process_and_is_retried_by_dagster():
    """One process per run: a no-op or small drop pays for one start and one torch import,
    not one per step; run retries re-execute from the failed steps."""
    job = defs.resolve_job_def(PIPELINE_JOB_NAME)
    assert job.executor_def.name == dg.in_process_executor.name
    assert job.tags["dagster/max_retries"] == "2"
    assert job.tags["dagster/retry_strategy"] == "FROM_FAILURE"


def test_production_never_falls_back_to_demo_paths():
    with pytest.raises(MissingSetting, match="IMAGE_PIPELINE_WAREHOUSE"):
        Settings.from_env({"IMAGE_PIPELINE_ENV": "prod", "IMAGE_DROP_ROOT": "/srv/drops"})
    settings = Settings.from_env(
        {
            "IMAGE_PIPELINE_ENV": "prod",
            "IMAGE_DROP_ROOT": "/srv/drops",
            "IMAGE_PIPELINE_WAREHOUSE": "/srv/w.duckdb",
        }
    )
    assert str(settings.warehouse_path) == "/srv/w.duckdb"


def test_local_defaults_live_under_data():
    settings = Settings.from_env({})
    assert settings.warehouse_path.parent.name == "data"
    assert settings.drop_root.name == "drops"


def test_every_asset_has_a_check_and_the_job_runs_them_all():
    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    assert {key.to_user_string() for key in keys} >= {"label_agreement", "evaluation"}
    for key in keys:
        assert graph.get(key).check_keys, f"{key.to_user_string()} has no asset check"
    job = defs.resolve_job_def(PIPELINE_JOB_NAME)
    assert {"label_agreement", "evaluation"} <= {node.name for node in job.graph.node_defs}


def test_the_labelled_set_is_the_demo_one_locally_and_explicit_in_prod():
    assert Settings.from_env({}).labelled_path == DEMO_LABELLED
    assert Settings.from_env({"IMAGE_PIPELINE_LABELLED": "none"}).labelled_path is None
    prod = {"IMAGE_PIPELINE_ENV": "prod", "IMAGE_PIPELINE_WAREHOUSE": "/w", "IMAGE_DROP_ROOT": "/d"}
    assert Settings.from_env(prod).labelled_path is None
    labelled = Settings.from_env({**prod, "IMAGE_PIPELINE_LABELLED": "/labels.csv"})
    assert str(labelled.labelled_path) == "/labels.csv"
