"""Labelled sets load from a label-per-folder tree or a CSV and resolve images by content."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from core.ingest.hashing import sha256_file
from core.quality.labelled import load_csv, load_folder, load_labelled


def png(path: Path, shade: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 255 - shade, 7)).save(path)
    return path


def test_a_folder_per_label_infers_the_field_from_the_label(tmp_path):
    a = png(tmp_path / "indoors" / "a.png", 1)
    png(tmp_path / "18-20" / "b.png", 2)
    (tmp_path / "indoors" / "notes.txt").write_text("ignored")
    labelled = load_folder(tmp_path)
    assert labelled.fields() == ["age_group", "scenery"]
    assert labelled.labels("scenery") == {sha256_file(a)[0]: "indoors"}


def test_a_csv_with_relative_paths_and_an_optional_field_column(tmp_path):
    png(tmp_path / "img" / "a.png", 1)
    png(tmp_path / "img" / "b.png", 2)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label,field\n# a comment\nimg/a.png,cloudy,\nimg/b.png,male,gender\n")
    labelled = load_labelled(csv)
    assert [(i.field, i.label) for i in labelled.items] == [
        ("gender", "male"),
        ("scenery", "cloudy"),
    ]


def test_the_same_bytes_under_two_names_are_one_labelled_image(tmp_path):
    png(tmp_path / "night_time" / "a.png", 3)
    png(tmp_path / "night_time" / "copy.png", 3)
    assert len(load_folder(tmp_path).items) == 1


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("path,label\nimg/a.png,purple\n", "belongs to no known field"),
        ("path,label,field\nimg/a.png,male,scenery\n", "is not a value of 'scenery'"),
        ("path,label\nimg/missing.png,cloudy\n", "no image at"),
        ("file,label\nimg/a.png,cloudy\n", "header must be path,label"),
        ("path,label\nimg/a.png,cloudy\nimg/a.png,indoors\n", "is labelled 'indoors'"),
    ],
)
def test_bad_labels_are_refused_with_the_row(tmp_path, csv_text, message):
    png(tmp_path / "img" / "a.png", 1)
    csv = tmp_path / "labels.csv"
    csv.write_text(csv_text)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_csv(csv)


def test_the_bundled_labelled_sample_set_loads_and_matches_the_samples():
    from orchestration.settings import REPO_ROOT

    labelled = load_labelled(REPO_ROOT / "data" / "labelled" / "samples.csv")
    assert labelled.fields() == ["age_group", "gender", "imagenet_class", "scenery"]
    assert len(labelled.items) == 13
    chelsea, _ = sha256_file(REPO_ROOT / "data" / "samples" / "chelsea.jpg")
    assert labelled.labels("imagenet_class")[chelsea] == "tabby cat"
    rocket, _ = sha256_file(REPO_ROOT / "data" / "samples" / "rocket.jpg")
    assert labelled.labels("scenery")[rocket] == "night_time"
