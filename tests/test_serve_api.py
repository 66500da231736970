"""The server in-process (Starlette TestClient) on the real embedded GGUF: request validation, error bodies,
auth, body limit, loading state, /v1/models metadata and /metrics. End-to-end tests with the real `openai`
client against `quantdeploy serve` in a subprocess live in test_serve_e2e.py."""

from __future__ import annotations

import json
import threading

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from quantdeploy.errors import InvalidModel
from quantdeploy.server import ServerSettings, create_app

NAME = "test-gguf"
KEY = "sk-test-0123456789"
OK_MSG = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def client(gguf_model):
    app = create_app(ServerSettings(model_name=NAME, max_body_bytes=64 * 1024), model=gguf_model)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def keyed(gguf_model):
    app = create_app(ServerSettings(model_name=NAME, api_key=KEY), model=gguf_model)
    with TestClient(app) as c:
        yield c


def error_of(r, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"], body
    return body["error"]


def metric(client, name: str, **labels) -> float:
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_models_lists_the_model_with_its_metadata(client, gguf_model):
    r = client.get("/v1/models")
    assert r.status_code == 200
    (m,) = r.json()["data"]
    assert m["id"] == NAME and m["object"] == "model"
    assert m["format"] == "gguf"
    assert m["quantization"] == "Q4_K_M"
    assert m["backend"] == "llama.cpp"
    assert m["kernel"] == gguf_model.kernel_report()["kernel"]
    assert m["device"] == gguf_model.device
    assert m["context_length"] == gguf_model.context_length
    assert client.get(f"/v1/models/{NAME}").json()["id"] == NAME
    assert error_of(client.get("/v1/models/other"), 404)["code"] == "model_not_found"


def test_chat_response_shape_and_usage(client, gguf_model):
    r = client.post("/v1/chat/completions", json={"model": NAME, "messages": OK_MSG, "max_tokens": 4,
                                                  "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == NAME and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length"
    prompt_ids = gguf_model.tokenize(gguf_model.render_chat(OK_MSG), add_bos=False)
    assert body["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": 4,
                             "total_tokens": len(prompt_ids) + 4}


def test_completion_stream_is_sse_with_done(client):
    r = client.post("/v1/completions", json={"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 12, "temperature": 0,
                                             "stream": True, "stop": [" 9"],
                                             "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == " 7, 8,"  # greedy counting, cut before the stop string
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finals] == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 3


BAD_CHAT = [
    # (raw body, status, param, words in the message)
    (b"{not json", 400, None, "not valid json"),
    (b"", 400, None, "empty"),
    (b"[1, 2]", 400, None, "json object"),
    (b"{}", 400, "messages", "required"),
    (b'{"messages": []}', 400, "messages", "non-empty"),
    (b'{"messages": "hi"}', 400, "messages", "non-empty list"),
    (b'{"messages": [42]}', 400, "messages.0", "object"),
    (b'{"messages": [{"role": "wizard", "content": "x"}]}', 400, "messages.0.role", "system, developer, user"),
    (b'{"messages": [{"role": "tool", "content": "x"}]}', 400, "messages.0.tool_call_id", "required"),
    (b'{"messages": [{"role": "tool", "content": "x", "tool_call_id": "call_9"}]}', 400, "messages.0.tool_call_id",
     "no earlier assistant tool call"),
    (b'{"messages": [{"role": "user"}]}', 400, "messages.0.content", "string"),
    (b'{"messages": [{"role": "user", "content": 5}]}', 400, "messages.0.content", "string"),
    (b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}', 400,
     "messages.0.content.0", "only text"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', 400, "max_tokens", "at least 1"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}', 400, "max_tokens", "at least 1"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "10"}', 400, "max_tokens", "integer"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000000}', 400, "max_tokens",
     "context window"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": -0.1}', 400, "temperature", "between 0"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', 400, "temperature", "number"),
    (b'{"messages": [{"role": "user", "content": "x"}], "top_p": 0}', 400, "top_p", "(0, 1]"),
    (b'{"messages": [{"role": "user", "content": "x"}], "n": 17}', 400, "n", "between 1 and 16"),
    (b'{"messages": [{"role": "user", "content": "x"}], "n": 0}', 400, "n", "between 1 and 16"),
    (b'{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 21, "logprobs": true}', 400, "top_logprobs",
     "between 0 and 20"),
    (b'{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}', 400, "top_logprobs", "logprobs: true"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stop": 7}', 400, "stop", "string"),
    (b'{"messages": [{"role": "user", "content": "x"}], "seed": 1.5}', 400, "seed", "integer"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "stream", "boolean"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}', 400, "tools.0",
     "only function tools"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "a b"}}]}',
     400, "tools.0.function.name", "letters"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f", '
     b'"parameters": {"type": "object", "properties": {"x": {"type": "strin"}}}}}]}', 400,
     "tools.0.function.parameters", "invalid type"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f", '
     b'"parameters": {"type": "object", "properties": {"x": {"type": "array", "uniqueItems": true}}}}}]}', 400,
     "tools.0.function.parameters", "uniqueitems"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}', 400, "tool_choice",
     "no tools"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}], '
     b'"tool_choice": {"type": "function", "function": {"name": "g"}}}', 400, "tool_choice", "not among the tools"),
    (b'{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}', 400,
     "response_format.type", "json_schema"),
    (b'{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": '
     b'{"name": "r", "schema": {"type": "object", "not": {"required": ["a"]}}}}}', 400,
     "response_format.json_schema.schema", "not"),
    (b'{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": '
     b'{"name": "r", "schema": {"$ref": "#/$defs/missing"}}}}', 400, "response_format.json_schema.schema",
     "does not exist"),
    (b'{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}}', 400,
     "response_format.json_schema", "required"),
    (b'{"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", '
     b'"function": {"name": "f", "arguments": "{oops"}}]}]}', 400, "messages.0.tool_calls.0.function.arguments",
     "not valid json"),
    (b'{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}', 404, "model", "not served"),
]


