"""`quantdeploy serve` as a real subprocess on 127.0.0.1, driven by the real `openai` client and by raw HTTP
(sockets) for what a client library hides: 429s, disconnects, probes during a long generation."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quantdeploy.models import DEFAULT_MODEL
from quantdeploy.server.process import ServerProcess, free_port

from conftest import assert_clean_error, run_cli

KEY = "sk-e2e-test-key"
NAME = "test-model"
LONG = {"prompt": "Once upon a time", "max_tokens": 4000, "temperature": 0, "ignore_eos": True, "stream": True}


@pytest.fixture(scope="module")
def server():
    """Two slots, API key from the environment (QUANTDEPLOY_API_KEY), a custom model name."""
    with ServerProcess("--name", NAME, "--max-concurrency", "2", env={"QUANTDEPLOY_API_KEY": KEY}) as s:
        yield s


@pytest.fixture(scope="module")
def small():
    """One slot and a queue of one: easy to fill."""
    with ServerProcess("--max-concurrency", "1", "--max-queue", "1") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def metrics(server) -> dict[tuple, float]:
    with urllib.request.urlopen(server.base_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def metric(server, name: str, **labels) -> float:
    return metrics(server).get((name, tuple(sorted(labels.items()))), 0.0)


def eventually(check, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


def wait_idle(server) -> None:
    eventually(lambda: metric(server, "quantdeploy_requests_in_flight") == 0
               and metric(server, "quantdeploy_queue_depth") == 0, "the server is idle")


class RawStream:
    """A streaming POST on a plain socket, so the test decides exactly when the client goes away."""

    def __init__(self, server, body: dict, path: str = "/v1/completions", headers: dict | None = None):
        self.sock = socket.create_connection((server.host, server.port), timeout=120)
        data = json.dumps(body).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/json\r\n" \
               f"Content-Length: {len(data)}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(head.encode() + b"\r\n" + data)
        self.buf = b""

    def read_events(self, n: int) -> int:
        """Read until at least n SSE events arrived; returns how many there are so far."""
        while self.buf.count(b"data: ") < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        return self.buf.count(b"data: ")

    def read_all(self) -> bytes:
        while b"\r\n0\r\n" not in self.buf and b"data: [DONE]" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        return self.buf

    @property
    def status(self) -> int:
        return int(self.buf.split(b" ", 2)[1])

    def close(self) -> None:
        self.sock.close()


# --- the openai client -----------------------------------------------------------------------------

def test_models_list(client):
    (m,) = client.models.list().data
    assert m.id == NAME and m.owned_by == "quantdeploy"
    extra = m.model_extra
    quant = DEFAULT_MODEL.name.rpartition(":")[2]  # the default model, Q4_1
    assert extra["format"] == "gguf" and extra["quantization"] == quant and extra["backend"] == "llama.cpp"
    assert extra["kernel"].startswith("llama.cpp-") and extra["device"] and extra["context_length"] > 0
    assert client.models.retrieve(NAME).id == NAME


def test_chat_non_streaming_and_streaming_agree(client):
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Count to five."}]
    args = dict(model=NAME, messages=msgs, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    r = client.chat.completions.create(**args)
    assert r.object == "chat.completion" and r.model == NAME
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == 8 and r.usage.total_tokens == r.usage.prompt_tokens + 8

    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content  # greedy: the same reply either way
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 8 and chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens


def test_multi_turn_history_reaches_the_model(client):
    turn1 = [{"role": "user", "content": "My name is Ada."}]
    r1 = client.chat.completions.create(model=NAME, messages=turn1, max_tokens=4, temperature=0)
    turn2 = turn1 + [{"role": "assistant", "content": r1.choices[0].message.content or "Hello Ada."},
                     {"role": "user", "content": "What is my name?"}]
    r2 = client.chat.completions.create(model=NAME, messages=turn2, max_tokens=4, temperature=0)
    assert r2.usage.prompt_tokens > r1.usage.prompt_tokens + 5
    assert r2.choices[0].finish_reason in ("stop", "length")


def test_completions_with_stop(client):
    r = client.completions.create(model=NAME, prompt="1, 2, 3, 4, 5, 6,", max_tokens=12, temperature=0, stop=[" 9"])
    assert r.object == "text_completion"
    assert r.choices[0].text == " 7, 8," and r.choices[0].finish_reason == "stop"
    args = dict(model=NAME, prompt="1, 2, 3, 4, 5, 6,", max_tokens=3, temperature=0)
    whole = client.completions.create(**args).choices[0]
    pieces = list(client.completions.create(**args, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == whole.text and whole.text.startswith(" 7,")
    assert pieces[-1].choices[0].finish_reason == whole.finish_reason == "length"


def test_seed_makes_sampling_reproducible(client):
    args = dict(model=NAME, prompt="The weather today is", max_tokens=6, temperature=1.0, seed=1234,
                extra_body={"ignore_eos": True})
    assert client.completions.create(**args).choices[0].text == client.completions.create(**args).choices[0].text


def test_wrong_or_missing_key_is_401(server, client):
    bad = openai.OpenAI(base_url=server.base_url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    r = httpx.post(server.base_url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.base_url + "/health").status_code == 200  # probes need no key


def test_bad_input_over_http_keeps_the_server_serving(server, client):
    auth = {"Authorization": f"Bearer {KEY}"}
    for body in (b"{broken", b'{"messages": [{"role": "user", "content": "x"}], "temperature": -1}'):
        r = httpx.post(server.base_url + "/v1/chat/completions", content=body, headers=auth)
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=[], max_tokens=2)
    assert e.value.body["param"] == "messages"
    assert client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2).choices[0].finish_reason in ("stop", "length")


def test_many_concurrent_streaming_clients_all_complete(server, client):
    n, results, errors = 10, {}, []
    before = metric(server, "quantdeploy_requests_total", endpoint="/v1/chat/completions", status="200")

    def one(i: int) -> None:
        try:
            stream = client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": f"Tell me about the number {i}."}], max_tokens=12,
                temperature=0, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            chunks = list(stream)
            results[i] = ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                          [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason],
                          chunks[-1].usage.completion_tokens)
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert sorted(results) == list(range(n))
    for text, finish, tokens in results.values():
        assert finish == ["length"] and tokens == 12 and text
    assert metric(server, "quantdeploy_requests_total", endpoint="/v1/chat/completions", status="200") == before + n


# --- raw HTTP: long generations, the queue, disconnects -----------------------------------------------

def test_health_and_metrics_answer_during_a_long_generation(small):
    wait_idle(small)
    long = RawStream(small, LONG)
    try:
        assert long.read_events(3) >= 3 and long.status == 200
        with urllib.request.urlopen(small.base_url + "/health", timeout=5) as r:
            assert r.status == 200
        assert metric(small, "quantdeploy_requests_in_flight") == 1  # /metrics answered while it generates
        seen = long.buf.count(b"data: ")
        assert long.read_events(seen + 3) >= seen + 3  # and the generation kept going meanwhile
    finally:
        long.close()
    wait_idle(small)


def test_queue_full_gets_429_with_retry_after(small):
    wait_idle(small)
    running = RawStream(small, LONG)
    queued = None
    try:
        running.read_events(2)
        queued = RawStream(small, {**LONG, "max_tokens": 3})
        eventually(lambda: metric(small, "quantdeploy_queue_depth") == 1, "the second request is queued")
        r = httpx.post(small.base_url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        err = r.json()["error"]
        assert err["type"] == "rate_limit_error" and err["code"] == "queue_full"
        c = openai.OpenAI(base_url=small.base_url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            c.completions.create(model=DEFAULT_MODEL.name, prompt="x", max_tokens=2)
        running.close()  # frees the slot: the queued request runs to the end
        body = queued.read_all()
        assert queued.status == 200 and b'"finish_reason": "length"' in body and b"data: [DONE]" in body
    finally:
        running.close()
        if queued:
            queued.close()
    wait_idle(small)
    assert metric(small, "quantdeploy_requests_total", endpoint="/v1/completions", status="429") == 2


def test_disconnect_mid_stream_cancels_the_generation(small):
    wait_idle(small)
    cancelled = metric(small, "quantdeploy_generations_total", finish_reason="cancelled")
    tokens = metric(small, "quantdeploy_completion_tokens_total")
    s = RawStream(small, LONG)
    assert s.read_events(5) >= 5
    s.close()
    eventually(lambda: metric(small, "quantdeploy_generations_total", finish_reason="cancelled") == cancelled + 1,
               "the generation is cancelled")
    assert metric(small, "quantdeploy_requests_in_flight") == 0
    assert metric(small, "quantdeploy_completion_tokens_total") - tokens < LONG["max_tokens"] / 2
    r = httpx.post(small.base_url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "temperature": 0},
                   timeout=60)
    assert r.status_code == 200  # the slot is free for the next request


def test_disconnect_while_queued_leaves_the_queue(small):
    wait_idle(small)
    running = RawStream(small, LONG)
    try:
        running.read_events(2)
        before = metric(small, "quantdeploy_generations_total", finish_reason="length")
        queued = RawStream(small, {**LONG, "stream": False, "max_tokens": 3})
        eventually(lambda: metric(small, "quantdeploy_queue_depth") == 1, "the request is queued")
        queued.close()
        eventually(lambda: metric(small, "quantdeploy_queue_depth") == 0, "the queued request left")
        assert metric(small, "quantdeploy_requests_in_flight") == 1  # the long one still runs
    finally:
        running.close()
    wait_idle(small)
    assert metric(small, "quantdeploy_generations_total", finish_reason="length") == before  # it never ran


# --- the command line ----------------------------------------------------------------------------------

def test_cli_errors_are_one_line(tmp_path):
    assert_clean_error(run_cli("serve", str(tmp_path / "nope.gguf"), "--port", str(free_port())), "no such")
    assert_clean_error(run_cli("serve", "--format", "gptq", "--port", str(free_port())), "does not match")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert_clean_error(run_cli("serve", "--port", str(taken.getsockname()[1])), "cannot listen", "--port")
    assert_clean_error(run_cli("serve", "--template", "nope", "--port", str(free_port())), "unknown template")
    proc = run_cli("serve", "--max-concurrency", "0")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr


def test_cli_model_that_fails_to_load_exits_cleanly(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    proc = run_cli("serve", str(bad), "--port", str(free_port()), timeout=120)
    assert_clean_error(proc, "broken.gguf")


def test_non_loopback_without_key_warns(tmp_path):
    with ServerProcess(host="0.0.0.0") as s:
        pass
    assert "warning: serving on 0.0.0.0 without an API key" in s.logs()
    with ServerProcess(host="0.0.0.0", env={"QUANTDEPLOY_API_KEY": KEY}) as s:
        r = httpx.get(f"http://127.0.0.1:{s.port}/v1/models")
        assert r.status_code == 401
    assert "without an API key" not in s.logs()


def test_shutdown_ends_open_streams_with_an_error_event():
    s = ServerProcess().start()
    try:
        stream = RawStream(s, LONG)
        assert stream.read_events(2) >= 2
        rc = s.stop()  # SIGINT, as Ctrl-C
        body = stream.read_all()
        stream.close()
    finally:
        s.__exit__(None, None, None)
    assert rc == 0  # a clean shutdown, by itself (stop() would have killed it otherwise)
    assert b'"code": "server_shutting_down"' in body
    assert "Traceback" not in s.logs()
