"""SGLang's Prometheus `/metrics`, reduced to the few numbers asset metadata shows.

A server with several ranks (data parallel, tensor parallel) writes one series per rank. How
they combine depends on the metric's `# TYPE`: counters (and the `_count`/`_sum` of histograms
and summaries) add up over ranks; gauges (a hit rate, a share of the KV pool, requests running
on a rank) are averaged, so a rate stays a rate. A series without a `# TYPE` line is a counter
when its name ends in `_total`, else a gauge. Parsing is `prometheus_client`'s own.
"""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

ADDITIVE_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


def parse_prometheus(text: str) -> dict[str, float]:
    """Sample name -> counters summed over their label sets, gauges averaged; NaN skipped.

    Histogram buckets are left out (their `le` label is not a rank)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    additive: dict[str, bool] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "le" in sample.labels or "quantile" in sample.labels:
                continue
            value = float(sample.value)
            if math.isnan(value):
                continue
            name = sample.name
            if family.type == "unknown":
                adds = name.endswith("_total")
            else:
                adds = family.type in ADDITIVE_TYPES
            additive[name] = adds
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1
    return {name: total if additive[name] else total / counts[name] for name, total in sums.items()}


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
