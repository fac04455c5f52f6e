"""The extraction asset shows the spec's tasks and fields as a table, and editing the spec then
reloading the code location (a fresh import, as `dagster dev` does on reload) shows the edit."""

from __future__ import annotations

import os
import subprocess
import sys

from orchestration.settings import REPO_ROOT

SHOW = (
    "import dagster as dg\n"
    "from orchestration.definitions import defs\n"
    "asset = defs.resolve_assets_def(dg.AssetKey('vlm_extractions'))\n"
    "print(asset.metadata_by_key[dg.AssetKey('vlm_extractions')]['labeling spec'].value)\n"
)


def _spec_table(spec) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SHOW],
        cwd=REPO_ROOT,
        env={**os.environ, "IMAGE_PIPELINE_LABELS": str(spec)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_editing_the_spec_and_reloading_shows_the_change(tmp_path):
    spec = tmp_path / "shop.yaml"
    original = (REPO_ROOT / "labels" / "examples" / "products.yaml").read_text()
    spec.write_text(original)
    before = _spec_table(spec)
    assert f"Labeling spec `{spec}`" in before
    assert "| product | attributes | multi_choice | 1 to 3 of `metallic`," in before
    assert "| product | defects | entities | at most 3 of: defect (choice), severity" in before
    assert "brand" not in before
    spec.write_text(
        original.replace(
            "      - name: packaged\n",
            "      - name: brand_visible\n        kind: yes_no\n      - name: packaged\n",
        )
    )
    after = _spec_table(spec)
    assert "| product | brand_visible | yes_no | yes or no |  | `task_product` |" in after
    assert "scenery" not in after  # the built-in tasks are not shown for a user's spec
