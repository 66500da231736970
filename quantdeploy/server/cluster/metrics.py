"""The front's /metrics: its own counters (answers it gave, replicas healthy and wanted, requests waiting for a
replica, requests a replica failure re-routed or ended) followed by every replica's own metrics - the same ones a
one-process server exposes - each sample labelled with `replica`."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector

from ..metrics import ENDPOINTS


class FrontMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("quantdeploy_frontend_requests", "HTTP answers the front gave, by endpoint and status "
                                "(the replicas' own answers are quantdeploy_requests_total{replica})",
                                ["endpoint", "status"], registry=r)
        self.replicas = Gauge("quantdeploy_replicas", "Replicas serving now (healthy) and wanted (target)",
                              ["state"], registry=r)
        self.waiting = Gauge("quantdeploy_router_queue_depth", "Requests waiting for a replica", registry=r)
        self.active = Gauge("quantdeploy_router_requests_in_flight", "Requests a replica is running now",
                            registry=r)
        self.routed = Counter("quantdeploy_router_requests", "Requests handed to each replica", ["replica"],
                              registry=r)
        self.failures = Counter("quantdeploy_replica_failures", "Requests whose replica died: 'rerouted' (it had not "
                                "started them: another replica ran them) or 'failed' (they were running)",
                                ["outcome"], registry=r)
        ProcessCollector(namespace="quantdeploy_frontend", registry=r)

    def bind(self, waiting: Callable[[], float], active: Callable[[], float]) -> None:
        self.waiting.set_function(waiting)
        self.active.set_function(active)

    def request(self, path: str, status: int) -> None:  # what server.middleware.CountResponses calls
        self.requests.labels(path if path in ENDPOINTS else "other", str(status)).inc()

    def render(self, healthy: int, target: int, replicas: dict[str, dict[str, Any]]) -> bytes:
        self.replicas.labels("healthy").set(healthy)
        self.replicas.labels("target").set(target)
        own = generate_latest(self.registry)
        merged = CollectorRegistry(auto_describe=False)
        merged.register(_Merged(replicas))
        return own + generate_latest(merged)


class _Merged:
    """Each replica's metrics families, one family per name, every sample labelled with its replica; plus
    quantdeploy_replica_info{replica, pid, node} to find a replica's process."""

    def __init__(self, replicas: dict[str, dict[str, Any]]):
        self.replicas = replicas

    def collect(self) -> Iterable[Metric]:
        info = Metric("quantdeploy_replica_info", "A replica heard from lately: its process id and Ray node (value 1)",
                      "gauge")
        families: dict[str, Metric] = {}
        for rid, report in sorted(self.replicas.items()):
            info.add_sample("quantdeploy_replica_info", {"replica": rid, "pid": str(report.get("pid", "")),
                                                         "node": str(report.get("node", ""))}, 1)
            text = report.get("metrics") or b""
            for fam in text_string_to_metric_families(text.decode() if isinstance(text, bytes) else text):
                out = families.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type))
                for s in fam.samples:
                    out.add_sample(s.name, {**s.labels, "replica": rid}, s.value, s.timestamp)
        yield info
        yield from families.values()
