"""SGLang's `/metrics` reduced per metric type: counters summed over ranks, gauges averaged."""

from __future__ import annotations

import pytest

from core.vlm.metrics import parse_prometheus, summarize

# Two data-parallel ranks, as SGLang 0.5.23 (prometheus_client) writes them.
TWO_RANKS = """\
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{dp_rank="0",model_name="m",tp_rank="0"} 1000.0
sglang:prompt_tokens_total{dp_rank="1",model_name="m",tp_rank="0"} 3000.0
# HELP sglang:cached_tokens_total Number of cached prompt tokens.
# TYPE sglang:cached_tokens_total counter
sglang:cached_tokens_total{cache_source="device",dp_rank="0",model_name="m"} 500.0
sglang:cached_tokens_total{cache_source="host",dp_rank="1",model_name="m"} 1500.0
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{dp_rank="0",model_name="m",tp_rank="0"} 0.8
sglang:cache_hit_rate{dp_rank="1",model_name="m",tp_rank="0"} 0.9
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{dp_rank="0",model_name="m",tp_rank="0"} 0.5
sglang:token_usage{dp_rank="1",model_name="m",tp_rank="0"} 0.7
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{dp_rank="0",model_name="m",tp_rank="0"} 3.0
sglang:num_running_reqs{dp_rank="1",model_name="m",tp_rank="0"} 5.0
# HELP sglang:num_requests_total Number of requests processed.
# TYPE sglang:num_requests_total counter
sglang:num_requests_total{dp_rank="0",model_name="m"} 10.0
sglang:num_requests_total{dp_rank="1",model_name="m"} 30.0
# HELP sglang:e2e_request_latency_seconds Histogram of end-to-end request latency.
# TYPE sglang:e2e_request_latency_seconds histogram
sglang:e2e_request_latency_seconds_bucket{dp_rank="0",le="1.0",model_name="m"} 4.0
sglang:e2e_request_latency_seconds_bucket{dp_rank="0",le="+Inf",model_name="m"} 10.0
sglang:e2e_request_latency_seconds_sum{dp_rank="0",model_name="m"} 12.0
sglang:e2e_request_latency_seconds_count{dp_rank="0",model_name="m"} 10.0
"""


def test_gauges_are_averaged_over_ranks_and_counters_summed():
    metrics = parse_prometheus(TWO_RANKS)
    assert metrics["sglang:cache_hit_rate"] == pytest.approx(0.85)  # not 1.7
    assert metrics["sglang:token_usage"] == pytest.approx(0.6)
    assert metrics["sglang:prompt_tokens_total"] == 4000.0
    assert metrics["sglang:cached_tokens_total"] == 2000.0
    assert metrics["sglang:num_requests_total"] == 40.0
    assert metrics["sglang:e2e_request_latency_seconds_count"] == 10.0
    summary = summarize(metrics)
    assert summary["last_batch_cache_hit_rate"] == pytest.approx(0.85)
    assert summary["kv_token_usage"] == pytest.approx(0.6)
    assert summary["prefix_cache_hit_rate"] == 0.5
    assert summary["requests_total"] == 40.0
    assert all(v <= 1 for k, v in summary.items() if "rate" in k or "usage" in k), summary


def test_untyped_series_follow_the_total_suffix_and_nan_is_skipped():
    text = (
        'sglang:cache_hit_rate{dp_rank="0"} 0.8\n'
        'sglang:cache_hit_rate{dp_rank="1"} 0.9\n'
        'sglang:cache_hit_rate{dp_rank="2"} NaN\n'
        'sglang:num_requests_total{dp_rank="0"} 2\n'
        'sglang:num_requests_total{dp_rank="1"} 3\n'
    )
    metrics = parse_prometheus(text)
    assert metrics["sglang:cache_hit_rate"] == pytest.approx(0.85)
    assert metrics["sglang:num_requests_total"] == 5.0
