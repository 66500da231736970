"""What `serve --replicas / --autoscale / --gpus-per-replica / --ray-address` ask for, parsed and checked before Ray
starts, and turned into Ray Serve deployment options once the cluster's resources are known."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import UsageError

AUTO = "auto"  # --replicas auto: one replica per GPU of the cluster
REPLICA_CPUS = 1  # Ray's logical CPUs per replica: what spreads replicas over nodes that have no GPU


@dataclass(frozen=True)
class ClusterSettings:
    """How many replicas of the one served model, and where. Exactly one of `replicas`, `auto_replicas` and
    `autoscale` says how many."""

    replicas: int | None = None
    auto_replicas: bool = False
    autoscale: tuple[int, int] | None = None  # (min, max) replicas, scaled on queue length
    gpus_per_replica: float | None = None  # None: 1 when the cluster has GPUs, else 0
    ray_address: str | None = None  # None: start a local Ray instance for the server's lifetime

    @classmethod
    def from_options(cls, replicas: str | None, autoscale: str | None, gpus_per_replica: float | None,
                     ray_address: str | None) -> "ClusterSettings":
        if replicas is not None and autoscale is not None:
            raise UsageError("pass either --replicas or --autoscale, not both (--autoscale MIN:MAX starts MIN "
                             "replicas)")
        if gpus_per_replica is not None and gpus_per_replica < 0:
            raise UsageError(f"--gpus-per-replica must be 0 or more, got {gpus_per_replica:g}")
        if ray_address is not None and not ray_address.strip():
            raise UsageError("--ray-address must not be empty; give the head node's address, e.g. 10.0.0.5:6379")
        common = {"gpus_per_replica": gpus_per_replica, "ray_address": ray_address}
        if autoscale is not None:
            return cls(autoscale=parse_autoscale(autoscale), **common)
        if replicas is not None and replicas.strip().lower() == AUTO:
            return cls(auto_replicas=True, **common)
        return cls(replicas=1 if replicas is None else parse_count(replicas), **common)

    @property
    def max_replicas(self) -> int | None:
        """The most replicas this server may run; None for --replicas auto (known once Ray is up)."""
        return self.autoscale[1] if self.autoscale else self.replicas

    def gpus(self, cluster_gpus: float) -> float:
        if self.gpus_per_replica is not None:
            return self.gpus_per_replica
        return 1.0 if cluster_gpus >= 1 else 0.0

    def deployment_options(self, cluster_gpus: float, max_concurrency: int) -> dict[str, Any]:
        """Ray Serve options for the replica deployment on a cluster with `cluster_gpus` GPUs in all.

        Serve's router sends a replica at most `max_concurrency` requests (what its one model may batch) and holds
        the rest, handing each to the replica with the shorter queue of two; a replica starts what its model
        decodes at once, so one that dies loses only the requests it was running.
        """
        gpus = self.gpus(cluster_gpus)
        options: dict[str, Any] = {"max_ongoing_requests": max_concurrency,
                                   "ray_actor_options": {"num_cpus": REPLICA_CPUS, "num_gpus": gpus}}
        if self.autoscale:
            lo, hi = self.autoscale
            # scale up when replicas hold more requests than they decode at once (a queue builds), down when idle
            options["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi, "initial_replicas": lo,
                                             "target_ongoing_requests": max_concurrency}
        else:
            options["num_replicas"] = self.count(cluster_gpus)
        return options

    def count(self, cluster_gpus: float) -> int:
        if not self.auto_replicas:
            return int(self.replicas or 1)
        gpus = self.gpus(cluster_gpus)
        if gpus <= 0 or cluster_gpus < gpus:
            raise UsageError("--replicas auto puts one replica on each GPU, and this Ray cluster has no GPU"
                             + (" free for --gpus-per-replica" if gpus > 0 else " (--gpus-per-replica is 0)")
                             + "; pass --replicas N")
        return int(cluster_gpus // gpus)


def parse_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"--replicas takes a positive number or 'auto' (one per GPU), got '{text}'")
    return n


def parse_autoscale(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    try:
        bounds = (int(lo), int(hi)) if sep else None
    except ValueError:
        bounds = None
    if bounds is None or not 1 <= bounds[0] <= bounds[1]:
        raise UsageError(f"--autoscale takes MIN:MAX replicas with 1 <= MIN <= MAX, e.g. 1:4; got '{text}'")
    return bounds
