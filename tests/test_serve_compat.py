"""What browser and multi-name clients need from the server (CORS, model aliases) and how it treats the OpenAI
request fields it does not generate from: accepted quietly when they cannot change the answer, else a 400 that
names the field. In-process (Starlette TestClient) on the real embedded GGUF."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from quantdeploy.errors import UsageError
from quantdeploy.server import ServerSettings, create_app

NAME = "gemma-test"
MSG = [{"role": "user", "content": "Say hi."}]
ORIGIN = "http://localhost:3000"


def app_client(model, **settings) -> TestClient:
    return TestClient(create_app(ServerSettings(model_name=NAME, **settings), model=model))


@pytest.fixture(scope="module")
def client(gguf_model):
    with app_client(gguf_model, aliases=("gpt-4o-mini", "local"), cors_origins=(ORIGIN,), api_key="k") as c:
        c.headers["Authorization"] = "Bearer k"
        yield c


def chat(client, **body):
    return client.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 2, "temperature": 0, **body})


def test_aliases_are_listed_and_answered(client):
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == [NAME, "gpt-4o-mini", "local"]
    assert client.get("/v1/models/local").json()["id"] == "local"
    r = chat(client, model="gpt-4o-mini")
    assert r.status_code == 200 and r.json()["model"] == "gpt-4o-mini"
    assert chat(client).json()["model"] == NAME
    err = chat(client, model="gpt-3.5-turbo").json()["error"]
    assert err["code"] == "model_not_found" and "gpt-4o-mini" in err["message"] and "--alias" in err["message"]


def test_wildcard_alias_accepts_any_model_id(gguf_model):
    with app_client(gguf_model, aliases=("*",)) as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == [NAME]
        r = c.post("/v1/chat/completions", json={"model": "gpt-3.5-turbo", "messages": MSG, "max_tokens": 1})
        assert r.status_code == 200 and r.json()["model"] == NAME
        assert c.get("/v1/models/anything").json()["id"] == NAME


def test_cors_preflight_and_headers_for_an_allowed_origin(client):
    r = client.options("/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "x-stainless-os" in r.headers["access-control-allow-headers"].lower()
    r = client.get("/v1/models", headers={"Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    # errors carry the headers too, so the page can read them
    r = client.get("/v1/models", headers={"Origin": ORIGIN, "Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN


def test_cors_refuses_other_origins_and_is_off_by_default(client, gguf_model):
    r = client.options("/v1/models", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    with app_client(gguf_model) as c:
        r = c.options("/v1/models", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.get("/v1/models", headers={"Origin": ORIGIN}).headers


@pytest.mark.parametrize("bad", [{"aliases": ("",)}, {"aliases": (" x",)}, {"cors_origins": ("localhost:3000",)},
                                 {"cors_origins": ("http://a.example/path",)}])
def test_bad_alias_or_origin_is_a_usage_error(bad):
    with pytest.raises(UsageError):
        ServerSettings(model_name=NAME, **bad).validate()


def test_fields_that_cannot_change_the_answer_are_accepted(client):
    r = chat(client, user="u-1", metadata={"k": "v"}, store=False, service_tier="auto", frequency_penalty=0,
             presence_penalty=0.0, logit_bias={}, modalities=["text"], prompt_cache_key="x")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field,value", [("frequency_penalty", 0.5), ("presence_penalty", -1), ("logit_bias", {"1": 5}),
                                         ("modalities", ["text", "audio"]), ("audio", {"voice": "alloy"}),
                                         ("reasoning_effort", "high"), ("functions", [{"name": "f"}]),
                                         ("function_call", "auto"), ("min_p", 0.1), ("repetition_penalty", 1.2),
                                         ("frequency_penalty", False)])
def test_fields_the_server_cannot_honour_are_refused_by_name(client, field, value):
    r = chat(client, **{field: value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and err["code"] == "unsupported_parameter"
    assert chat(client).status_code == 200  # and the server keeps serving


def test_refused_fields_on_completions_too(client):
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1, "presence_penalty": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "presence_penalty"


def test_cli_refuses_a_bad_origin_before_loading(cli):
    from conftest import assert_clean_error

    assert_clean_error(cli("serve", "--cors-origin", "localhost:3000", "--port", "0"), "--cors-origin", "http://")


def test_routes_without_v1_and_the_system_fingerprint(client):
    a = chat(client).json()
    r = client.post("/chat/completions", json={"messages": MSG, "max_tokens": 1})
    assert r.status_code == 200 and r.json()["system_fingerprint"] == a["system_fingerprint"]
    assert a["system_fingerprint"].startswith("fp_") and len(a["system_fingerprint"]) == 13
    assert [m["id"] for m in client.get("/models").json()["data"]][0] == NAME
    assert client.post("/completions", json={"prompt": "x", "max_tokens": 1}).json()["system_fingerprint"] == \
        a["system_fingerprint"]
    assert client.get("/models", headers={"Authorization": "Bearer wrong"}).status_code == 401  # the key still holds


def test_llama_cpp_constraint_extensions(client):
    """llama.cpp's server takes a GBNF `grammar`, a top-level `json_schema` and a `schema` inside json_object;
    so does this one (an ignored constraint would change the answer)."""
    r = client.post("/v1/completions", json={"prompt": "Say a:", "max_tokens": 8, "grammar": 'root ::= "a"{5,5}'})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "aaaaa", r.text
    r = chat(client, max_tokens=6, json_schema={"const": "42"})
    assert r.json()["choices"][0]["message"]["content"] == '"42"', r.text
    r = chat(client, max_tokens=6, response_format={"type": "json_object", "schema": {"enum": [1, 2]}})
    assert r.json()["choices"][0]["message"]["content"] in ("1", "2"), r.text
    for body, param in [({"grammar": "root ::= (oops"}, "grammar"),
                        ({"response_format": {"type": "json_object", "schema": 123}}, "response_format.schema"),
                        ({"json_schema": {"type": "hiccup"}}, "json_schema"),
                        ({"grammar": 'root ::= "a"', "json_schema": {}}, "grammar")]:
        r = chat(client, **body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
