"""`assets/` holds no SQL: an asset calls a stage function in `core/` (which owns its SQL), turns
the report into metadata and check results, and returns."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"

# SQL keywords in the upper case SQL is written in here; prose in docstrings is lower case.
_SQL = re.compile(
    r"\bSELECT\b[\s\S]*\bFROM\b"
    r"|\bINSERT\s+(OR\s+\w+\s+)?INTO\b"
    r"|\bDELETE\s+FROM\b"
    r"|\bUPDATE\s+\S+\s+SET\b"
    r"|\bCREATE\s+(OR\s+REPLACE\s+)?(TEMP\s+)?(TABLE|VIEW|INDEX|SEQUENCE)\b"
    r"|\b(DROP|ALTER)\s+TABLE\b"
    r"|\bFROM\s+\S+\s+(WHERE|JOIN|GROUP\s+BY|ORDER\s+BY)\b"
)


def sql_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal (f-strings with their constant parts) holding SQL."""
    found = []
    nodes = list(ast.walk(ast.parse(source)))
    parts = {id(part) for node in nodes if isinstance(node, ast.JoinedStr) for part in node.values}
    for node in nodes:
        if id(node) in parts:  # a constant piece of an f-string: judged with the whole string
            continue
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                part.value if isinstance(part, ast.Constant) else "{}" for part in node.values
            )
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        if _SQL.search(text):
            found.append((node.lineno, " ".join(text.split())[:80]))
    return sorted(found)


def test_the_detector_finds_sql_in_plain_and_f_strings_and_not_in_prose():
    source = '''
"""Decoded images of one drop: select the files from the drop folder."""
a = "SELECT count(*) FROM images"
b = f'SELECT count(*) FROM "{table}"'
c = f"""
    DELETE FROM review_queue WHERE drop_id = ?
"""
d = "INSERT OR REPLACE INTO quality_results VALUES (?)"
e = "Pairs of different images at or above this cosine are reported."
'''
    assert [line for line, _ in sql_literals(source)] == [3, 4, 5, 8]


def test_no_asset_module_holds_sql_text():
    offending = {
        path.name: sql_literals(path.read_text())
        for path in sorted(ASSETS.glob("*.py"))
        if sql_literals(path.read_text())
    }
    assert not offending, "SQL in assets/ (move it into the stage's core module):\n" + "\n".join(
        f"  assets/{name}:{line}: {text}" for name, hits in offending.items() for line, text in hits
    )
