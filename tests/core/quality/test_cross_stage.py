"""Checks across stages (drift, CLIP/VLM agreement, labelled images ingested) on real DuckDB files."""

from __future__ import annotations

import datetime as dt

import pytest

from core.quality import cross_stage as checks
from core.quality.cross_stage import LabelSource
from core.quality.fields import FIELDS
from core.warehouse import Warehouse
from tests.fixtures.contracts import add_drop, add_extraction, add_zero_shot, image_id

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CLIP = "standin-clip"
VLM = "standin-llava"


@pytest.fixture
def wh(warehouse: Warehouse) -> Warehouse:
    warehouse.ensure_schema()
    return warehouse


# drift and agreement ------------------------------------------------------------------------


def zero_shot_drop(wh: Warehouse, drop_id: str, labels: list[str], at: dt.datetime) -> list[str]:
    ids = add_drop(wh, drop_id, [f"{drop_id}-{i}" for i in range(len(labels))], at=at)
    for iid, label in zip(ids, labels, strict=True):
        add_zero_shot(
            wh,
            iid,
            CLIP,
            "scenery",
            {label: 0.9, "night_time" if label != "night_time" else "cloudy": 0.1},
        )
    return ids


def test_drift_passes_without_history_and_on_a_similar_drop_and_warns_on_a_shift(wh):
    source = LabelSource.zero_shot("scenery", CLIP)
    zero_shot_drop(wh, "d1", ["indoors"] * 6 + ["blue_sky"] * 4, T0)
    first = checks.label_drift(wh, "d1", source)
    assert first.passed and first.skipped == "too few images in earlier drops (0 of 10 needed)"
    zero_shot_drop(wh, "d2", ["indoors"] * 3 + ["blue_sky"] * 2, T0 + dt.timedelta(hours=1))
    similar = checks.label_drift(wh, "d2", source, threshold=0.25, min_images=5)
    assert similar.passed and similar.value is not None and similar.value < 0.25
    zero_shot_drop(wh, "d3", ["night_time"] * 8, T0 + dt.timedelta(hours=2))
    shifted = checks.label_drift(
        wh, "d3", source, threshold=0.25, categories=FIELDS["scenery"].values, min_images=5
    )
    assert not shifted.passed and shifted.severity == "WARN"
    assert shifted.counts == {"current_images": 8, "reference_images": 15}
    assert shifted.details["reference"]["indoors"] == 9


def test_agreement_rate_and_confusion_between_clip_and_vlm(wh):
    ids = add_drop(wh, "d1", ["a", "b", "c", "d"], at=T0)
    clip = ["indoors", "indoors", "cloudy", "blue_sky"]
    vlm = ["indoors", "cloudy", "cloudy", "indoors"]
    for iid, c, v in zip(ids, clip, vlm, strict=True):
        add_zero_shot(wh, iid, CLIP, "scenery", {c: 0.8, "night_time": 0.2})
        add_extraction(wh, iid, "scenery_people", VLM, "ok", {"scenery": v, "people": []})
    kwargs = {"clip_model_id": CLIP, "vlm_model_id": VLM}
    outcome = checks.agreement(wh, "d1", FIELDS["scenery"], min_rate=0.6, **kwargs)
    assert not outcome.passed and outcome.value == 0.5
    confusion = outcome.details["confusion"]
    cell = confusion["matrix"][confusion["labels"].index("indoors")][
        confusion["labels"].index("cloudy")
    ]
    assert cell == 1
    assert checks.agreement(wh, "d1", FIELDS["scenery"], min_rate=0.5, **kwargs).passed
    with pytest.raises(ValueError, match="not predicted by both"):
        checks.agreement(wh, "d1", FIELDS["gender"], **kwargs)