@pytest.mark.parametrize("body,status,param,words", BAD_CHAT, ids=[b[0][:40].decode() or "empty" for b in BAD_CHAT])
def test_bad_chat_requests_get_openai_errors(client, body, status, param, words):
    err = error_of(client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"}),
                   status)
    assert err["param"] == param
    assert words.lower() in err["message"].lower(), err
    assert err["type"] == "invalid_request_error"


BAD_COMPLETION = [
    (b'{"max_tokens": 3}', "prompt", "required"),
    (b'{"prompt": ""}', "prompt", "non-empty"),
    (b'{"prompt": ["a", "b"]}', "prompt", "one prompt"),
    (b'{"prompt": [1, 2, 3]}', "prompt", "token-id"),
    (b'{"prompt": "x", "max_tokens": 0}', "max_tokens", "at least 1"),
    (b'{"prompt": "x", "echo": true}', "echo", "not supported"),
    (b'{"prompt": "x", "logprobs": 6}', "logprobs", "between 0 and 5"),
    (b'{"prompt": "x", "n": 2, "best_of": 3}', "best_of", "equal to n"),
    (b'{"prompt": "x", "temperature": 3}', "temperature", "between 0 and 2"),
]


@pytest.mark.parametrize("body,param,words", BAD_COMPLETION, ids=[b[0].decode()[:40] for b in BAD_COMPLETION])
def test_bad_completion_requests(client, body, param, words):
    err = error_of(client.post("/v1/completions", content=body, headers={"content-type": "application/json"}), 400)
    assert err["param"] == param and words in err["message"], err


def test_prompt_longer_than_the_context_is_a_400(client, gguf_model):
    long = "word " * (gguf_model.context_length + 10)
    err = error_of(client.post("/v1/completions", json={"prompt": long, "max_tokens": 1}), 400)
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"


def test_server_keeps_serving_after_bad_input(client):
    before = metric(client, "quantdeploy_requests_total", endpoint="/v1/chat/completions", status="400")
    for body in (b"{oops", b'{"messages": []}', b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}'):
        client.post("/v1/chat/completions", content=body)
    assert metric(client, "quantdeploy_requests_total", endpoint="/v1/chat/completions", status="400") == before + 3
    r = client.post("/v1/chat/completions", json={"messages": OK_MSG, "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_unknown_route_and_method_are_openai_shaped(client):
    assert error_of(client.get("/v1/nothing"), 404)["code"] == "not_found"
    assert error_of(client.get("/v1/chat/completions"), 405)["code"] == "method_not_allowed"


def test_body_limit(client):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 70_000}]})
    assert error_of(client.post("/v1/chat/completions", content=big), 413)["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(10):
            yield b" " * 10_000

    err = error_of(client.post("/v1/chat/completions", content=chunks(),
                               headers={"content-type": "application/json"}), 413)
    assert err["code"] == "request_too_large"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}x"}])
