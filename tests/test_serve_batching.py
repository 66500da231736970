"""`quantdeploy serve` holds one model and batches concurrent requests on it: the real `openai` client, N streaming
clients at once against a real server of the Gemma GGUF fixture."""

from __future__ import annotations

import os
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quantdeploy.server.process import ServerProcess

from conftest import openai_client

# Confident continuations: at every step the likeliest token leads the next by more than 2.5 in log-probability,
# far above the float noise by which llama.cpp's batched kernels move a row's logits (test_gguf_batch.py), so the
# greedy answer of each is the same batched or alone.
PROMPTS = ["100, 101, 102, 103, 104,", "40, 41, 42, 43, 44,", "7, 8, 9, 10, 11,", "1, 2, 3, 4, 5,",
           "200, 201, 202, 203, 204,", "300, 301, 302, 303, 304,", "1, 2, 3, 4, 5, 6, 7, 8,", "21, 22, 23, 24, 25,"]
TOKENS = 12
NAME = "gemma"


@pytest.fixture(scope="module")
def server(gguf_path):
    """--max-concurrency 8: eight sequences decoded together by one model."""
    with ServerProcess(str(gguf_path), "--name", NAME, "--max-concurrency", "8") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


def gauge(server, name: str) -> float:
    with urllib.request.urlopen(server.base_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return next((s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name), 0.0)


def test_concurrent_streaming_clients_get_their_single_client_answers(server, client):
    args = dict(model=NAME, max_tokens=TOKENS, temperature=0, extra_body={"ignore_eos": True})
    alone = [client.completions.create(prompt=p, **args).choices[0].text for p in PROMPTS]
    results: dict[int, tuple] = {}
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            chunks = list(client.completions.create(prompt=PROMPTS[i], stream=True,
                                                    stream_options={"include_usage": True}, **args))
            results[i] = ("".join(c.choices[0].text for c in chunks if c.choices),
                          [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason],
                          chunks[-1].usage.completion_tokens)
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    running = []
    while any(t.is_alive() for t in threads):
        running.append(gauge(server, "quantdeploy_sequences_running"))
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert not errors, errors
    assert [results[i] for i in range(len(PROMPTS))] == [(a, ["length"], TOKENS) for a in alone]
    assert max(running) > 1  # the model decoded several of them together
    deadline = time.monotonic() + 30
    while gauge(server, "quantdeploy_kv_cache_usage_ratio") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gauge(server, "quantdeploy_kv_cache_usage_ratio") == 0  # every sequence gave its cells back
    assert gauge(server, "quantdeploy_sequences_running") == 0


def test_one_copy_of_the_model(server, client, gguf_path):
    """However many generations run at once, the process maps the weights file once: one model, shared."""
    client.completions.create(model=NAME, prompt="Hi", max_tokens=2)
    weights = os.path.realpath(gguf_path)
    with open(f"/proc/{server.pid}/maps") as f:
        maps = [line.split()[0] for line in f if line.rstrip().endswith(weights)]
    assert len(set(maps)) == 1, maps
    assert "up to 8 generations at once" in server.logs()


def test_the_default_is_what_the_model_batches():
    """No --max-concurrency: the GGUF context decides (one sequence per 256 of its cells, at most 64); here the
    default model's."""
    with ServerProcess("--ctx", "1024") as s:
        pass
    assert "up to 4 generations at once" in s.logs()
