"""Every warehouse column the pipeline writes has a description for the Dagster UI."""

import pytest

from core.warehouse.columns import describe, schema_tables, table_columns

# Bookkeeping of the migrations themselves: no asset shows it.
UNDOCUMENTED = {"schema_migrations"}


def test_every_column_of_every_schema_table_is_described():
    missing = {
        (table, name)
        for table in schema_tables()
        if table not in UNDOCUMENTED
        for name, _, description in table_columns(table)
        if not description
    }
    assert missing == set()


def test_per_dimension_embedding_tables_share_the_views_descriptions():
    assert describe("clip_embeddings_d512", "embedding") == describe("clip_embeddings", "embedding")
    assert [c for c, _, _ in table_columns("clip_embeddings_d64")][:2] == ["image_id", "model_id"]


def test_an_unknown_table_is_an_error():
    with pytest.raises(KeyError, match="no_such_table"):
        table_columns("no_such_table")
