"""`--where` on every field kind of a user's labeling spec (IMAGE_PIPELINE_LABELS names it),
run by `search` against a real DuckDB file."""

from __future__ import annotations

import pytest

from core.search import BadFilter, parse_where, search
from core.warehouse import Warehouse
from tests.fixtures import user_spec
from tests.fixtures.user_spec import SPEC_PATH


@pytest.fixture
def planted(warehouse: Warehouse, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("IMAGE_PIPELINE_LABELS", str(SPEC_PATH))
    warehouse.ensure_schema()
    return user_spec.plant(warehouse)


def found(warehouse: Warehouse, ids: dict[str, str], *where: str) -> set[str]:
    """Names of the images (other than `clean`, the query) that pass the filters."""
    frame = search(warehouse, like=ids["clean"], k=10, where=list(where))
    names = {iid: name for name, iid in ids.items()}
    return {names[iid] for iid in frame["image_id"].to_list()}


def test_every_field_kind_filters(warehouse, planted):
    everyone = {"disagree", "no_defects", "twin_a", "twin_b"}  # `failed` has no product row
    assert found(warehouse, planted, "category = 'bag'") == {"disagree"}
    assert found(warehouse, planted, "product.category != 'bag'") == everyone - {"disagree"}
    assert found(warehouse, planted, "attributes contains 'red'") == {"twin_a", "twin_b"}
    assert found(warehouse, planted, "attributes CONTAINS 'worn'") == {"twin_b"}
    assert found(warehouse, planted, "boxed = true") == everyone
    assert found(warehouse, planted, "boxed = false") == set()
    assert found(warehouse, planted, "item_count >= 1", "item_count <= 1") == everyone
    assert found(warehouse, planted, "fill > 0.6") == set()
    assert found(warehouse, planted, "defects.defect = 'scratch'") == everyone - {"no_defects"}
    # two tasks: both must hold (the `mint` image lists no defects)
    assert found(warehouse, planted, "defects.severity >= 1", "verdict.grade = 'mint'") == set()
    assert found(warehouse, planted, "defects.severity >= 1", "verdict.grade = 'used'") == {
        "disagree",
        "twin_a",
        "twin_b",
    }
    assert found(warehouse, planted, "caption = 'a brown shoe'") == everyone


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("category = 'hat'", "not a value of product.category; its values: shoe, bag"),
        ("category > 'bag'", "choice field: compare it with = or !="),
        ("attributes = 'red'", "write `product.attributes contains 'value'`"),
        ("attributes contains 'gold'", "not a value of"),
        ("item_count contains 1", "not a multi-choice field"),
        ("boxed = 'yes'", "compare it to true or false"),
        ("item_count = 'two'", "compare it to a number"),
        ("scenery = 'indoors'", "unknown column"),  # a field of the bundled spec, not this one
    ],
)
def test_a_filter_the_spec_does_not_allow_says_why(monkeypatch, text, problem):
    monkeypatch.setenv("IMAGE_PIPELINE_LABELS", str(SPEC_PATH))
    with pytest.raises(BadFilter, match=problem.replace("(", r"\(")):
        parse_where(text)
