"""The CLIP assets through Dagster, with the offline stand-in loaded from a checkpoint path."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from assets.embeddings import (
    EMBEDDING_CHECKS,
    LABEL_DRIFT_CHECK,
    NEAR_DUPLICATES_CHECK,
    ZERO_SHOT_CHECKS,
    ZeroShotConfig,
    clip_embeddings,
    clip_zero_shot,
)
from assets.ingestion import images
from core.clip import checks
from core.tasks.label_sets import LABEL_SETS
from core.warehouse import Warehouse
from doubles.clip import StandinClip
from resources.drop_folder import DropFolderResource
from tests.conftest import SAMPLES, copy_samples
from tests.fixtures.lake import warehouse_resource
from tests.fixtures.metadata import column_of

SEED0 = "standin-tiny-clip/seed0"


def run(
    instance: dg.DagsterInstance,
    warehouse: Warehouse,
    drop_root: Path,
    drop_id: str,
    cache: Path,
    *,
    seed: int = 0,
    run_config: dict | None = None,
    **clip_settings,
) -> dg.ExecuteInProcessResult:
    if not instance.has_dynamic_partition("image_drops", drop_id):
        instance.add_dynamic_partitions("image_drops", [drop_id])
    clip = StandinClip(standin_cache_dir=str(cache), seed=seed, batch_size=3, **clip_settings)
    return dg.materialize(
        [images, clip_embeddings, clip_zero_shot],
        instance=instance,
        partition_key=drop_id,
        resources={
            "warehouse": warehouse_resource(warehouse),
            "drop_folder": DropFolderResource(root=str(drop_root)),
            "clip_model": clip,
        },
        run_config=run_config,
        raise_on_error=False,
    )


def written(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    metadata = result.asset_materializations_for_node("clip_embeddings")[0].metadata
    return column_of(metadata["per_kind"].value, "kind", "embedded_this_run")


def check(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def near_duplicate_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    return check(result, NEAR_DUPLICATES_CHECK)


def test_samples_get_embeddings_and_zero_shot_labels(
    instance, warehouse, drop_root, sample_drop, standin_cache
):
    result = run(instance, warehouse, drop_root, "samples", standin_cache)
    assert result.success
    metadata = result.asset_materializations_for_node("clip_embeddings")[0].metadata
    assert metadata["model_id"].value == SEED0 and metadata["dimension"].value == 64
    assert column_of(metadata["per_kind"].value, "kind", "embedded_this_run") == {"global": 7}
    assert column_of(metadata["per_kind"].value, "kind", "dim") == {"global": 64}
    assert metadata["images_per_s"].value > 0
    assert len(metadata["preview"].value.records) == 7
    # short cells: vector values and probabilities are shown to 3 decimals
    short_number = r"-?\d+\.\d{1,3}|-?\d+|-?\d(\.\d+)?e-?\d+"
    for record in metadata["preview"].value.records:
        values = record.data["first_values"].strip("[]").split(", ")
        assert len(values) == 4 and all(re.fullmatch(short_number, v) for v in values), values
    zero_shot_preview = result.asset_materializations_for_node("clip_zero_shot")[0].metadata
    previews = [key for key in zero_shot_preview if key.startswith("preview · ")]
    assert previews  # one per label set, the set not repeated on every row
    for record in (r for key in previews for r in zero_shot_preview[key].value.records):
        assert "label_set" not in record.data
        for item in record.data["probabilities"].split(", "):
            assert re.fullmatch(rf"[\w-]+=({short_number})", item), item
    schema = {c.name: c.type for c in metadata["dagster/column_schema"].value.columns}
    assert schema["embedding"] == "FLOAT[64]"
    # the per-dimension table clip_embeddings_d64 gets the documented columns' descriptions
    assert all(c.description for c in metadata["dagster/column_schema"].value.columns)
    rows = warehouse.rows(
        "SELECT model_id, kind, dim, len(embedding), abs(list_dot_product(embedding, embedding) - 1)"
        " FROM clip_embeddings"
    )
    assert len(rows) == 7
    assert all(r[:4] == (SEED0, "global", 64, 64) and r[4] < 1e-5 for r in rows)
    assert warehouse.columns("clip_embeddings_d64")[4] == ("embedding", "FLOAT[64]")
    zero_shot = warehouse.rows(
        "SELECT label_set, count(*), max(abs(list_sum(map_values(probabilities)) - 1)),"
        " bool_and(list_contains(map_keys(probabilities), top_label)),"
        " bool_and(top_probability = list_max(map_values(probabilities)))"
        " FROM clip_zero_shot GROUP BY 1 ORDER BY 1"
    )
    assert [r[0] for r in zero_shot] == sorted(LABEL_SETS)
    for _, count, error, top_in_labels, top_is_max in zero_shot:
        assert count == 7 and error < 1e-9 and top_in_labels and top_is_max
    assert near_duplicate_check(result).passed  # seven different photographs
    assert all(check(result, name).passed for name in EMBEDDING_CHECKS)


def test_a_bad_vector_fails_the_blocking_check_and_a_rerun_reports_it(
    instance, warehouse, drop_root, standin_cache
):
    copy_samples(drop_root, "one", ["coins.jpg", "coffee.jpg"])
    assert run(instance, warehouse, drop_root, "one", standin_cache).success
    with warehouse.transaction() as conn:  # plant a vector that is not unit length
        conn.execute(
            "UPDATE clip_embeddings_d64 SET embedding = list_transform(embedding::FLOAT[],"
            " lambda x: x * 2)::FLOAT[64] WHERE image_id = (SELECT min(image_id) FROM images)"
        ).fetchall()
    again = run(instance, warehouse, drop_root, "one", standin_cache)
    evaluation = check(again, checks.EMBEDDING_UNIT_NORM)
    assert not evaluation.passed
    assert evaluation.metadata["off_norm"].value == 1
    (offending,) = [r.data for r in evaluation.metadata["offending_sample"].value.records]
    assert offending["norm"] == pytest.approx(2.0, rel=1e-5)
    assert check(again, checks.EMBEDDING_ONE_PER_IMAGE).passed
    recorded = warehouse.rows(
        "SELECT passed FROM quality_results WHERE check_name = ? AND run_id = ?",
        [checks.EMBEDDING_UNIT_NORM, again.run_id],
    )
    assert recorded == [(False,)]
    assert not again.success  # blocking: clip_zero_shot did not run on it


def test_reruns_embed_nothing_new(instance, warehouse, drop_root, sample_drop, standin_cache):
    assert run(instance, warehouse, drop_root, "samples", standin_cache).success
    before = warehouse.rows("SELECT image_id, created_at FROM clip_embeddings ORDER BY 1")
    again = run(instance, warehouse, drop_root, "samples", standin_cache)
    assert again.success and written(again) == {"global": 0}
    assert warehouse.rows("SELECT image_id, created_at FROM clip_embeddings ORDER BY 1") == before
    labelled = again.asset_materializations_for_node("clip_zero_shot")[0].metadata
    labelled_now = column_of(labelled["labelled_this_run"].value, "label_set", "images_labelled")
    assert set(labelled_now) == set(LABEL_SETS) and set(labelled_now.values()) == {0}


@pytest.mark.both_backends  # its warehouse SQL runs on the file and the lake
def test_an_image_in_two_drops_is_embedded_once(instance, warehouse, drop_root, standin_cache):
    copy_samples(drop_root, "first", ["coffee.jpg", "rocket.jpg"])
    copy_samples(drop_root, "second", ["rocket.jpg", "chelsea.jpg"])
    assert written(run(instance, warehouse, drop_root, "first", standin_cache)) == {"global": 2}
    second = run(instance, warehouse, drop_root, "second", standin_cache)
    assert written(second) == {"global": 1}  # only chelsea is new
    assert warehouse.rows("SELECT count(*), count(DISTINCT image_id) FROM clip_embeddings") == [
        (3, 3)
    ]
    assert warehouse.rows(
        "SELECT count(*) FROM clip_zero_shot z JOIN image_files f USING (image_id)"
        " WHERE f.drop_id = 'second' AND z.label_set = 'scenery'"
    ) == [(2,)]


def test_two_models_and_an_s2_kind_coexist(instance, warehouse, drop_root, standin_cache):
    copy_samples(drop_root, "pair", ["coffee.jpg", "astronaut.jpg"])
    assert run(instance, warehouse, drop_root, "pair", standin_cache).success
    other = run(instance, warehouse, drop_root, "pair", standin_cache, seed=1, s2_scales=[1, 2])
    assert other.success and written(other) == {"global": 2, "s2": 2}
    assert warehouse.rows(
        "SELECT model_id, kind, dim, count(*) FROM clip_embeddings GROUP BY ALL ORDER BY ALL"
    ) == [
        (SEED0, "global", 64, 2),
        ("standin-tiny-clip/seed1", "global", 64, 2),
        ("standin-tiny-clip/seed1", "s2", 128, 2),
    ]
    assert warehouse.rows("SELECT count(DISTINCT model_id) FROM clip_zero_shot") == [(2,)]
    # The nearest-neighbour query of docs/embeddings.md runs on the typed table as written there.
    nearest = warehouse.rows(
        """
        SELECT b.image_id, array_cosine_similarity(a.embedding, b.embedding) AS cosine
        FROM clip_embeddings_d64 a JOIN clip_embeddings_d64 b USING (model_id, kind)
        WHERE a.image_id = (SELECT image_id FROM images WHERE first_path = 'pair/coffee.jpg')
          AND a.model_id = ? AND kind = 'global'
        ORDER BY cosine DESC LIMIT 2
        """,
        [SEED0],
    )
    assert nearest[0][1] > 0.999 and nearest[1][1] < 0.98


def reencode(source: Path, target: Path, quality: int = 80) -> None:
    buffer = io.BytesIO()
    Image.open(source).convert("RGB").save(buffer, "JPEG", quality=quality)
    target.write_bytes(buffer.getvalue())


def test_near_duplicate_check_fires_on_a_reencoded_copy_in_a_later_drop(
    instance, warehouse, drop_root, standin_cache
):
    copy_samples(drop_root, "originals", ["chelsea.jpg", "coffee.jpg"])
    assert near_duplicate_check(
        run(instance, warehouse, drop_root, "originals", standin_cache)
    ).passed
    later = drop_root / "later"
    later.mkdir()
    reencode(SAMPLES / "chelsea.jpg", later / "chelsea-copy.jpg")
    shutil.copy2(SAMPLES / "rocket.jpg", later / "rocket.jpg")
    check = near_duplicate_check(run(instance, warehouse, drop_root, "later", standin_cache))
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["pairs"].value == 1
    (record,) = check.metadata["pairs_preview"].value.records
    assert {record.data["path"], record.data["other_path"]} == {
        "later/chelsea-copy.jpg",
        "originals/chelsea.jpg",
    }
    assert record.data["cosine"] >= 0.98 and record.data["other_in_drop"] is False


def test_near_duplicate_check_fires_inside_one_drop_but_not_for_different_images(
    instance, warehouse, drop_root, standin_cache
):
    folder = copy_samples(drop_root, "mixed", ["astronaut.jpg", "camera.jpg", "coins.jpg"])
    reencode(SAMPLES / "astronaut.jpg", folder / "astronaut-small.jpg", quality=60)
    check = near_duplicate_check(run(instance, warehouse, drop_root, "mixed", standin_cache))
    assert not check.passed and check.metadata["pairs"].value == 1
    cosines = warehouse.rows(
        "SELECT array_cosine_similarity(a.embedding, b.embedding) FROM clip_embeddings_d64 a,"
        " clip_embeddings_d64 b WHERE a.image_id < b.image_id"
    )
    assert sorted(c for (c,) in cosines)[-2] < 0.98  # only the copy pair is above the threshold
    assert np.isfinite([c for (c,) in cosines]).all()


def test_the_pipeline_job_runs_the_clip_assets_after_images():
    from orchestration.definitions import defs
    from orchestration.jobs import PIPELINE_JOB_NAME

    job = defs.resolve_job_def(PIPELINE_JOB_NAME)
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert {"images", "clip_embeddings", "clip_zero_shot"} <= keys
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("clip_zero_shot")).parent_keys == {dg.AssetKey("clip_embeddings")}
    assert graph.get(dg.AssetKey("clip_embeddings")).parent_keys == {dg.AssetKey("images")}


def test_zero_shot_checks_pass_on_the_samples_and_block_on_planted_probabilities(
    instance, warehouse, drop_root, standin_cache
):
    copy_samples(drop_root, "one", ["coins.jpg", "coffee.jpg"])
    first = run(instance, warehouse, drop_root, "one", standin_cache)
    assert first.success
    for name in (*ZERO_SHOT_CHECKS, LABEL_DRIFT_CHECK):
        assert check(first, name).passed
    with warehouse.transaction() as conn:  # probabilities that no longer sum to 1
        conn.execute(
            "UPDATE clip_zero_shot SET probabilities = map_from_entries(list_transform("
            "map_entries(probabilities), lambda e: {'key': e.key, 'value': e.value / 2}))"
            " WHERE label_set = 'scenery' AND image_id = (SELECT min(image_id) FROM images)"
        )
    again = run(instance, warehouse, drop_root, "one", standin_cache)
    evaluation = check(again, checks.ZERO_SHOT_PROBABILITIES)
    assert not evaluation.passed
    (offending,) = [r.data for r in evaluation.metadata["offending_sample"].value.records]
    assert offending["label_set"] == "scenery"
    assert offending["problem"] == "probabilities do not sum to 1"
    assert check(again, checks.ZERO_SHOT_ONE_PER_IMAGE).passed
    assert not again.success  # blocking


def test_label_drift_warns_when_a_later_drop_looks_different(
    instance, warehouse, drop_root, standin_cache
):
    copy_samples(drop_root, "first", ["coins.jpg", "coffee.jpg", "chelsea.jpg"])
    assert run(instance, warehouse, drop_root, "first", standin_cache).success
    copy_samples(drop_root, "second", ["rocket.jpg", "hubble_deep_field.jpg"])
    # drops this small are below the check's default minimum (10 images): lower it
    small = {"ops": {"clip_zero_shot": {"config": {"drift_min_images": 2}}}}
    second = run(instance, warehouse, drop_root, "second", standin_cache, run_config=small)
    (seen,) = warehouse.rows(
        "SELECT list(DISTINCT z.top_label) FROM clip_zero_shot z JOIN image_files f"
        " USING (image_id) WHERE f.drop_id = 'second' AND z.label_set = 'scenery'"
    )[0]
    other = next(label for label in LABEL_SETS["scenery"].labels if label not in seen)
    with warehouse.transaction() as conn:  # the earlier drop saw nothing the second one sees
        conn.execute(
            "UPDATE clip_zero_shot SET top_label = ? WHERE label_set = 'scenery' AND image_id IN"
            " (SELECT image_id FROM image_files WHERE drop_id = 'first')",
            [other],
        )
    again = run(instance, warehouse, drop_root, "second", standin_cache, run_config=small)
    drift = check(again, LABEL_DRIFT_CHECK)
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.WARN
    assert f"| {other} | 0 | 3 |" in drift.metadata["distribution"].value
    assert again.success  # a warning, not a blocker
    assert check(second, LABEL_DRIFT_CHECK).severity == dg.AssetCheckSeverity.WARN


def test_zero_shot_configured_with_no_label_set_is_refused():
    with pytest.raises(ValueError, match="at least 1 item"):
        ZeroShotConfig(label_sets=[])
