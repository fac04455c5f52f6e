"""SGLang client: its own CPU per image, the images/s one host can feed, and a 16-server fan-out.

Production client settings (retries, backoff 0.5 s base / 30 s max, timeouts) and the production
run loop (`core.vlm.run.run_batches`: batches of 64, each image prepared once for all tasks, two
batches in flight), all three built-in tasks per image. Payloads are real-looking JPEGs: the
bundled sample photos, 640x480 and 4000x3000 versions of them (upscaled with mild grain).
The servers are simulated in a separate process by the SGLang test double
(`python -m doubles.sglang_server`, answers built from the schema): a slot held for a fixed
service time per request, an answer built afresh for each request (no cache), and N servers
behind one URL, routed to the least-loaded one as sglang-router does.

1. Client CPU per image (this process's CPU seconds, all threads, against a fleet with zero
   service time): read, decode, resize, encode, base64, JSON, HTTP, parse and validate, for all
   tasks. From the 4000x3000 figure: `host_feed_limit_img_s` = host cores / CPU s per image.
   The previous client (full decode, bicubic resize and encode again for every task) is measured
   on the same files for comparison.
2. One server of capacity C=8 with service time 0.25 s, with no faults and with 5% 503s + 1%
   dropped connections (retried with the production backoff): images/s / capacity, lost images.
3. Fan-out: 16 servers of capacity 8 behind one URL, 4000x3000 photos: `fanout_capacity_ratio`
   = slot-seconds used / (128 slots x the run's wall time). The client's in-flight limit is 256,
   2x the fleet's slots, as docs/extraction.md advises for routers.
Usage: python benchmarks/extract_client.py [--fanout-images N] [--service-time S] [--out F]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import print_table, write_json
from core.ingest.decode import load_rgb
from core.tasks.base import Task
from core.tasks.registry import TASKS
from core.vlm.prepare import RESAMPLE, data_url
from core.vlm.prompt import chat_messages
from core.vlm.run import run_batches
from core.vlm.sglang_client import SGLangClient, SGLangClientConfig
from core.vlm.types import ExtractionResult, ImageInput

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted((REPO / "data" / "samples").glob("*.jpg"))
KINDS = ("bundled", "640x480", "4000x3000")


def generate(folder: Path, distinct: int) -> dict[str, list[Path]]:
    """The bundled photos as they are, and `distinct` 640x480 and 4000x3000 JPEGs made from them."""
    files: dict[str, list[Path]] = {"bundled": list(SAMPLES), "640x480": [], "4000x3000": []}
    for i in range(distinct):
        source = Image.open(SAMPLES[i % len(SAMPLES)]).convert("RGB")
        for kind, size in (("640x480", (640, 480)), ("4000x3000", (4000, 3000))):
            picture = source.resize(size, Image.Resampling.BICUBIC)
            grain = Image.effect_noise(size, 40).convert("RGB")  # sensor-like grain, 5% mix
            path = folder / f"{kind}_{i:02d}.jpg"
            Image.blend(picture, grain, 0.05).save(path, quality=90)
            files[kind].append(path)
    return files


def inputs_for(paths: Sequence[Path], count: int, prefix: str) -> list[ImageInput]:
    """`count` images (distinct ids, the files repeated): each is prepared on its own."""
    return [
        ImageInput(image_id=f"{prefix}{i:05d}", path=paths[i % len(paths)]) for i in range(count)
    ]


@contextmanager
def fleet(folder: Path, servers: int, capacity: int, service_time_s: float, **faults: float):
    """The simulated servers in their own process; yields (url, stats function)."""
    port_file = folder / f"fleet-{time.monotonic_ns()}.port"
    command = [
        sys.executable, "-m", "doubles.sglang_server",
        "--servers", str(servers), "--capacity", str(capacity),
        "--service-time", str(service_time_s), "--port-file", str(port_file),
        "--error-rate", str(faults.get("error_rate", 0.0)),
        "--drop-rate", str(faults.get("drop_rate", 0.0)),
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the simulated fleet did not start")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}"

        def stats(reset: bool = False) -> dict[str, Any]:
            if reset:
                return httpx.post(f"{url}/stats/reset", timeout=10).json()
            return httpx.get(f"{url}/stats", timeout=10).json()

        yield url, stats
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def drive(url: str, inputs: list[ImageInput], tasks: Sequence[Task], in_flight: int) -> dict:
    """The production run loop over `inputs` for every task; wall and CPU time, outcomes."""
    client = SGLangClient(SGLangClientConfig(base_url=url, max_in_flight=in_flight))
    client.check_ready()
    results: list[ExtractionResult] = []
    cpu, started = time.process_time(), time.monotonic()
    run_batches(client, [(task, inputs) for task in tasks], lambda _, r: results.extend(r))
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    expected = len(inputs) * len(tasks)
    return {
        "images": len(inputs),
        "seconds": seconds,
        "cpu_s": cpu,
        "images_per_s": len(inputs) / seconds,
        "statuses": dict(Counter(r.status for r in results)),
        "lost": expected - sum(r.status == "ok" for r in results),
        "retried": sum(r.attempts > 1 for r in results),
    }


def previous_cpu_s(paths: Sequence[Path], tasks: Sequence[Task], repeat: int) -> float:
    """CPU per image of the previous client's preparation: full decode and encode per task."""

    def old_encode(path: Path) -> bytes:  # encode_image before this change, verbatim
        picture = load_rgb(path, min_side=1536)
        if max(picture.size) > 1536:
            picture.thumbnail((1536, 1536))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    started = time.process_time()
    for _ in range(repeat):
        for path in paths:
            for task in tasks:
                json.dumps({"messages": chat_messages(task, data_url(old_encode(path)))})
    return (time.process_time() - started) / (repeat * len(paths))


