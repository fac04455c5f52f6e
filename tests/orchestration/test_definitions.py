"""The code location loads, and its settings behave the way the README promises."""

from __future__ import annotations

import dagster as dg
import pytest
import yaml

from orchestration.definitions import build_definitions, defs
from orchestration.jobs import PIPELINE_JOB_NAME
from orchestration.settings import DEMO_LABELLED, REPO_ROOT, MissingSetting, Settings
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


def test_a_launch_from_an_asset_page_runs_like_the_pipeline_job():
    """The UI launches a materialization from an asset page as Dagster's implicit asset job
    (`__ASSET_JOB` sorts before every lower-case job name, and the page takes the first), so
    that job gets the pipeline job's executor, and the instance's run retries cover both."""
    implicit = defs.resolve_implicit_global_asset_job_def()
    pipeline = defs.resolve_job_def(PIPELINE_JOB_NAME)
    assert implicit.executor_def.name == pipeline.executor_def.name == dg.in_process_executor.name
    instance_config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    assert instance_config["run_retries"] == {"enabled": True, "max_retries": 2}


TABLE_ASSETS = {
    "images": "images",
    "clip_embeddings": "clip_embeddings",
    "clip_zero_shot": "clip_zero_shot",
    "vlm_extractions": "vlm_extractions",
    "review_queue": "review_queue",
    "evaluation": "evaluations",
}


def test_every_table_asset_describes_every_column_before_it_is_materialized():
    specs = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    for name, table in TABLE_ASSETS.items():
        metadata = specs[name].metadata
        assert metadata["dagster/table_name"] == table
        columns = metadata["dagster/column_schema"].columns
        assert columns, name
        undescribed = [c.name for c in columns if not c.description]
        assert undescribed == [], f"{name}: {undescribed}"
    untabled = set(specs) - set(TABLE_ASSETS)
    assert untabled == {"label_agreement", "drop_page"}  # no table of their own


def test_the_job_says_what_it_runs():
    description = defs.resolve_job_def(PIPELINE_JOB_NAME).description or ""
    for stage in ("images", "clip_embeddings", "vlm_extractions", "evaluation", "review_queue"):
        assert stage in description
