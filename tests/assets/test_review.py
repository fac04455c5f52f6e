"""review_queue and drop_page through Dagster, and the evaluation asset over human_labels."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import dagster as dg

from assets.evaluation import evaluation
from assets.review import (
    DROP_PAGE_THUMBNAILS_CHECK,
    QUEUE_CONSISTENT_CHECK,
    QUEUE_FLAGGED_SHARE_CHECK,
    drop_page,
    review_queue,
)
from core.review.store import export_tasks, import_reviews
from core.warehouse import Warehouse
from resources.clip_model import ClipModelResource
from resources.drop_folder import DropFolderResource
from resources.labelled_set import LabelledSetResource
from resources.reports import ReportsResource
from resources.warehouse import WarehouseResource
from tests.core.review.planted import DROP, plant
from tests.core.review.test_labelstudio import annotate


def run(instance, warehouse: Warehouse, drop_root: Path, assets: list, partition: str | None):
    if partition and not instance.has_dynamic_partition("image_drops", partition):
        instance.add_dynamic_partitions("image_drops", [partition])
    return dg.materialize(
        assets,
        instance=instance,
        partition_key=partition,
        resources={
            "warehouse": WarehouseResource(path=str(warehouse.path)),
            "drop_folder": DropFolderResource(root=str(drop_root)),
            "reports": ReportsResource(url="http://127.0.0.1:3001"),
            "labelled_set": LabelledSetResource(location=""),
            # evaluation loads it only for the many-class kNN, which these sets do not have
            "clip_model": ClipModelResource(device="cpu"),
        },
        raise_on_error=False,
    )


def test_queue_and_page_materialize_with_checks_and_the_contact_sheet_in_metadata(
    instance, warehouse, drop_root
):
    ids = plant(warehouse, drop_root)
    result = run(instance, warehouse, drop_root, [review_queue, drop_page], DROP)
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks[QUEUE_CONSISTENT_CHECK].passed
    share = checks[QUEUE_FLAGGED_SHARE_CHECK]
    assert not share.passed  # 6 of 7 images have a reason: the drop's labels are suspect
    assert share.severity == dg.AssetCheckSeverity.WARN
    assert checks[DROP_PAGE_THUMBNAILS_CHECK].passed
    (queue_event,) = result.asset_materializations_for_node("review_queue")
    assert queue_event.metadata["dagster/partition_row_count"].value == 6
    rows = warehouse.rows("SELECT image_id FROM review_queue ORDER BY rank LIMIT 1")
    assert rows == [(ids["coffee.jpg"],)]
    (page_event,) = result.asset_materializations_for_node("drop_page")
    metadata = page_event.metadata
    page = Path(metadata["page"].value)
    assert page == warehouse.path.parent / "reports" / DROP / "index.html"
    assert len(re.findall(r"<figure", page.read_text())) == 7
    assert metadata["page_url"].value == f"http://127.0.0.1:3001/{DROP}/index.html"
    inline = re.fullmatch(
        r"!\[contact sheet\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)",
        metadata["contact_sheet"].value,
    )
    assert inline and base64.b64decode(inline.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(metadata["contact_sheet_path"].value).read_bytes() == base64.b64decode(
        inline.group(1)
    )
    recorded = warehouse.rows(
        "SELECT asset, check_name FROM quality_results WHERE partition = ? ORDER BY 1, 2", [DROP]
    )
    assert ("review_queue", QUEUE_CONSISTENT_CHECK) in recorded
    assert ("drop_page", DROP_PAGE_THUMBNAILS_CHECK) in recorded


def test_evaluation_uses_human_labels_as_a_second_labelled_set(
    instance, warehouse, drop_root, tmp_path
):
    ids = plant(warehouse, drop_root)
    assert run(instance, warehouse, drop_root, [review_queue], DROP).success
    camera = next(
        t for t in export_tasks(warehouse, DROP) if t["data"]["image_id"] == ids["camera.jpg"]
    )
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps(
            [annotate(camera, {"scenery_people__scenery": "indoors"}, at="2026-12-01T10:00:00Z")]
        )
    )
    import_reviews(warehouse, export)
    result = run(instance, warehouse, drop_root, [evaluation], None)
    assert result.success
    rows = warehouse.rows(
        "SELECT labelled_set, source, model_id, value, n FROM evaluations"
        " WHERE field = 'scenery' AND metric = 'accuracy' ORDER BY source"
    )
    # the VLM said cloudy, the reviewer indoors; CLIP said indoors
    assert rows == [
        ("human_labels", "clip_zero_shot", "clip-test/a", 1.0, 1),
        ("human_labels", "vlm", "vlm-test/a", 0.0, 1),
    ]
    (event,) = result.asset_materializations_for_node("evaluation")
    assert event.metadata["labelled set"].value == "human_labels"
    assert {r.data["model"] for r in event.metadata["vlm results"].value.records} == {"vlm-test/a"}
    assert "scenery · vlm · human labels" in event.metadata
