"""The vlm_extractions asset: typed tables, resume after a crash, failure before any write, pool."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pytest

from assets.extraction import (
    ALL_ANSWERED_CHECK,
    CONSTANT_ANSWERS_CHECK,
    ENTITY_COUNT_CHECK,
    ENUM_CHECK,
    LABEL_DRIFT_CHECK,
    REFUSALS_CHECK,
    TRUNCATION_CHECK,
    VALIDITY_CHECK,
    ExtractionConfig,
    vlm_extractions,
)
from assets.ingestion import images
from core.tasks.base import Task
from core.tasks.registry import TASKS
from core.vlm.guards import consistency_check_names
from core.vlm.standin import STANDIN_MODEL_ID
from core.vlm.types import ExtractionResult, ImageInput, VLMBackend
from doubles.vlm import INVALID_ERROR, ScriptedVLM, requested_batches
from orchestration.definitions import defs
from orchestration.jobs import PIPELINE_JOB_NAME
from resources.drop_folder import DropFolderResource
from resources.sglang_server import SGLangServer
from resources.vlm import VLM, VLMResource
from tests.fixtures.lake import warehouse_resource

(PEOPLE_CONSISTENCY_CHECK,) = consistency_check_names()  # the bundled spec declares one rule


def _resources(warehouse, drop_root, vlm: VLM):
    return {
        "warehouse": warehouse_resource(warehouse),
        "drop_folder": DropFolderResource(root=str(drop_root)),
        "vlm": vlm,
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
    assert {"images_per_s", "p50_latency_ms", "p95_latency_ms", "validity_rate"} <= set(metadata)
    for name in TASKS:  # one preview per task, its answer's fields as columns
        columns = [c.name for c in metadata[f"preview · {name}"].schema.columns]
        assert columns[:2] == ["path", "status"] and "parsed_json" not in columns
    # per-field confidence: rows for every ok answer (the stand-in's own logprobs, none NULL),
    # and their distribution per field in the metadata
    without = warehouse.rows(
        "SELECT count(*) FROM vlm_extractions e WHERE status = 'ok' AND NOT EXISTS ("
        " SELECT 1 FROM vlm_field_confidence c WHERE c.image_id = e.image_id"
        " AND c.task = e.task AND c.task_fingerprint = e.task_fingerprint"
        " AND c.model_id = e.model_id)"
    )
    assert without == [(0,)]
    assert (
        warehouse.rows(
            "SELECT count(*), count(*) FILTER (confidence IS NULL OR confidence <= 0"
            " OR confidence > 1) FROM vlm_field_confidence"
        )[0][1]
        == 0
    )
    records = [record.data for record in metadata["confidence"].value.records]
    pooled = "regexp_replace(field, '\\[[0-9]+\\]', '[]', 'g')"
    expected = warehouse.rows(
        f"SELECT task, {pooled}, count(*), avg(confidence) FROM vlm_field_confidence"
        " GROUP BY ALL ORDER BY 1, 2"
    )
    assert [(r["task"], r["field"], r["n"]) for r in records] == [e[:3] for e in expected]
    for record, (*_, mean) in zip(records, expected, strict=True):
        assert record["mean"] == pytest.approx(mean, abs=1e-3)
        assert record["p10"] <= record["p50"] <= record["p90"] and 0 <= record["below"] <= 1


@pytest.mark.both_backends
def test_a_run_killed_after_some_batches_resumes_with_only_the_missing_images(
    instance, warehouse, drop_root, sample_drop, tmp_path: Path
):
    instance.add_dynamic_partitions("image_drops", ["samples"])
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    crashing = ScriptedVLM(crash_after_batches=2, request_log=str(first))
    with pytest.raises(KeyboardInterrupt):
        _run(instance, _resources(warehouse, drop_root, crashing))
    done = {r[0] for r in warehouse.rows("SELECT image_id FROM vlm_extractions")}
    assert done == {i for batch in requested_batches(first) for i in batch} and len(done) == 4

    resumed = ScriptedVLM(request_log=str(second))
    assert _run(instance, _resources(warehouse, drop_root, resumed)).success
    resent = {i for batch in requested_batches(second) for i in batch}
    assert resent and not (resent & done)
    assert warehouse.rows("SELECT count(*) FROM vlm_extractions")[0][0] == 7


def test_sglang_down_at_start_fails_clearly_and_writes_nothing(
    instance, warehouse, drop_root, sample_drop
):
    instance.add_dynamic_partitions("image_drops", ["samples"])
    resources = _resources(
        warehouse,
        drop_root,
        # discard port: nothing listens
        VLMResource(backend="sglang", sglang=SGLangServer(url="http://127.0.0.1:9")),
    )
    result = _run(instance, resources, raise_on_error=False)
    assert not result.success
    assert result.is_node_success("images")  # only the step that asks for the VLM fails
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "vlm_extractions"
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
        CONSTANT_ANSWERS_CHECK,
        REFUSALS_CHECK,
        PEOPLE_CONSISTENCY_CHECK,  # the bundled spec's one consistency rule
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
    assert enum.metadata["offending_sample"].value.records[0].data["value"] == "robot"
    assert not again.success  # blocking
    recorded = warehouse.rows(
        "SELECT asset, passed FROM quality_results WHERE check_name = ? ORDER BY evaluated_at",
        [ENUM_CHECK],
    )
    assert recorded == [("vlm_extractions", True), ("vlm_extractions", False)]


def test_a_validity_rate_below_the_error_threshold_blocks_downstream_and_keeps_the_rows(
    instance, warehouse, drop_root, sample_drop
):
    instance.add_dynamic_partitions("image_drops", ["samples"])
    broken = ScriptedVLM(answers="invalid", model_id="broken-model")
    result = _run(instance, _resources(warehouse, drop_root, broken), raise_on_error=False)

    (validity,) = [
        c for c in result.get_asset_check_evaluations() if c.check_name == VALIDITY_CHECK
    ]
    assert not validity.passed and validity.severity == dg.AssetCheckSeverity.ERROR
    assert not result.success  # blocking: label_agreement and evaluation would not start
    assert warehouse.rows("SELECT status, error, count(*) FROM vlm_extractions GROUP BY ALL") == [
        ("invalid", INVALID_ERROR, 7)
    ]


class _SameAnswer(VLMBackend):
    """A schema-valid model that gives every image the same answer."""

    model_id = "stuck-model"

    def extract(self, images: Sequence[ImageInput], task: Task) -> list[ExtractionResult]:
        return [
            ExtractionResult(
                image_id=i.image_id, status="ok", parsed={"age_group": "21-30", "gender": "male"}
            )
            for i in images
        ]


class _StuckVLM(VLM):
    """The `vlm` resource with a model stuck on one answer."""

    def open_backend(self, log: dg.DagsterLogManager | None = None) -> VLMBackend:
        return _SameAnswer()


def test_a_model_that_answers_the_same_for_every_image_warns_without_blocking(
    instance, warehouse, drop_root, sample_drop
):
    instance.add_dynamic_partitions("image_drops", ["samples"])
    result = dg.materialize(
        [images, vlm_extractions],
        resources=_resources(warehouse, drop_root, _StuckVLM()),
        partition_key="samples",
        instance=instance,
        run_config={
            "ops": {"vlm_extractions": {"config": {"tasks": ["age_gender"], "guard_min_images": 7}}}
        },
    )
    assert result.success  # a warning
    evaluations = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert evaluations[VALIDITY_CHECK].passed and evaluations[ENUM_CHECK].passed
    constant = evaluations[CONSTANT_ANSWERS_CHECK]
    assert not constant.passed and constant.severity == dg.AssetCheckSeverity.WARN
    assert {row.data["column"] for row in constant.metadata["offending_sample"].value.records} == {
        "age_group",
        "gender",
    }
    assert constant.metadata["threshold"].value == "warns above 0"


def test_a_run_configured_with_no_task_is_refused():
    with pytest.raises(ValueError, match="at least 1 item"):
        ExtractionConfig(tasks=[])
