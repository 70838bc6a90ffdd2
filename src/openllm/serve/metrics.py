"""The server's Prometheus metrics, written in the text exposition format (version 0.0.4) by hand.

Counters and histograms are updated by the scheduler thread; gauges are read from the engine when
``/metrics`` is scraped. Names (all prefixed ``openllm_``) are listed in docs/serve.md.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

__all__ = ["ServeMetrics", "Histogram", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_TPOT_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0)


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return repr(float(v)) if isinstance(v, float) else str(v)


class Histogram:
    """Cumulative buckets, a sum and a count."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            running += n
            out.append(f'{name}_bucket{{le="{_num(bound)}"}} {running}')
        out += [f"{name}_sum {_num(self.sum)}", f"{name}_count {self.count}"]
        return out


class ServeMetrics:
    """Counters and histograms of one server; :meth:`render` adds the gauges ``gauges()`` reports."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished: dict[str, int] = {}  # requests by finish reason (stop, length, cancelled, error)
        self.rejected = 0
        self.ttft = Histogram(_TTFT_BUCKETS)
        self.tpot = Histogram(_TPOT_BUCKETS)
        self.e2e = Histogram(_E2E_BUCKETS)

    def render(self, gauges: Callable[[], dict[str, float]]) -> str:
        g = gauges()
        rows: list[tuple[str, str, str, list[str]]] = [
            (
                "openllm_requests_running",
                "gauge",
                "Requests with sequences in the running batch.",
                [f"openllm_requests_running {g['requests_running']}"],
            ),
            (
                "openllm_requests_waiting",
                "gauge",
                "Requests waiting for a KV-cache slot.",
                [f"openllm_requests_waiting {g['requests_waiting']}"],
            ),
            (
                "openllm_sequences_running",
                "gauge",
                "Sequences holding a KV-cache slot.",
                [f"openllm_sequences_running {g['sequences_running']}"],
            ),
            (
                "openllm_kv_cache_usage_ratio",
                "gauge",
                "Fraction of the KV cache's token capacity in use.",
                [f"openllm_kv_cache_usage_ratio {_num(g['kv_cache_usage'])}"],
            ),
            (
                "openllm_kv_cache_slots_used",
                "gauge",
                "KV-cache slots in use.",
                [f"openllm_kv_cache_slots_used {g['slots_used']}"],
            ),
            (
                "openllm_kv_cache_slots",
                "gauge",
                "KV-cache slots (--max-batch).",
                [f"openllm_kv_cache_slots {g['slots']}"],
            ),
            (
                "openllm_prefix_cache_queries_total",
                "counter",
                "Prompts looked up in the prefix cache.",
                [f"openllm_prefix_cache_queries_total {g['prefix_cache_queries']}"],
            ),
            (
                "openllm_prefix_cache_hit_tokens_total",
                "counter",
                "Prompt tokens whose keys and values came from the prefix cache instead of being computed.",
                [f"openllm_prefix_cache_hit_tokens_total {g['prefix_cache_hit_tokens']}"],
            ),
            (
                "openllm_kv_cache_slot_tokens",
                "gauge",
                "Tokens one KV-cache slot holds.",
                [f"openllm_kv_cache_slot_tokens {g['slot_tokens']}"],
            ),
        ]
        with self.lock:
            rows += [
                (
                    "openllm_prompt_tokens_total",
                    "counter",
                    "Prompt tokens prefilled.",
                    [f"openllm_prompt_tokens_total {self.prompt_tokens}"],
                ),
                (
                    "openllm_generation_tokens_total",
                    "counter",
                    "Tokens generated.",
                    [f"openllm_generation_tokens_total {self.generation_tokens}"],
                ),
                (
                    "openllm_requests_finished_total",
                    "counter",
                    "Requests finished, by finish reason.",
                    [
                        f'openllm_requests_finished_total{{finish_reason="{k}"}} {v}'
                        for k, v in sorted(self.finished.items())
                    ],
                ),
                (
                    "openllm_requests_rejected_total",
                    "counter",
                    "Requests refused because the queue was full.",
                    [f"openllm_requests_rejected_total {self.rejected}"],
                ),
                (
                    "openllm_time_to_first_token_seconds",
                    "histogram",
                    "Time from a request's arrival to its first generated token.",
                    self.ttft.lines("openllm_time_to_first_token_seconds"),
                ),
                (
                    "openllm_time_per_output_token_seconds",
                    "histogram",
                    "Time between consecutive generated tokens of a sequence.",
                    self.tpot.lines("openllm_time_per_output_token_seconds"),
                ),
                (
                    "openllm_request_latency_seconds",
                    "histogram",
                    "Time from a request's arrival to its answer.",
                    self.e2e.lines("openllm_request_latency_seconds"),
                ),
            ]
        out = []
        for name, kind, help_text, lines in rows:
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *lines]
        return "\n".join(out) + "\n"
