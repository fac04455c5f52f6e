"""The round trip through a real Label Studio server (PyPI `label-studio`, its own venv):
create a project with our labeling config, import the exported queue, post an annotation the way
the UI does (the prediction with one value changed), export JSON, import it back.

Skips with the reason when `.venv-label-studio` is missing (`make label-studio` installs it;
`make test` runs that first).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.review.queue import compute_queue, write_queue
from core.review.store import import_reviews, write_export
from tests.core.review.planted import DROP, VLM, plant
from tests.fixtures import label_studio

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def server(tmp_path: Path):
    reason = label_studio.unavailable()
    if reason:
        print(f"SKIP Label Studio round trip: {reason}")
        pytest.skip(reason)
    running = label_studio.start(tmp_path / "label-studio", tmp_path / "label-studio.log")
    try:
        yield running
    finally:
        label_studio.stop(running)


def _create_and_import(client, title: str, config_file: Path, tasks_file: Path) -> tuple[int, dict]:
    """A project with our labeling config (Label Studio accepts it) and the exported tasks
    imported into it: the project id and the import's answer."""
    project = client.post(
        "/api/projects", json={"title": title, "label_config": config_file.read_text()}
    )
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    imported = client.post(f"/api/projects/{pid}/import", json=json.loads(tasks_file.read_text()))
    assert imported.status_code == 201, imported.text
    return pid, imported.json()


def _annotate_and_export(client, pid: int, task_id: int, result: list, tmp_path: Path) -> Path:
    """Post `result` as a task's annotation the way the UI does, export the project as JSON
    and write it where `import_reviews` reads it."""
    annotation = client.post(
        f"/api/tasks/{task_id}/annotations/",
        json={"result": result, "was_cancelled": False, "ground_truth": False},
    )
    assert annotation.status_code == 201, annotation.text
    export = client.get(f"/api/projects/{pid}/export", params={"exportType": "JSON"})
    assert export.status_code == 200, export.text
    exported = tmp_path / "label-studio-export.json"
    exported.write_bytes(export.content)
    return exported


def test_the_queue_goes_through_label_studio_and_back_into_final_labels(
    server, warehouse, drop_root, tmp_path
):
    ids = plant(warehouse, drop_root)
    write_queue(warehouse, compute_queue(warehouse, DROP))
    tasks_file, config_file, count = write_export(warehouse, DROP, tmp_path / "samples.json")
    with server.client() as client:
        pid, imported = _create_and_import(client, "review samples", config_file, tasks_file)
        assert imported["task_count"] == count == 6
        assert imported["prediction_count"] == 6
        listed = client.get("/api/tasks", params={"project": pid, "page_size": 100}).json()
        camera = next(t for t in listed["tasks"] if t["data"]["image_id"] == ids["camera.jpg"])
        (prediction,) = client.get("/api/predictions", params={"task": camera["id"]}).json()
        assert prediction["model_version"] == VLM
        result = prediction["result"]
        for item in result:
            if item["from_name"] == "scenery_people__scenery":
                assert item["value"] == {"choices": ["cloudy"]}
                item["value"] = {"choices": ["indoors"]}
        exported = _annotate_and_export(client, pid, camera["id"], result, tmp_path)
    counts = import_reviews(warehouse, exported)
    assert counts["images"] == 1
    rows = warehouse.rows(
        "SELECT field, value, provenance, model_value FROM final_labels"
        " WHERE image_id = ? AND provenance = 'human' ORDER BY task, field",
        [ids["camera.jpg"]],
    )
    assert ("scenery", "indoors", "human", "cloudy") in rows
    assert ("age_group", "31-40", "human", "31-40") in rows  # confirmed, unchanged
    again = import_reviews(warehouse, exported)
    assert again["labels"] == counts["labels"]
    assert warehouse.rows("SELECT count(*) FROM human_labels")[0][0] == counts["labels"]


def test_a_user_spec_goes_through_label_studio_and_back(server, warehouse, tmp_path, monkeypatch):
    """Every field kind of a user's spec: Label Studio accepts the config and the prefilled
    answers, and a changed multi-choice, yes/no and number come back into final_labels."""
    from tests.fixtures import user_spec

    monkeypatch.setenv("IMAGE_PIPELINE_LABELS", str(user_spec.SPEC_PATH))
    warehouse.ensure_schema()
    ids = user_spec.plant(warehouse)
    write_queue(warehouse, compute_queue(warehouse, user_spec.DROP))
    tasks_file, config_file, count = write_export(
        warehouse, user_spec.DROP, tmp_path / "products.json"
    )
    changes = {
        "product__attributes": {"choices": ["leather", "worn"]},
        "product__boxed": {"choices": ["no"]},
        "product__fill": {"number": 0.75},
    }
    with server.client() as client:
        pid, imported = _create_and_import(client, "review products", config_file, tasks_file)
        assert imported["task_count"] == count
        listed = client.get("/api/tasks", params={"project": pid, "page_size": 100}).json()
        twin = next(t for t in listed["tasks"] if t["data"]["image_id"] == ids["twin_b"])
        (prediction,) = client.get("/api/predictions", params={"task": twin["id"]}).json()
        result = prediction["result"]
        for item in result:
            if item["from_name"] in changes:
                item["value"] = changes[item["from_name"]]
        exported = _annotate_and_export(client, pid, twin["id"], result, tmp_path)
    import_reviews(warehouse, exported)
    rows = set(
        warehouse.rows(
            "SELECT field, value, model_value FROM final_labels"
            " WHERE image_id = ? AND provenance = 'human'",
            [ids["twin_b"]],
        )
    )
    assert ("attributes", "leather|worn", "red|worn") in rows
    assert ("boxed", "false", "true") in rows
    assert ("fill", "0.75", "0.5") in rows
    assert ("item_count", "1", "1") in rows  # confirmed, unchanged