def test_models_of_a_drop_most_images_first(wh):
    ids = add_drop(wh, "d1", ["a", "b"], at=T0)
    for iid in ids:
        add_zero_shot(wh, iid, "clip-big", "scenery", {"indoors": 1.0})
    add_zero_shot(wh, ids[0], "clip-small", "scenery", {"indoors": 1.0})
    add_zero_shot(wh, ids[0], "clip-other-set", "age_group", {"21-30": 1.0})
    source = LabelSource.zero_shot("scenery", "")
    assert checks.models_of_drop(wh, "d1", source) == ["clip-big", "clip-small"]
    assert checks.models_of_drop(wh, "d2", source) == []


def test_labelled_images_never_ingested_warn(wh):
    ids = add_drop(wh, "d1", ["a"], at=T0)
    assert checks.labelled_images_ingested(wh, {ids[0]: "a.jpg"}).passed
    outcome = checks.labelled_images_ingested(wh, {ids[0]: "a.jpg", image_id("z"): "z.jpg"})
    assert (outcome.passed, outcome.severity, outcome.value) == (False, "WARN", 0.5)
    assert outcome.offending == [{"image_id": image_id("z"), "path": "z.jpg"}]


def test_multi_label_agreement_by_mean_jaccard_with_per_value_counts(wh):
    """A user's multi-label field (labels/examples/products.yaml `attributes`): CLIP's set from
    its decision rule (top 2) against the VLM's set, stored as a label_agreement row."""
    import numpy as np

    from core.clip import store as clip_store
    from core.labels.derive import build_label_sets, build_task
    from core.labels.loader import load_spec
    from core.quality.agreement import FieldAgreement, agreement_table, write_agreement
    from core.quality.fields import spec_fields
    from orchestration.settings import REPO_ROOT

    spec = load_spec(REPO_ROOT / "labels" / "examples" / "products.yaml")
    field = {f.name: f for f in spec_fields(spec)}["attributes"]
    task = build_task(spec.task("product"))
    label_set = build_label_sets(spec)["attributes"]  # metallic, dark, colourful, round
    ids = add_drop(wh, "d1", ["a", "b", "c"], at=T0)
    scores = np.array([[0.4, 0.4, 0.1, 0.1], [0.1, 0.1, 0.4, 0.4], [0.7, 0.1, 0.1, 0.1]])
    decided = [label_set.decide(row) for row in scores]
    assert decided == [["metallic", "dark"], ["colourful", "round"], ["metallic", "dark"]]
    with wh.transaction() as conn:
        clip_store.write_zero_shot(
            conn,
            ids,
            scores,
            labels=label_set.labels,
            model_id=CLIP,
            label_set="attributes",
            fingerprint=label_set.fingerprint,
            decided=decided,
        )
    answers = [["dark", "metallic"], ["round"], ["colourful"]]
    base = {"category": "toy", "condition": "new", "packaged": False, "item_count": 1}
    base |= {"fill": 0.5, "title": "x", "defects": []}
    for iid, attributes in zip(ids, answers, strict=True):
        add_extraction(wh, iid, task, VLM, "ok", base | {"attributes": attributes})
    outcome = checks.agreement(
        wh,
        "d1",
        field,
        clip_model_id=CLIP,
        vlm_model_id=VLM,
        task_fingerprint=task.fingerprint,
        min_rate=0.6,
    )
    # Jaccard 1, 1/2, 0 -> mean 1/2; one identical set
    assert outcome.value == pytest.approx(0.5) and not outcome.passed
    assert outcome.counts == {"images_compared": 3, "agreed": 1}
    assert outcome.details["per_value"]["colourful"] == {"both": 0, "clip_only": 1, "vlm_only": 1}
    assert outcome.details["per_value"]["round"] == {"both": 1, "clip_only": 0, "vlm_only": 0}
    row = FieldAgreement(field="attributes", clip_model_id=CLIP, vlm_model_id=VLM, outcome=outcome)
    write_agreement(wh, "d1", [row], run_id="r1")
    stored = agreement_table(wh, "d1").row(0, named=True)
    assert (stored["measure"], stored["agreed"], stored["agreement_rate"]) == ("jaccard", 1, 0.5)
