"""README sentences that a test can hold to the code: Python version and Dagster pools."""

from __future__ import annotations

import os
import re
import sys
import tomllib

from orchestration.settings import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_the_python_the_readme_claims_is_what_pyproject_requires_and_ci_runs():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    lowest = re.fullmatch(r">=3\.(\d+)", project["requires-python"])
    assert lowest, project["requires-python"]
    minor = int(lowest.group(1))
    assert f"Python 3.{minor} or newer" in README and f"CI tests Python 3.{minor}" in README
    assert sys.version_info[:2] >= (3, minor)
    if os.environ.get("CI"):  # CI tests the lowest version claimed
        assert sys.version_info[:2] == (3, minor)


def test_every_dagster_pool_the_docs_name_is_declared_by_an_asset():
    declared = set()
    for path in (REPO_ROOT / "assets").glob("*.py"):
        declared |= set(re.findall(r'pool="(\w+)"', path.read_text()))
    texts = [README, *(p.read_text() for p in (REPO_ROOT / "docs").glob("*.md"))]
    named = {m for text in texts for m in re.findall(r"[Pp]ools? `(\w+)`", text)}
    named |= {m for text in texts for m in re.findall(r"pools `\w+` and `(\w+)`", text)}
    assert named and named <= declared, named - declared
