"""Ingestion of a drop: find its files, hash them, decode them safely, and record every outcome."""
