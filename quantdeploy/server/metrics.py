"""Prometheus metrics, one registry per app (no globals): requests by status, tokens, TTFT and per-token latency,
in-flight generations, queue depth, the model's running / waiting sequences and KV pool use, and the process's own
memory/CPU."""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

from .runner import Running

CONTENT_TYPE = CONTENT_TYPE_LATEST
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("quantdeploy_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.generations = Counter("quantdeploy_generations", "Finished generations by finish reason "
                                   "(stop, length, cancelled: the client went away, error)", ["finish_reason"],
                                   registry=r)
        self.prompt_tokens = Counter("quantdeploy_prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter("quantdeploy_completion_tokens", "Completion tokens generated", registry=r)
        self.ttft = Histogram("quantdeploy_time_to_first_token_seconds",
                              "From request arrival (queue wait included) to the first generated token",
                              buckets=_TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("quantdeploy_time_per_output_token_seconds",
                              "Mean time between generated tokens, one observation per request",
                              buckets=_TPOT_BUCKETS, registry=r)
        self.queue_wait = Histogram("quantdeploy_queue_wait_seconds", "Time a request waited for a free slot",
                                    buckets=_TTFT_BUCKETS, registry=r)
        self.duration = Histogram("quantdeploy_request_duration_seconds",
                                  "From request arrival to the last token", buckets=_E2E_BUCKETS, registry=r)
        self.in_flight = Gauge("quantdeploy_requests_in_flight", "Generations running now", registry=r)
        self.queue_depth = Gauge("quantdeploy_queue_depth", "Requests waiting for a free slot", registry=r)
        self.seq_running = Gauge("quantdeploy_sequences_running", "Sequences the model decodes together now",
                                 registry=r)
        self.seq_waiting = Gauge("quantdeploy_sequences_waiting", "Sequences inside the model waiting for KV cache "
                                 "room (their requests hold a slot)", registry=r)
        self.kv_used = Gauge("quantdeploy_kv_cache_usage_ratio", "Share of the model's KV cache pool in use (0-1)",
                             registry=r)
        self.ready = Gauge("quantdeploy_model_ready", "1 once the model is loaded and serving", registry=r)
        self.model = Gauge("quantdeploy_model_info", "The served model (value 1)",
                           ["model", "format", "backend", "kernel", "device"], registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...

    def bind(self, busy: Callable[[], float], waiting: Callable[[], float],
             batch_stats: Callable[[], dict[str, Any] | None]) -> None:
        """Read at each scrape. A model that does not batch (batch_stats() is None) runs one sequence per busy slot
        and reports no KV pool."""
        self.in_flight.set_function(busy)
        self.queue_depth.set_function(waiting)
        self.seq_running.set_function(lambda: (batch_stats() or {"running": busy()})["running"])
        self.seq_waiting.set_function(lambda: (batch_stats() or {"waiting": 0})["waiting"])

        def kv() -> float:
            stats = batch_stats()
            return stats["kv_blocks_used"] / stats["kv_blocks_total"] if stats else 0.0

        self.kv_used.set_function(kv)

    def set_model(self, info: dict) -> None:
        self.model.labels(info["id"], info["format"], info["backend"], str(info["kernel"]), info["device"]).set(1)
        self.ready.set(1)

    def request(self, path: str, status: int) -> None:
        self.requests.labels(path if path in ENDPOINTS else "other", str(status)).inc()

    def generation(self, running: Running, arrived: float) -> None:
        """Record a generation that ran, when it ends (on the event loop, before its response goes out)."""
        if running.error is not None and running.error.status < 500:
            return  # rejected while preparing (a 4xx): it never generated
        u = running.usage
        reason = "error" if running.error is not None else running.finish_reason or "cancelled"
        self.generations.labels(reason).inc()
        self.prompt_tokens.inc(u.prompt_tokens)
        self.completion_tokens.inc(u.completion_tokens)
        if running.t_start is not None:
            self.queue_wait.observe(max(0.0, running.t_start - arrived))
            if u.ttft_s is not None:
                self.ttft.observe(max(0.0, running.t_start - arrived) + u.ttft_s)
        if u.completion_tokens > 1 and u.decode_s > 0:
            self.tpot.observe(u.decode_s / (u.completion_tokens - 1))
        if running.t_end is not None:
            self.duration.observe(max(0.0, running.t_end - arrived))

    def render(self) -> bytes:
        return generate_latest(self.registry)