def test_api_key_required_on_v1(keyed, headers):
    for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", {"messages": OK_MSG})):
        r = keyed.request(method, path, json=body, headers=headers)
        err = error_of(r, 401)
        assert err["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"


def test_api_key_accepted_and_probes_stay_open(keyed):
    assert keyed.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/metrics").status_code == 200


def test_health_is_503_while_loading_then_200(gguf_path):
    import quantdeploy

    release = threading.Event()

    def slow_loader():
        release.wait(60)
        return quantdeploy.load(str(gguf_path))  # the app owns it and closes it at shutdown

    app = create_app(ServerSettings(model_name=NAME), loader=slow_loader)
    with TestClient(app) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert error_of(c.post("/v1/chat/completions", json={"messages": OK_MSG}), 503)["code"] == "model_loading"
        assert metric(c, "quantdeploy_model_ready") == 0
        release.set()
        for _ in range(200):
            if c.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert c.get("/health").json() == {"status": "ok", "model": NAME}
        assert metric(c, "quantdeploy_model_ready") == 1
    assert app.state.qd.model is None  # closed at shutdown


def test_load_failure_is_reported():
    failures = []

    def broken_loader():
        raise InvalidModel("llama.cpp could not load x.gguf: bad magic")

    app = create_app(ServerSettings(model_name=NAME), loader=broken_loader, on_load_error=failures.append)
    with TestClient(app) as c:
        for _ in range(200):
            if failures:
                break
            threading.Event().wait(0.05)
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "failed" and "bad magic" in r.json()["error"]
        assert error_of(c.get("/v1/models"), 503)["code"] == "model_load_failed"
    assert isinstance(failures[0], InvalidModel)


def test_a_generation_is_counted_before_its_waiter_wakes():
    """The metrics record a generation on the event loop before the request that waits for it can answer: a client
    that reads /metrics right after its response sees its tokens counted."""
    import asyncio

    from quantdeploy.server.runner import Running

    async def main():
        r = Running(asyncio.get_running_loop())
        seen = []
        r.on_end = lambda run: seen.append("counted")
        threading.Thread(target=r.end, args=(None, None)).start()
        async for _ in r.batches():
            pass
        seen.append("woken")
        return seen

    assert asyncio.run(main()) == ["counted", "woken"]


def test_metrics_count_tokens_and_latency(client):
    before = metric(client, "quantdeploy_completion_tokens_total")
    n_ttft = metric(client, "quantdeploy_time_to_first_token_seconds_count")
    r = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 5, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200
    assert metric(client, "quantdeploy_completion_tokens_total") == before + 5
    assert metric(client, "quantdeploy_time_to_first_token_seconds_count") == n_ttft + 1
    assert metric(client, "quantdeploy_time_per_output_token_seconds_count") >= 1
    assert metric(client, "quantdeploy_generations_total", finish_reason="length") >= 1
    assert metric(client, "quantdeploy_requests_in_flight") == 0
    assert metric(client, "quantdeploy_queue_depth") == 0
    assert metric(client, "process_resident_memory_bytes") > 0
    # a model that does not batch: one sequence per running generation, no KV pool to report
    assert metric(client, "quantdeploy_sequences_running") == 0 and metric(client, "quantdeploy_sequences_waiting") == 0
    assert metric(client, "quantdeploy_kv_cache_usage_ratio") == 0
    text = client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")


def test_a_model_that_decodes_one_sequence_serves_one_at_a_time(gguf_model, caplog):
    """--max-concurrency above what the model batches: one warning line, and the permits follow the model."""
    assert gguf_model.max_sequences == 1
    app = create_app(ServerSettings(model_name=NAME, max_concurrency=4), model=gguf_model)
    with caplog.at_level("WARNING", logger="quantdeploy.server"), TestClient(app) as c:
        assert app.state.qd.permits.size == 1
        r = c.post("/v1/completions", json={"prompt": "1, 2, 3,", "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "serving 1 at a time (--max-concurrency 4 asked)" in warnings[0], warnings