def stage_cpu_ms(paths: Sequence[Path], tasks: Sequence[Task], repeat: int = 2) -> dict:
    """CPU ms per image of each preparation stage, in one thread, on these (large) files."""
    totals: Counter[str] = Counter()

    def timed(stage: str, function, *args, **kwargs):
        started = time.process_time()
        value = function(*args, **kwargs)
        totals[stage] += time.process_time() - started
        return value

    for _ in range(repeat):
        for path in paths:
            data = timed("read", path.read_bytes)
            picture = timed("decode (draft)", load_rgb, data, fit_within=1536)
            timed("resize (bilinear)", picture.thumbnail, (1536, 1536), RESAMPLE)
            buffer = io.BytesIO()
            timed("encode JPEG", picture.save, buffer, "JPEG", quality=90)
            url = timed("base64", data_url, buffer.getvalue())
            for task in tasks:
                timed("JSON bodies (all tasks)", json.dumps, {"messages": chat_messages(task, url)})
    return {
        stage: round(1000 * value / (repeat * len(paths)), 2) for stage, value in totals.items()
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--distinct", type=int, default=4, help="Generated files per size.")
    parser.add_argument("--cpu-images", type=int, default=64, help="Images per size, step 1.")
    parser.add_argument("--server-images", type=int, default=120)
    parser.add_argument("--fanout-images", type=int, default=600)
    parser.add_argument("--servers", type=int, default=16)
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--service-time", type=float, default=1.5, help="Fan-out, per request.")
    parser.add_argument("--single-service-time", type=float, default=0.25)
    parser.add_argument("--host-cores", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    tasks = list(TASKS.values())
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = generate(folder, args.distinct)

        # 1. The client's own CPU per image, per kind of file (zero service time).
        cpu_per_image: dict[str, float] = {}
        with fleet(folder, args.servers, args.capacity, 0.0) as (url, _):
            drive(url, inputs_for(files["bundled"], 8, "warm"), tasks, 256)  # imports, pools
            for kind in KINDS:
                run = drive(url, inputs_for(files[kind], args.cpu_images, kind), tasks, 256)
                assert run["lost"] == 0, run
                cpu_per_image[kind] = run["cpu_s"] / run["images"]
        previous = previous_cpu_s(files["4000x3000"], tasks, repeat=1)
        stages = stage_cpu_ms(files["4000x3000"], tasks)
        large_cpu = cpu_per_image["4000x3000"]

        # 2. One server, capacity C, with and without faults; a mix of all three kinds.
        mixed = [path for kind in KINDS for path in files[kind]]
        for name, faults in (
            ("single", {}),
            ("single_faults", {"error_rate": 0.05, "drop_rate": 0.01}),
        ):
            service = args.single_service_time
            with fleet(folder, 1, args.capacity, service, **faults) as (url, stats):
                rows[name] = drive(url, inputs_for(mixed, args.server_images, name), tasks, 32)
                rows[name]["fleet"] = stats()

        # 3. Fan-out: 16 servers x 8 behind one URL, 4000x3000 photos.
        with fleet(folder, args.servers, args.capacity, args.service_time) as (url, stats):
            drive(url, inputs_for(files["bundled"], 8, "warm"), tasks, 256)
            stats(reset=True)
            fan = drive(url, inputs_for(files["4000x3000"], args.fanout_images, "fan"), tasks, 256)
            fan["fleet"] = stats()

    slots = args.servers * args.capacity
    fan_ratio = fan["fleet"]["slot_busy_s"] / (slots * fan["seconds"])
    fleet_img_s = slots / args.service_time / len(tasks)
    single_capacity = args.capacity / args.single_service_time / len(tasks)
    feed_limit = args.host_cores / large_cpu
    client_cores = fan["cpu_s"] / fan["seconds"]
    fleet_cores = fan["fleet"]["cpu_s"] / fan["seconds"]
    if fan_ratio >= 0.95:
        verdict = "yes: the client keeps the fleet at least 95% busy"
    else:
        verdict = (
            f"no: it stops at {fan['images_per_s']:.1f} img/s of the fleet's {fleet_img_s:.1f}; "
            f"this process used {client_cores:.2f} cores and the fleet process {fleet_cores:.2f} "
            f"of the machine's {os.cpu_count()} (load average {os.getloadavg()[0]:.1f})"
        )
    results = {
        "tasks": [t.name for t in tasks],
        "client_cpu_s_per_image": round(large_cpu, 4),
        "client_cpu_s_per_image_by_kind": {k: round(v, 4) for k, v in cpu_per_image.items()},
        "client_cpu_ms_by_stage_4000x3000": stages,
        "client_cpu_ms_http_and_rest_4000x3000": round(large_cpu * 1000 - sum(stages.values()), 1),
        "previous_client_cpu_s_per_image": round(previous, 4),
        "host_cores": args.host_cores,
        "host_feed_limit_img_s": round(feed_limit, 1),
        "previous_host_feed_limit_img_s": round(args.host_cores / previous, 1),
        "fanout_capacity_ratio": round(fan_ratio, 4),
        "fanout_images_per_s": round(fan["images_per_s"], 2),
        "fanout_capacity_img_s": round(fleet_img_s, 2),
        "fanout_client_cores": round(client_cores, 2),
        "fanout_fleet_cores": round(fleet_cores, 2),
        "fanout_lost_images": fan["lost"],
        "fanout_verdict": verdict,
        "servers": args.servers,
        "capacity": args.capacity,
        "service_time_s": args.service_time,
        "single_service_time_s": args.single_service_time,
        "capacity_images_per_s": round(single_capacity, 2),
        "images_per_s": round(rows["single"]["images_per_s"], 2),
        "images_per_s_faults": round(rows["single_faults"]["images_per_s"], 2),
        "capacity_ratio": round(rows["single"]["images_per_s"] / single_capacity, 4),
        "capacity_ratio_faults": round(rows["single_faults"]["images_per_s"] / single_capacity, 4),
        "lost_images": rows["single"]["lost"] + rows["single_faults"]["lost"] + fan["lost"],
        "retried_images_faults": rows["single_faults"]["retried"],
        "faults_injected": {
            "503": rows["single_faults"]["fleet"]["rejected_503"],
            "dropped": rows["single_faults"]["fleet"]["dropped"],
        },
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    print(f"SGLang client, {len(tasks)} tasks per image, production settings")
    table = [
        (f"client CPU per {kind} image ({len(tasks)} tasks)", f"{value * 1000:.1f} ms")
        for kind, value in cpu_per_image.items()
    ]
    table += [(f"  4000x3000: {stage}", f"{ms:.1f} ms") for stage, ms in stages.items()]
    table += [
        (
            "  4000x3000: HTTP, parse, validate, threads",
            f"{results['client_cpu_ms_http_and_rest_4000x3000']:.1f} ms",
        ),
        ("previous client, per 4000x3000 image", f"{previous * 1000:.1f} ms"),
        (f"host feed limit, {args.host_cores} cores, 4000x3000", f"{feed_limit:.1f} img/s"),
        ("previous client's feed limit", f"{args.host_cores / previous:.1f} img/s"),
        (
            f"1 server C={args.capacity}, S={args.single_service_time}s: img/s / capacity",
            f"{results['images_per_s']:.2f} / {single_capacity:.2f} = "
            f"{results['capacity_ratio']:.3f}",
        ),
        (
            "  with 5% 503 + 1% dropped connections",
            f"{results['images_per_s_faults']:.2f} = {results['capacity_ratio_faults']:.3f}, "
            f"{results['retried_images_faults']} retried",
        ),
        (
            f"fan-out {args.servers}x{args.capacity}, S={args.service_time}s, 4000x3000",
            f"{fan['images_per_s']:.2f} of {fleet_img_s:.2f} img/s, busy {fan_ratio:.3f}",
        ),
        ("  client / fleet process cores", f"{client_cores:.2f} / {fleet_cores:.2f}"),
        ("lost images (no ok result)", str(results["lost_images"])),
        ("verdict", verdict),
    ]
    print_table(table)
    write_json(results, args.out)
    return results


if __name__ == "__main__":
    main()
