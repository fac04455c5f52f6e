"""How often constrained outputs of the tiny stand-in parse and validate, sampled at temperature 1.

Greedy decoding of a random model repeats one answer, so this samples (do_sample, temperature 1)
to exercise every path of each task's grammar: free-text patterns, list lengths, enums. Counts
`json.loads` successes and full pydantic validation per task.
Usage: python benchmarks/constrained_parse_rate.py [--samples N] [--out F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import write_json
from core.tasks.base import TaskOutputError
from core.tasks.registry import TASKS
from doubles.sglang_server import standin_backend


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=300, help="Per task.")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    backend = standin_backend()
    rng = np.random.default_rng(0)
    results: dict[str, dict] = {}
    for task in TASKS.values():
        prompt = backend.prompt(task)
        parsed = valid = truncated = 0
        total = 0
        while total < args.samples:
            n = min(args.batch, args.samples - total)
            pictures = [
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)
            ]
            outputs = backend.generate(
                pictures, prompt, task.schema_json, task.max_completion_tokens, temperature=1.0
            )
            for text, finish, _, _, _ in outputs:
                total += 1
                truncated += finish == "length"
                try:
                    json.loads(text)
                    parsed += 1
                    task.parse(text)
                    valid += 1
                except (ValueError, TaskOutputError):
                    pass
        results[task.name] = {
            "samples": total,
            "json_parse_rate": round(parsed / total, 4),
            "valid_rate": round(valid / total, 4),
            "truncated": truncated,
        }
    print(f"{'task':<20}{'samples':>8}{'parse':>8}{'valid':>8}{'trunc':>7}")
    for name, row in results.items():
        print(
            f"{name:<20}{row['samples']:>8}{row['json_parse_rate']:>8.3f}"
            f"{row['valid_rate']:>8.3f}{row['truncated']:>7}"
        )
    write_json(results, args.out)
    return results


if __name__ == "__main__":
    main()
