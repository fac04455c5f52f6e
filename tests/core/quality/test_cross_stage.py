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
