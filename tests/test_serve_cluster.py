"""`quantdeploy serve --replicas 2 --ray-address ...` on a real two-node Ray cluster on this machine (a head and a
worker node, each `ray start` in its own process group, one CPU each), driven by the real `openai` client: both
replicas take traffic, a replica killed mid-load fails only the request it was streaming while the queued ones go to
the other replica, and Ray brings the killed one back."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quantdeploy.errors import UsageError
from quantdeploy.server.cluster import ClusterSettings
from quantdeploy.server.cluster.front import ClusterView, Front
from quantdeploy.server.cluster.metrics import FrontMetrics
from quantdeploy.server.config import ServerSettings
from quantdeploy.server.process import ServerProcess, free_port

from conftest import REPO, assert_clean_error, run_cli

pytest.importorskip("ray.serve", reason="the cluster extra is not installed: pip install 'quantdeploy[cluster]'")
pytestmark = pytest.mark.slow

NAME = "clustered"
# the test cluster has no token (Ray enables token authentication by default); the workers import this tree
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
NODE_MEMORY = str(80 * 1024 * 1024)  # each node's object store: the replicas pass only small messages
STREAM = dict(model=NAME, prompt="Once upon a time", max_tokens=24, temperature=0, stream=True,
              extra_body={"ignore_eos": True})


def _ray_node(*args: str, log: Path) -> subprocess.Popen:
    ports = []
    for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                 "--metrics-export-port", "--node-manager-port", "--object-manager-port"):
        ports += [flag, str(free_port())]
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                                 os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([ray, "start", *args, "--num-cpus", "1", "--num-gpus", "0", "--object-store-memory",
                             NODE_MEMORY, "--disable-usage-stats", "--block", *ports],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)  # its own process group: the teardown ends exactly these


def _end_groups(procs: list[subprocess.Popen], grace: float = 5) -> None:
    """SIGTERM to each node's process group, SIGKILL to what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.2)
    for p in procs:
        p.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The head node's address, once its GCS listens; the worker node joins it."""
    logs = tmp_path_factory.mktemp("ray")
    session = tempfile.mkdtemp(prefix="qdray-")  # Ray's sockets live under it: a short path
    port = free_port()
    head = _ray_node("--head", "--port", str(port), "--temp-dir", session, "--include-dashboard", "false",
                     "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
                     log=logs / "head.log")
    nodes = [head]
    try:
        deadline = time.monotonic() + 120
        while not _listening(port):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start:\n{(logs / 'head.log').read_text()[-3000:]}")
            time.sleep(0.5)
        nodes.append(_ray_node("--address", f"127.0.0.1:{port}", log=logs / "worker.log"))
        yield f"127.0.0.1:{port}"
    finally:
        _end_groups(nodes)
        shutil.rmtree(session, ignore_errors=True)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def metrics(server) -> dict[tuple, float]:
    with urllib.request.urlopen(server.base_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def replicas(server) -> dict[str, dict[str, str]]:
    """replica id -> {pid, node}, from quantdeploy_replica_info."""
    return {dict(labels)["replica"]: dict(labels) for (name, labels) in metrics(server)
            if name == "quantdeploy_replica_info"}


def served(server) -> dict[str, float]:
    """replica id -> completions it answered 200, from its own quantdeploy_requests_total."""
    out: dict[str, float] = {}
    for (name, labels), value in metrics(server).items():
        d = dict(labels)
        if name == "quantdeploy_requests_total" and d.get("endpoint") == "/v1/completions" and d["status"] == "200":
            out[d["replica"]] = value
    return out


def health(server) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(server.base_url + "/health", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def eventually(check, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


def stream_text(client: openai.OpenAI) -> str:
    return "".join(c.choices[0].text for c in client.completions.create(**STREAM) if c.choices)


@pytest.mark.parametrize("args, needle", [
    (("0", None), "--replicas takes a positive number"),
    (("two", None), "--replicas takes a positive number"),
    (("2", "1:2"), "either --replicas or --autoscale"),
    ((None, "3:1"), "MIN:MAX"),
    ((None, "0:2"), "MIN:MAX"),
    ((None, "4"), "MIN:MAX"),
])
def test_replica_options_are_checked(args, needle):
    with pytest.raises(UsageError, match=re.escape(needle)):
        ClusterSettings.from_options(*args, None, None)


@pytest.mark.parametrize("replicas, autoscale, gpus, cluster_gpus, expect", [
    ("3", None, None, 0, {"num_replicas": 3, "ray_actor_options": {"num_cpus": 1, "num_gpus": 0.0}}),
    ("auto", None, None, 4, {"num_replicas": 4, "ray_actor_options": {"num_cpus": 1, "num_gpus": 1.0}}),
    ("auto", None, 2, 4, {"num_replicas": 2, "ray_actor_options": {"num_cpus": 1, "num_gpus": 2}}),
    (None, "1:4", None, 0, {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
                                                   "target_ongoing_requests": 2}}),
])
def test_replica_options_become_serve_options(replicas, autoscale, gpus, cluster_gpus, expect):
    options = ClusterSettings.from_options(replicas, autoscale, gpus, None).deployment_options(cluster_gpus, 2)
    assert options["max_ongoing_requests"] == 2  # a replica takes what its model decodes at once; the router queues
    for key, value in expect.items():
        assert options[key] == value


def test_the_front_queues_up_to_max_queue_then_answers_429():
    view = ClusterView(phase="ready", healthy=2, target=2)
    front = Front(ServerSettings(model_name="m", max_concurrency=2, max_queue=1), view, FrontMetrics(), lost=())
    assert front.refusal() is None
    front.active = 4  # both replicas full: one request may wait
    assert front.refusal() is None
    front.pending = 1
    busy = front.refusal()
    assert busy.status == 429 and busy.code == "queue_full" and int(busy.headers["Retry-After"]) >= 1
    front.active = 3  # a replica has room again: the waiting request takes it, a new one may wait
    assert front.refusal() is None
    view.phase = "loading"
    assert front.refusal().code == "model_loading"


@pytest.mark.parametrize("phase, healthy, code, status", [
    ("ready", 2, 200, "ok"), ("ready", 1, 200, "degraded"), ("ready", 0, 503, "unavailable"),
    ("loading", 1, 503, "loading"), ("failed", 0, 503, "failed"), ("stopping", 2, 503, "stopping"),
])
def test_health_reports_capacity(phase, healthy, code, status):
    view = ClusterView(phase=phase, healthy=healthy, target=2, error="boom" if phase == "failed" else None)
    got_code, body, _ = Front(ServerSettings(model_name="m"), view, FrontMetrics(), lost=()).health()
    assert (got_code, body["status"], body["replicas"]) == (code, status, {"healthy": healthy, "target": 2})


def test_usage_errors_come_before_ray_starts():
    proc = run_cli("serve", "--replicas", "auto", "--port", "0", timeout=120)
    assert_clean_error(proc, "one replica on each GPU", "--replicas N")
    assert "starting" not in proc.stderr


def test_a_model_that_fails_to_load_on_the_replicas_ends_the_server_with_one_line(cluster, gguf_path, tmp_path):
    data = bytearray(gguf_path.read_bytes())
    head = 2 << 20  # the metadata: a well-formed file whose architecture llama.cpp does not know
    data[:head] = bytes(data[:head]).replace(b"gemma3", b"gemmaX")
    broken = tmp_path / "unknown-arch.gguf"
    broken.write_bytes(data)
    # a relative path (the replicas run elsewhere: the front hands them the absolute one)
    proc = run_cli("serve", broken.name, "--replicas", "1", "--ray-address", cluster, "--port", "0",
                   env=RAY_ENV, timeout=240, cwd=tmp_path)
    assert_clean_error(proc, "failed to load on a replica", "llama.cpp could not load unknown-arch.gguf")


@pytest.fixture(scope="module")
def server(cluster):
    with ServerProcess("--name", NAME, "--replicas", "2",
                       "--ray-address", cluster, "--max-concurrency", "1", env=RAY_ENV) as s:
        eventually(lambda: health(s) == (200, {"status": "ok", "model": NAME,
                                               "replicas": {"healthy": 2, "target": 2}}), "both replicas are up")
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_both_replicas_take_traffic_behind_one_endpoint(server, client):
    placed = replicas(server)
    assert len(placed) == 2 and len({r["node"] for r in placed.values()}) == 2  # one replica on each node
    assert [m.id for m in client.models.list().data] == [NAME]
    texts: list[str] = []
    threads = [threading.Thread(target=lambda: texts.append(stream_text(client))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(texts) == 4 and len(set(texts)) == 1 and texts[0]  # the same model, greedy: the same text
    eventually(lambda: len(served(server)) == 2 and sum(served(server).values()) >= 4,
               "each replica's own metrics count the completions it answered", timeout=30)
    assert set(served(server)) == set(placed)


def test_a_client_that_goes_away_stops_its_generation_on_the_replica(server):
    body = json.dumps({**{k: v for k, v in STREAM.items() if k != "extra_body"}, "max_tokens": 2000,
                       "ignore_eos": True}).encode()
    with socket.create_connection((server.host, server.port), timeout=60) as sock:
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        seen = b""
        while seen.count(b"data: ") < 3:
            seen += sock.recv(65536)
    eventually(lambda: sum(v for (name, labels), v in metrics(server).items()
                           if name == "quantdeploy_generations_total" and ("finish_reason", "cancelled") in labels)
               >= 1, "the replica counts the generation as cancelled", timeout=60)
    eventually(lambda: metrics(server).get(("quantdeploy_router_requests_in_flight", ()), 1) == 0,
               "nothing runs any more", timeout=30)


def test_a_killed_replica_fails_only_its_streaming_request_and_comes_back(server, client):
    before = replicas(server)
    outcomes: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            outcomes[i] = stream_text(client)
        except openai.APIError as e:
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    # both replicas busy, the rest queued in the router
    eventually(lambda: metrics(server).get(("quantdeploy_router_requests_in_flight", ()), 0) == 2
               and metrics(server).get(("quantdeploy_router_queue_depth", ()), 0) >= 1, "a full queue", timeout=60)
    victim, info = sorted(before.items())[0]
    os.kill(int(info["pid"]), signal.SIGKILL)
    eventually(lambda: health(server)[1]["status"] == "degraded", "/health says degraded", timeout=30)
    code, body = health(server)
    assert code == 200 and body["replicas"] == {"healthy": 1, "target": 2}
    for t in threads:
        t.join(180)
    failed = [o for o in outcomes.values() if isinstance(o, Exception)]
    assert len(outcomes) == 6 and len(failed) == 1, outcomes  # only the request the dead replica was streaming
    assert "replica" in str(failed[0]) and "retry" in str(failed[0])
    assert len({o for o in outcomes.values() if isinstance(o, str)}) == 1  # the others: complete
    m = metrics(server)
    assert m[("quantdeploy_replica_failures_total", (("outcome", "failed"),))] == 1
    # Ray restarts it: a new replica (a new process) and the deployment is whole again
    eventually(lambda: health(server) == (200, {"status": "ok", "model": NAME,
                                                "replicas": {"healthy": 2, "target": 2}}), "back to two replicas")
    eventually(lambda: len(replicas(server)) == 2 and victim not in replicas(server), "the new replica reports")
    new = next(r for r in replicas(server) if r not in before)
    assert replicas(server)[new]["pid"] != info["pid"]
    threads = [threading.Thread(target=lambda: stream_text(client)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    eventually(lambda: served(server).get(new, 0) >= 1, "the new replica takes traffic", timeout=30)


def test_stop_ends_the_replicas(server):
    pids = [int(r["pid"]) for r in replicas(server).values()]
    assert server.stop(60) == 0
    for pid in pids:
        eventually(lambda: not _alive(pid), f"replica process {pid} ended", timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
