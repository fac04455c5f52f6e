"""Plain-Python building blocks of the pipeline: no Dagster imports, callable from tests and scripts."""
