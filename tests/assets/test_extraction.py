"""The vlm_extractions asset: typed tables, resume after a crash, failure before any write, pool."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
import pytest

from assets.extraction import (
    ALL_ANSWERED_CHECK,
    ENTITY_COUNT_CHECK,
    ENUM_CHECK,
    LABEL_DRIFT_CHECK,
    TRUNCATION_CHECK,
    VALIDITY_CHECK,
    ExtractionConfig,
    vlm_extractions,
)
from assets.ingestion import images
from core.tasks.base import Task
from core.tasks.registry import TASKS
from core.vlm.standin import STANDIN_MODEL_ID
from core.vlm.types import ExtractionResult, ImageInput, VLMBackend
from doubles.sglang_server import standin_backend
from orchestration.definitions import defs
from orchestration.jobs import PIPELINE_JOB_NAME
from resources.drop_folder import DropFolderResource
from resources.sglang_server import SGLangServer
from resources.vlm import VLMResource
from resources.warehouse import WarehouseResource


def _resources(warehouse, drop_root, vlm: VLMResource, sglang: SGLangServer | None = None):
    return {
        "warehouse": WarehouseResource(path=str(warehouse.path)),
        "drop_folder": DropFolderResource(root=str(drop_root)),
        "vlm": vlm,
        "sglang": sglang or SGLangServer(),
    }


def _run(instance, resources, tasks=("age_gender",), batch_size=2, **kwargs):
    return dg.materialize(
        [images, vlm_extractions],
        resources=resources,
        partition_key="samples",
        instance=instance,
        run_config={
            "ops": {"vlm_extractions": {"config": {"tasks": list(tasks), "batch_size": batch_size}}}
        },
        **kwargs,
    )


def test_the_gpu_pool_is_declared():
    assert vlm_extractions.op.pool == "gpu"
    job = defs.resolve_job_def(PIPELINE_JOB_NAME)
    assert "vlm_extractions" in {node.name for node in job.graph.node_defs}


def test_demo_chain_fills_extractions_and_typed_tables(instance, warehouse, drop_root, sample_drop):
    instance.add_dynamic_partitions("image_drops", ["samples"])
    vlm = VLMResource(standin=True, batch_size=4)
    result = _run(instance, _resources(warehouse, drop_root, vlm), tasks=list(TASKS), batch_size=4)
    assert result.success
    counts = dict(warehouse.rows("SELECT task, count(*) FROM vlm_extractions GROUP BY 1"))
    assert counts == {name: 7 for name in TASKS}
    assert warehouse.rows("SELECT DISTINCT model_id FROM vlm_extractions") == [(STANDIN_MODEL_ID,)]
    ok = dict(
        warehouse.rows("SELECT task, count(*) FROM vlm_extractions WHERE status='ok' GROUP BY 1")
    )
    for name, task in TASKS.items():
        assert warehouse.rows(f'SELECT count(*) FROM "{task.tables.table}"')[0][0] == ok.get(
            name, 0
        )
    (check,) = [
        c for c in result.get_asset_check_evaluations() if c.check_name == ALL_ANSWERED_CHECK
    ]
    assert check.passed
    metadata = result.asset_materializations_for_node("vlm_extractions")[0].metadata
    assert {"images_per_s", "p50_latency_ms", "p95_latency_ms", "validity_rate", "preview"} <= set(
        metadata
    )


class _CrashAfter(VLMBackend):
    """Wraps the stand-in, records what it is asked for, and can die after N batches."""

    def __init__(self, crash_after: int | None) -> None:
        self.inner = standin_backend()
        self.crash_after = crash_after
        self.batches: list[list[str]] = []

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def extract(self, images: Sequence[ImageInput], task: Task) -> list[ExtractionResult]:
        if self.crash_after is not None and len(self.batches) >= self.crash_after:
            raise KeyboardInterrupt("killed")  # like the run process being killed
        self.batches.append([i.image_id for i in images])
        return self.inner.extract(images, task)


def test_a_run_killed_after_some_batches_resumes_with_only_the_missing_images(
    instance, warehouse, drop_root, sample_drop, monkeypatch
):
    instance.add_dynamic_partitions("image_drops", ["samples"])
    first = _CrashAfter(crash_after=2)
    monkeypatch.setattr(VLMResource, "get_backend", lambda self, sglang, log=None: first)
    with pytest.raises(KeyboardInterrupt):
        _run(instance, _resources(warehouse, drop_root, VLMResource()))
    done = {r[0] for r in warehouse.rows("SELECT image_id FROM vlm_extractions")}
    assert done == {i for batch in first.batches for i in batch} and len(done) == 4

    second = _CrashAfter(crash_after=None)
    monkeypatch.setattr(VLMResource, "get_backend", lambda self, sglang, log=None: second)
    assert _run(instance, _resources(warehouse, drop_root, VLMResource())).success
    resent = {i for batch in second.batches for i in batch}
    assert resent and not (resent & done)
    assert warehouse.rows("SELECT count(*) FROM vlm_extractions")[0][0] == 7


def test_sglang_down_at_start_fails_clearly_and_writes_nothing(
    instance, warehouse, drop_root, sample_drop
):
    instance.add_dynamic_partitions("image_drops", ["samples"])
    resources = _resources(
        warehouse,
        drop_root,
        VLMResource(backend="sglang"),
        SGLangServer(url="http://127.0.0.1:9"),  # discard port: nothing listens
    )
    result = _run(instance, resources, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "http://127.0.0.1:9 is unreachable" in str(failure.step_failure_data.error)
    tables = {t for (t,) in warehouse.rows("SELECT table_name FROM information_schema.tables")}
    assert warehouse.rows("SELECT count(*) FROM vlm_extractions")[0][0] == 0
    assert not {t for t in tables if t.startswith("task_")}


def test_quality_checks_pass_on_the_stand_in_and_fail_on_a_planted_enum_value(
    instance, warehouse, drop_root, sample_drop
):
    instance.add_dynamic_partitions("image_drops", ["samples"])
    resources = _resources(warehouse, drop_root, VLMResource(standin=True, batch_size=4))
    first = _run(instance, resources, tasks=["age_gender"], batch_size=4)
    assert first.success
    evaluations = {
        c.check_name: c
        for c in first.get_asset_check_evaluations()
        if c.asset_key == vlm_extractions.key
    }
    assert set(evaluations) == {
        ALL_ANSWERED_CHECK,
        VALIDITY_CHECK,
        TRUNCATION_CHECK,
        ENUM_CHECK,
        ENTITY_COUNT_CHECK,
        LABEL_DRIFT_CHECK,
    }
    assert evaluations[ENUM_CHECK].passed and evaluations[ALL_ANSWERED_CHECK].passed
    with warehouse.transaction() as conn:  # a value constrained decoding should never allow
        conn.execute(
            "UPDATE task_age_gender SET gender = 'robot'"
            " WHERE image_id = (SELECT min(image_id) FROM task_age_gender)"
        )
    again = _run(instance, resources, tasks=["age_gender"], batch_size=4, raise_on_error=False)
    (enum,) = [c for c in again.get_asset_check_evaluations() if c.check_name == ENUM_CHECK]
    assert not enum.passed
    assert enum.metadata["offending_sample"].value[0]["value"] == "robot"
    assert not again.success  # blocking
    recorded = warehouse.rows(
        "SELECT asset, passed FROM quality_results WHERE check_name = ? ORDER BY evaluated_at",
        [ENUM_CHECK],
    )
    assert recorded == [("vlm_extractions", True), ("vlm_extractions", False)]


class _AlwaysInvalid(VLMBackend):
    """A model whose every answer breaks the schema."""

    model_id = "broken-model"

    def extract(self, images: Sequence[ImageInput], task: Task) -> list[ExtractionResult]:
        return [
            ExtractionResult(image_id=i.image_id, status="invalid", error="scenery: not allowed")
            for i in images
        ]


def test_a_validity_rate_below_the_error_threshold_blocks_downstream_and_keeps_the_rows(
    instance, warehouse, drop_root, sample_drop, monkeypatch
):
    instance.add_dynamic_partitions("image_drops", ["samples"])
    monkeypatch.setattr(VLMResource, "get_backend", lambda self, sglang, log=None: _AlwaysInvalid())
    result = _run(instance, _resources(warehouse, drop_root, VLMResource()), raise_on_error=False)

    (validity,) = [
        c for c in result.get_asset_check_evaluations() if c.check_name == VALIDITY_CHECK
    ]
    assert not validity.passed and validity.severity == dg.AssetCheckSeverity.ERROR
    assert not result.success  # blocking: label_agreement and evaluation would not start
    assert warehouse.rows("SELECT status, error, count(*) FROM vlm_extractions GROUP BY ALL") == [
        ("invalid", "scenery: not allowed", 7)
    ]


def test_a_run_configured_with_no_task_is_refused():
    with pytest.raises(ValueError, match="at least 1 item"):
        ExtractionConfig(tasks=[])
