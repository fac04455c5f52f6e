"""SGLang's Prometheus `/metrics`, reduced to the few numbers asset metadata shows."""

from __future__ import annotations

import math
import re

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum each metric over its label sets (DP ranks, TP ranks...): name -> value."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        if math.isnan(value):
            continue
        totals[match.group(1)] = totals.get(match.group(1), 0.0) + value
    return totals


def summarize(metrics: dict[str, float]) -> dict[str, float]:
    """Prefix-cache hit rate (long-run, from the counters), throughput and queue depth."""
    out: dict[str, float] = {}
    prompt = metrics.get("sglang:prompt_tokens_total")
    cached = metrics.get("sglang:cached_tokens_total")
    if prompt:
        out["prefix_cache_hit_rate"] = round((cached or 0.0) / prompt, 4)
    for source, target in (
        ("sglang:cache_hit_rate", "last_batch_cache_hit_rate"),
        ("sglang:gen_throughput", "gen_throughput_tok_s"),
        ("sglang:num_running_reqs", "running_requests"),
        ("sglang:num_queue_reqs", "queued_requests"),
        ("sglang:num_requests_total", "requests_total"),
        ("sglang:generation_tokens_total", "generation_tokens_total"),
        ("sglang:token_usage", "kv_token_usage"),
    ):
        if source in metrics:
            out[target] = round(metrics[source], 4)
    return out
