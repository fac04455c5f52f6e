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


# -- every field kind, against a user's spec ---------------------------------------------------

PRODUCTS = Path(__file__).resolve().parents[3] / "labels" / "examples" / "products.yaml"


@pytest.fixture(scope="module")
def product_fields():
    from core.labels.loader import load_spec
    from core.quality.fields import spec_fields

    return {field.name: field for field in spec_fields(load_spec(PRODUCTS))}


def test_a_wide_csv_carries_every_field_kind_in_canonical_form(tmp_path, product_fields):
    a = png(tmp_path / "img" / "a.png", 1)
    png(tmp_path / "img" / "b.png", 2)
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,category,attributes,condition,packaged,item_count,fill\n"
        "img/a.png,toy,round|dark,used,Yes,3,0.25\n"
        "img/b.png,,metallic,,false,,1\n"
    )
    labelled = load_csv(csv, fields=product_fields)
    a_id = sha256_file(a)[0]
    assert {f: labelled.labels(f).get(a_id) for f in labelled.fields()} == {
        "category": "toy",
        "attributes": "dark|round",  # the spec's value order
        "condition": "used",
        "packaged": "true",
        "item_count": "3",
        "fill": "0.25",
    }
    assert len(labelled.items) == 9  # empty cells are not labels


def test_a_long_csv_names_the_field_of_each_kind(tmp_path, product_fields):
    png(tmp_path / "a.png", 1)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,field,value\na.png,attributes,colourful\na.png,packaged,no\n")
    labelled = load_csv(csv, fields=product_fields)
    assert [(i.field, i.label) for i in labelled.items] == [
        ("attributes", "colourful"),
        ("packaged", "false"),
    ]


def test_every_problem_is_reported_by_file_and_line_and_nothing_is_loaded(tmp_path, product_fields):
    png(tmp_path / "a.png", 1)
    csv = tmp_path / "bad.csv"
    csv.write_text(
        "# comment\n"
        "path,field,value\n"
        "a.png,colour,red\n"  # line 3: unknown field
        "a.png,category,sofa\n"  # 4: outside the enum
        "a.png,attributes,round|round\n"  # 5: repeated
        "a.png,attributes,round|dark|metallic|colourful\n"  # 6: too many
        "a.png,item_count,31\n"  # 7: out of range
        "a.png,fill,half\n"  # 8: not a number
        "a.png,packaged,maybe\n"  # 9: not yes/no
        "a.png,item_count,2\n"  # 10: fine, still not loaded
    )
    with pytest.raises(ValueError) as error:
        load_csv(csv, fields=product_fields)
    lines = str(error.value).splitlines()[1:]
    assert [line.split(":")[1] for line in lines] == ["3", "4", "5", "6", "7", "8", "9"]
    assert all(line.startswith("bad.csv:") for line in lines)
    assert "unknown field 'colour'" in lines[0]
    assert "'sofa' is not a value of 'category'" in lines[1]
    assert "repeated" in lines[2]
    assert "takes 1 to 3 values; 4 given" in lines[3]
    assert "outside the range of 'item_count'" in lines[4]
    assert "'fill' takes number values" in lines[5]
    assert "yes/no" in lines[6]


def test_a_wide_csv_with_an_unknown_column_is_refused(tmp_path, product_fields):
    png(tmp_path / "a.png", 1)
    csv = tmp_path / "bad.csv"
    csv.write_text("path,category,colour\na.png,toy,red\n")
    with pytest.raises(ValueError, match=r"bad.csv:1: unknown field 'colour'"):
        load_csv(csv, fields=product_fields)


def test_the_bundled_product_labels_fit_the_example_spec(product_fields):
    from orchestration.settings import REPO_ROOT

    labelled = load_labelled(
        REPO_ROOT / "data" / "labelled" / "products.csv", fields=product_fields
    )
    assert labelled.fields() == [
        "attributes",
        "category",
        "condition",
        "fill",
        "item_count",
        "packaged",
    ]
    assert len(labelled.image_ids()) == 3
