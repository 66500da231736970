"""`quantdeploy serve --replicas N`: start (or join) Ray, deploy the replicas with Ray Serve, run the front with
uvicorn on the bound port, and take it all down again on Ctrl-C / SIGTERM."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import uuid
from dataclasses import replace
from typing import Any

from ...errors import BackendUnavailable, QuantDeployError, UsageError
from ..config import ServerSettings
from ..middleware import BodyLimit, CountResponses
from ..run import LOG_LEVELS, Server, bind, is_loopback, log_to_stderr
from .config import ClusterSettings
from .front import ClusterView, Front
from .metrics import FrontMetrics

log = logging.getLogger("quantdeploy.server")
NAMESPACE = "quantdeploy"  # the Ray namespace of the front's named actors
DEPLOYMENT = "replica"
WATCH_S = 1.0  # how often the front asks Serve how many replicas run (the lag of /health after a failure)
SHUTDOWN_S = 5.0  # how long a replica may take to end its requests and close its model when the server stops
INSTALL = "pip install 'quantdeploy[cluster]'"


def serve_cluster(settings: ServerSettings, cluster: ClusterSettings, *, model: str | None, host: str = "127.0.0.1",
                  port: int = 8000, log_level: str = "info") -> None:
    """Run until Ctrl-C / SIGTERM. Raises QuantDeployError when Ray cannot start or be reached, the port is taken,
    or the model fails to load on a replica."""
    settings.validate()
    if log_level not in LOG_LEVELS:
        raise UsageError(f"unknown log level '{log_level}'; choose one of: {', '.join(LOG_LEVELS)}")
    if settings.spec is not None:  # replicas run in Ray's own working directory: a relative path means nothing there
        settings = replace(settings, spec=replace(settings.spec, path=settings.spec.path.resolve()))
    ray = _import_ray()
    if cluster.auto_replicas and not cluster.ray_address:  # a local instance has this machine's GPUs: say it now
        from ...backends.hw import cuda_device_count

        cluster.count(float(cuda_device_count()))
    sock = bind(host, port)
    try:
        bound_host, bound_port = sock.getsockname()[:2]
        if not is_loopback(bound_host) and settings.api_key is None:
            print(f"warning: serving on {host} without an API key: anyone who can reach port {bound_port} can use "
                  "the model. Set QUANTDEPLOY_API_KEY (or --api-key), or bind to 127.0.0.1", file=sys.stderr)
        log_to_stderr(log_level)
        where = f"the Ray cluster at {cluster.ray_address}" if cluster.ray_address else "a local Ray instance"
        print(f"starting {where}", file=sys.stderr, flush=True)
        _start_ray(ray, cluster, log_level)
        try:
            _run(ray, settings, cluster, model, sock, log_level)
        finally:
            ray.shutdown()  # a local instance stops with it; a cluster only loses this driver
    finally:
        sock.close()


def _run(ray: Any, settings: ServerSettings, cluster: ClusterSettings, model: str | None, sock: Any,
         log_level: str) -> None:
    import uvicorn

    gpus = float(ray.cluster_resources().get("GPU", 0))
    options = cluster.deployment_options(gpus, settings.sequences)
    parts = len(settings.spec.extra.get("tensor_split") or ()) if settings.spec else 0
    if parts > options["ray_actor_options"]["num_gpus"]:
        raise UsageError(f"--tensor-split splits the model over {parts} GPUs, so each replica needs {parts}: pass "
                         f"--gpus-per-replica {parts}")
    view = ClusterView(target=options.get("num_replicas") or options["autoscaling_config"]["min_replicas"])
    metrics = FrontMetrics()
    front = Front(settings, view, metrics, lost=_lost_errors())
    app = CountResponses(BodyLimit(front, limit=settings.max_body_bytes), metrics=metrics)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, lifespan="off", ws="none",
                            server_header=False)
    server = Server(config, on_exit=front.stop_all)
    deployment = Deployment(ray, settings, model, options, view, on_failure=lambda: setattr(server, "should_exit",
                                                                                            True))
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    count = (f"{options['num_replicas']} replicas" if "num_replicas" in options
             else "{min_replicas}-{max_replicas} replicas (autoscaled)".format(**options["autoscaling_config"]))
    print(f"serving {settings.model_name} at http://{shown}:{bound_port}/v1 ({'API key required' if settings.api_key else 'no API key'}; "
          f"{count}, {options['ray_actor_options']['num_gpus']:g} GPU each); loading the model, GET /health "
          "answers 200 when ready", file=sys.stderr, flush=True)
    deployment.start()
    try:
        server.run(sockets=[sock])
    finally:
        deployment.stop()
    if view.phase == "failed":
        raise QuantDeployError(f"the model failed to load on a replica: {view.error}")


class Deployment:
    """The replicas on Ray Serve, deployed on one thread; a second one keeps `view` current from Serve's status and
    the board, and calls `on_failure` when the replicas cannot start."""

    def __init__(self, ray: Any, settings: ServerSettings, model: str | None, options: dict[str, Any],
                 view: ClusterView, on_failure: Any):
        self.ray, self.settings, self.model, self.options, self.view = ray, settings, model, options, view
        self.on_failure = on_failure
        self.app_name = f"quantdeploy-{_slug(settings.model_name)}-{uuid.uuid4().hex[:6]}"
        self.board: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        from .board import Board

        self.board = Board.options(name=f"{self.app_name}-board", namespace=NAMESPACE).remote()
        for target, name in ((self._deploy, "deploy"), (self._watch, "watch")):
            t = threading.Thread(target=target, name=f"quantdeploy-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _deploy(self) -> None:
        from ray import serve

        from .replica import Replica

        quiet = {"log_level": "WARNING", "enable_access_log": False}
        try:
            serve.start(proxy_location="Disabled", logging_config=quiet)
            replica = serve.deployment(Replica, name=DEPLOYMENT, logging_config=quiet,
                                       graceful_shutdown_timeout_s=SHUTDOWN_S, **self.options)
            board = (f"{self.app_name}-board", NAMESPACE)
            handle = serve.run(replica.bind(self.settings, self.model, board), name=self.app_name, route_prefix=None)
        except Exception as e:  # noqa: BLE001  Serve's own errors carry a traceback: the board has the real one
            if not self._stop.is_set():
                self._fail(self.view.error or _first_line(e))
            return
        self.view.handle = handle.options(stream=True, method_name="handle")
        self.board.started.remote()
        if self.view.phase == "loading":
            self.view.phase = "ready"
            log.info("ready: %s on %d replica(s) (Ray Serve application %s)", self.settings.model_name,
                     self.view.target, self.app_name)

    def _watch(self) -> None:
        from ray import serve

        said = None
        while not self._stop.wait(WATCH_S):
            try:
                replicas, failure = self.ray.get(self.board.read.remote(), timeout=WATCH_S * 10)
                status = serve.status().applications.get(self.app_name)
            except Exception as e:  # noqa: BLE001  the cluster is going away (shutdown) or briefly unreachable
                log.debug("could not read the deployment's status: %s", e)
                continue
            if failure and self.view.phase == "loading":
                return self._fail(failure)
            dep = status.deployments.get(DEPLOYMENT) if status else None
            if dep is None:
                continue
            states = {str(getattr(k, "value", k)): n for k, n in dep.replica_states.items()}
            self.view.update(states.get("RUNNING", 0), replicas)
            if "autoscaling_config" in self.options:
                lo = self.options["autoscaling_config"]["min_replicas"]
                self.view.target = max(lo, sum(n for s, n in states.items() if s not in ("STOPPING", "STOPPED")))
            self.view.message = dep.message or None
            if dep.message and dep.message != said and self.view.healthy < self.view.target:
                log.info("%s", dep.message)
            said = dep.message

    def _fail(self, error: str) -> None:
        self.view.error = error
        self.view.phase = "failed"
        self.on_failure()

    def stop(self) -> None:
        """Delete the deployment (replicas end their requests and close their models), then the board."""
        from ray import serve

        self._stop.set()
        if self.view.phase != "failed":
            self.view.phase = "stopping"
        try:
            serve.delete(self.app_name)
        except Exception as e:  # noqa: BLE001  shutting down: say it and go on
            log.warning("could not delete the replicas cleanly: %s", _first_line(e))
        if self.board is not None:
            self.ray.kill(self.board)


def _start_ray(ray: Any, cluster: ClusterSettings, log_level: str) -> None:
    quiet = logging.INFO if log_level == "debug" else logging.WARNING
    logging.getLogger("ray.serve").setLevel(quiet)  # no INFO line per deployment step in the server's output
    if cluster.ray_address:
        try:
            ray.init(address=cluster.ray_address, namespace=NAMESPACE, logging_level=quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise QuantDeployError(f"cannot join the Ray cluster at {cluster.ray_address} ({_first_line(e)}); give "
                                   "the head node's address (`ray start --head` prints it, e.g. 10.0.0.5:6379), "
                                   "or leave out --ray-address to start a local Ray instance") from None
        return
    # enough logical CPUs that every replica fits on this machine (llama.cpp and torch use the real cores)
    cpus = max(os.cpu_count() or 1, cluster.max_replicas or 1)
    try:  # "local": a new instance even where RAY_ADDRESS or an earlier `ray start` names another one
        ray.init(address="local", num_cpus=cpus, namespace=NAMESPACE, include_dashboard=False, logging_level=quiet)
    except (ConnectionError, RuntimeError, ValueError, OSError) as e:
        raise QuantDeployError(f"could not start a local Ray instance ({_first_line(e)}); see the Ray log above, "
                               "or join a running cluster with --ray-address") from None


def _import_ray() -> Any:
    try:
        import ray
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(f"serving replicas needs Ray Serve, which is not installed ({e.name}): "
                                 f"{INSTALL}") from None
    return ray


def _lost_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError
    from ray.serve.exceptions import ReplicaUnavailableError

    return RayActorError, ReplicaUnavailableError, WorkerCrashedError, NodeDiedError


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40] or "model"


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
