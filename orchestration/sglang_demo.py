"""`make sglang-demo`: the demo chain with the VLM backend `sglang`, on the real SGLang server.

The `SGLangServer` resource launches released SGLang 0.5.23 (from `.venv-sglang`, its CPU engine)
on the tiny random-weight Qwen2-VL, bound to 127.0.0.1 on a free port, waits for `/ready`, and
stops its process group when the step ends. Everything else is `make demo`'s chain on the bundled
samples, in its own warehouse and drop root under data/sglang-demo/ (rows carry the served model
id `standin/tiny-qwen2-vl-v1`). Random weights: the labels are meaningless; it shows the path.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import dagster as dg

from core.report import summary
from orchestration.demo import run_demo
from orchestration.settings import REPO_ROOT, Settings
from orchestration.sglang_cpu import platform_unsupported, server_env_missing, tiny_vlm_launch
from resources.sglang_server import SGLangServer
from resources.vlm import VLMResource

DEMO_DIR = REPO_ROOT / "data" / "sglang-demo"


def demo_settings() -> Settings:
    env = dict(os.environ)
    env.setdefault("IMAGE_PIPELINE_WAREHOUSE", str(DEMO_DIR / "warehouse.duckdb"))
    env.setdefault("IMAGE_DROP_ROOT", str(DEMO_DIR / "drops"))
    return Settings.from_env(env)


def main() -> int:
    reason = platform_unsupported() or server_env_missing()
    if reason:
        print(f"make sglang-demo: {reason}", file=sys.stderr)
        return 2
    settings = demo_settings()
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    instance = dg.DagsterInstance.get()
    resources = {
        "vlm": VLMResource(
            backend="sglang", sglang=SGLangServer(launch=tiny_vlm_launch(), max_in_flight=8)
        ),
    }
    started = time.monotonic()
    result = run_demo(settings, instance, resources)
    wall = time.monotonic() - started
    print(summary(settings.warehouse()))
    for event in result.asset_materializations_for_node("vlm_extractions"):
        meta = event.metadata
        rate = meta.get("images_per_s")
        if rate is not None:
            print(
                f"\nvlm_extractions on the real SGLang server: {rate.value} images/s "
                f"(image x task answers per second; random weights on CPU), run {wall:.0f}s"
            )
    if not result.success:
        print(f"\nrun {result.run_id} failed: see `make ui` for its logs", file=sys.stderr)
        return 1
    print(f"\nrun {result.run_id} succeeded; `make ui` shows it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
