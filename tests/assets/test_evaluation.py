"""label_agreement and evaluation through Dagster, on rows planted with the production writers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from assets.evaluation import (
    AGREEMENT_CHECK,
    LABELLED_INGESTED_CHECK,
    evaluation,
    label_agreement,
)
from core.clip.standin import STANDIN_MODEL
from core.ingest.ingest import DropIngestor
from core.ingest.scan import DropRef
from core.quality.labelled import load_folder
from core.warehouse import Warehouse
from resources.clip_model import ClipModelResource
from resources.labelled_set import LabelledSetResource
from resources.warehouse import WarehouseResource
from tests.fixtures.contracts import add_drop, add_extraction, add_zero_shot

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CLIP = "standin-clip"
VLM = "llava-real"


def materialize(
    instance: dg.DagsterInstance,
    warehouse: Warehouse,
    assets: list,
    *,
    partition: str | None = None,
    labelled: str = "",
    run_config: dict | None = None,
    clip_cache: Path | None = None,
) -> dg.ExecuteInProcessResult:
    if partition and not instance.has_dynamic_partition("image_drops", partition):
        instance.add_dynamic_partitions("image_drops", [partition])
    return dg.materialize(
        assets,
        instance=instance,
        partition_key=partition,
        resources={
            "warehouse": WarehouseResource(path=str(warehouse.path)),
            "labelled_set": LabelledSetResource(location=labelled),
            # loaded only for the many-class kNN; a path that is not there fails if it is
            "clip_model": ClipModelResource(
                model_name=STANDIN_MODEL,
                pretrained=str((clip_cache or Path("/nonexistent")) / STANDIN_MODEL / "seed0.pt"),
                device="cpu",
            ),
        },
        run_config=run_config,
        raise_on_error=False,
    )


def only_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation_,) = result.get_asset_check_evaluations()
    return evaluation_


def plant_scenery(warehouse: Warehouse, clip: list[str], vlm: list[str]) -> list[str]:
    ids = add_drop(warehouse, "d1", [f"img{i}" for i in range(len(clip))], at=T0)
    for iid, c, v in zip(ids, clip, vlm, strict=True):
        add_zero_shot(warehouse, iid, CLIP, "scenery", {c: 0.8, "night_time": 0.2})
        add_extraction(warehouse, iid, "scenery_people", VLM, "ok", {"scenery": v, "people": []})
    return ids


def test_agreement_passes_when_clip_and_the_vlm_mostly_agree(instance, warehouse):
    plant_scenery(warehouse, ["indoors", "cloudy", "indoors"], ["indoors", "cloudy", "cloudy"])
    result = materialize(instance, warehouse, [label_agreement], partition="d1")
    assert result.success
    check = only_check(result)
    assert check.passed and check.check_name == AGREEMENT_CHECK
    assert check.metadata["agreed"].value == 2
    metadata = result.asset_materializations_for_node("label_agreement")[0].metadata
    assert metadata["scenery agreement"].value == pytest.approx(2 / 3, abs=1e-4)
    confusion = metadata["scenery confusion"].value
    assert "data:image/png;base64," in confusion and len(confusion) < 1000  # shown inline
    assert "| **indoors** | 0 | 1 | 0 | 1 | 0 |" in confusion
    assert "age_group confusion" not in metadata  # nothing to compare on age yet
    table = metadata["agreement"].value
    assert [r.data["field"] for r in table.records] == ["scenery", "age_group"]
    assert table.records[0].data["images"] == 3 and table.records[0].data["agreed"] == 2
    assert warehouse.rows(
        "SELECT drop_id, field, clip_model_id, vlm_model_id, images_compared, agreed,"
        " round(agreement_rate, 4), confusion IS NOT NULL FROM label_agreement ORDER BY field"
    ) == [
        ("d1", "age_group", None, None, 0, 0, None, False),
        ("d1", "scenery", CLIP, VLM, 3, 2, 0.6667, True),
    ]
    again = materialize(instance, warehouse, [label_agreement], partition="d1")
    assert again.success  # rewritten for the drop, not appended
    assert warehouse.rows("SELECT count(*), min(run_id) FROM label_agreement") == [
        (2, again.run_id)
    ]


def test_agreement_warns_below_the_minimum_rate(instance, warehouse):
    ids = plant_scenery(warehouse, ["indoors", "indoors"], ["cloudy", "cloudy"])
    result = materialize(
        instance,
        warehouse,
        [label_agreement],
        partition="d1",
        run_config={"ops": {"label_agreement": {"config": {"min_rate": 0.5}}}},
    )
    check = only_check(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    paths = dict(warehouse.rows("SELECT image_id, path FROM image_files"))
    assert check.metadata["offending_sample"].value.records[0].data == {
        "field": "scenery",
        "path": paths[min(ids)],
        "clip": "indoors",
        "vlm": "cloudy",
    }
    assert result.success  # a warning does not stop the run
    assert warehouse.rows(
        "SELECT asset, partition, passed, value FROM quality_results WHERE check_name = ?",
        [AGREEMENT_CHECK],
    ) == [("label_agreement", "d1", False, 0.0)]


def labelled_folder(root: Path) -> Path:
    truth = {"21-30": 2, "41-50": 1}
    for label, count in truth.items():
        (root / label).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (40 * i, 90 if label == "21-30" else 20, 5)).save(
                root / label / f"{i}.png"
            )
    return root


def test_evaluation_stores_metrics_and_warns_about_labelled_images_never_ingested(
    instance, warehouse, drop_root
):
    root = labelled_folder(drop_root / "labelled")
    labelled = load_folder(root)
    truth = labelled.labels("age_group")
    for iid, label in truth.items():  # the VLM is right on the 21-30 images, one bin off else
        value = label if label == "21-30" else "51-60"
        add_extraction(
            warehouse, iid, "age_gender", VLM, "ok", {"age_group": value, "gender": "male"}
        )
    result = materialize(instance, warehouse, [evaluation], labelled=str(root))
    assert result.success
    check = only_check(result)
    assert not check.passed and check.check_name == LABELLED_INGESTED_CHECK
    assert check.metadata["not_ingested"].value == 3

    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("labelled"))
    again = materialize(instance, warehouse, [evaluation], labelled=str(root))
    assert only_check(again).passed
    metadata = again.asset_materializations_for_node("evaluation")[0].metadata
    (record,) = [r.data for r in metadata["vlm results"].value.records]
    assert (record["field"], record["model"], record["n"]) == ("age_group", VLM, 3)
    # the predictions did not change with the ingestion: the second run evaluated nothing
    assert record["accuracy"] == pytest.approx(0.667) and record["this run"] is False
    assert metadata["evaluated"].value == 0 and metadata["rows_written"].value == 0
    assert "nothing changed since the last evaluation" in metadata["summary"].value
    confusion = metadata["age_group · vlm"].value
    assert "data:image/png;base64," in confusion and len(confusion) < 1000
    assert "| **41-50** | 0 | 0 | 0 | 0 | 1 |" in confusion
    assert not any(isinstance(v, dg.JsonMetadataValue) for v in metadata.values())
    rows = warehouse.rows(
        "SELECT metric, value FROM evaluations WHERE run_id = ? AND source = 'vlm' ORDER BY 1",
        [result.run_id],
    )
    assert dict(rows) == {
        "accuracy": pytest.approx(2 / 3),
        "adjacent_accuracy": pytest.approx(1.0),
        "coverage": 1.0,
        "macro_f1": pytest.approx(1 / 3),  # F1 1 for 21-30, 0 for 41-50 and 51-60
    }
    recorded = warehouse.rows(
        "SELECT partition, passed FROM quality_results WHERE asset = 'evaluation' ORDER BY 2"
    )
    assert recorded == [("", False), ("", True)]


def test_evaluation_without_a_labelled_set_evaluates_nothing_and_says_so(instance, warehouse):
    warehouse.ensure_schema()
    result = materialize(instance, warehouse, [evaluation])
    assert result.success and only_check(result).passed
    assert "no labelled set configured" in only_check(result).description
    assert warehouse.rows("SELECT count(*) FROM evaluations") == [(0,)]
