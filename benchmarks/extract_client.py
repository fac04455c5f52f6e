"""SGLang client throughput against the SGLang test double at a known capacity, with and without faults.

The test double serves at most C requests at once, each for a fixed service time S, so its
capacity is C / S images per second. We send N images through the production client
(`SGLangClient.extract`) and report achieved images/s divided by that capacity, first with no
faults, then with 5% 503s and 1% dropped connections (retried with backoff and jitter), and the
number of images that got no result row (`lost_images`, must be 0). The double's answers come
from the tiny stand-in LLaVA and are cached per image, and a warm-up pass fills that cache, so
the numbers measure the client and the HTTP path, not the random model.
Usage: python benchmarks/extract_client.py [--images N] [--capacity C] [--service-time S] [--out F]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import write_json
from core.tasks.registry import get_task
from core.vlm.sglang_client import SGLangClient, SGLangClientConfig
from core.vlm.types import ImageInput
from tests.fakes.sglang_server import (
    FakeSGLangConfig,
    FakeSGLangServer,
    standin_backend,
)


def _pictures(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8)
        path = folder / f"bench_{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=85)
        paths.append(path)
    return paths


def _run(url: str, inputs: list[ImageInput], task_name: str, in_flight: int) -> dict:
    client = SGLangClient(
        SGLangClientConfig(base_url=url, max_in_flight=in_flight, backoff_base_s=0.05)
    )
    client.check_ready()
    started = time.monotonic()
    results = client.extract(inputs, get_task(task_name))
    seconds = time.monotonic() - started
    returned = {r.image_id for r in results}
    return {
        "seconds": seconds,
        "images_per_s": len(results) / seconds,
        "statuses": dict(Counter(r.status for r in results)),
        "lost": len({i.image_id for i in inputs} - returned)
        + sum(r.status == "error" for r in results),
        "retried": sum(r.attempts > 1 for r in results),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--distinct", type=int, default=12, help="Distinct pictures (cached).")
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--service-time", type=float, default=0.25)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--task", default="age_gender")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    capacity = args.capacity / args.service_time
    backend = standin_backend()
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pictures = _pictures(Path(tmp), args.distinct)
        inputs = [
            ImageInput(image_id=f"img{i:05d}", path=pictures[i % len(pictures)])
            for i in range(args.images)
        ]
        warm = [ImageInput(image_id=f"warm{i}", path=p) for i, p in enumerate(pictures)]
        for name, faults in (("no_faults", (0.0, 0.0)), ("faults", (0.05, 0.01))):
            config = FakeSGLangConfig(
                service_time_s=args.service_time,
                capacity=args.capacity,
                error_rate=faults[0],
                drop_rate=faults[1],
                seed=1,
            )
            server = FakeSGLangServer(backend, config)
            with server:
                config.service_time_s = 0.0
                _run(server.url, warm, args.task, args.in_flight)  # fill the answer cache
                config.service_time_s = args.service_time
                server.modes_served.clear()
                rows[name] = _run(server.url, inputs, args.task, args.in_flight)
                rows[name]["modes"] = dict(server.modes_served)

    results = {
        "images": args.images,
        "capacity": args.capacity,
        "service_time_s": args.service_time,
        "capacity_images_per_s": capacity,
        "in_flight": args.in_flight,
        "images_per_s": round(rows["no_faults"]["images_per_s"], 2),
        "images_per_s_faults": round(rows["faults"]["images_per_s"], 2),
        "capacity_ratio": round(rows["no_faults"]["images_per_s"] / capacity, 4),
        "capacity_ratio_faults": round(rows["faults"]["images_per_s"] / capacity, 4),
        "lost_images": rows["no_faults"]["lost"] + rows["faults"]["lost"],
        "retried_images_faults": rows["faults"]["retried"],
        "faults_injected": {k: v for k, v in rows["faults"]["modes"].items() if k != "ok"},
        "statuses_faults": rows["faults"]["statuses"],
        "python": platform.python_version(),
    }
    print(
        f"SGLang client vs test double: C={args.capacity}, S={args.service_time}s, "
        f"capacity {capacity:.1f} img/s, {args.images} images, {args.in_flight} in flight"
    )
    print(f"{'run':<28}{'images/s':>10}{'ratio':>8}{'lost':>6}{'retried':>9}")
    for name, label in (("no_faults", "no faults"), ("faults", "5% 503 + 1% dropped conns")):
        row = rows[name]
        print(
            f"{label:<28}{row['images_per_s']:>10.2f}{row['images_per_s'] / capacity:>8.3f}"
            f"{row['lost']:>6}{row['retried']:>9}"
        )
    write_json(results, args.out)
    return results


if __name__ == "__main__":
    main()
