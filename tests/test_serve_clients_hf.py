"""Structured output, forced tool calls, logprobs and n through the `openai` SDK against `quantdeploy serve` of the
real GPTQ fixture (transformers + gptqmodel) and the real AWQ fixture (quantdeploy's fast engine): the grammar mask
and the logprobs come from the torch engines' row-wise sampler here, not from llama.cpp. One server per format."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from quantdeploy.server.process import ServerProcess

from test_serve_clients import ASK, WEATHER, Person, Weather

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[("gptq", "hf"), ("awq", "fast")], ids=["gptq-transformers", "awq-fast-engine"])
def served(request, gptq_path, awq_path):
    fmt, engine = request.param
    path = {"gptq": gptq_path, "awq": awq_path}[fmt]
    with ServerProcess(str(path), "--name", fmt, "--engine", engine, "--device", "cpu") as s:
        yield openai.OpenAI(base_url=s.base_url + "/v1", api_key="unused", max_retries=0, timeout=600), fmt, engine


def test_structured_output_tools_logprobs_and_n(served):
    client, name, engine = served
    (m,) = client.models.list().data
    assert m.model_extra["backend"] == {"hf": "transformers+gptqmodel", "fast": "quantdeploy-engine"}[engine]

    r = client.chat.completions.parse(model=name, messages=[{"role": "user", "content": "Alice is 30 years old. "
                                                                                         "Extract the person."}],
                                      response_format=Person, max_tokens=40, temperature=0)
    assert r.choices[0].finish_reason == "stop" and isinstance(r.choices[0].message.parsed, Person)

    stream = client.chat.completions.create(model=name, messages=ASK, tools=[WEATHER], stream=True, max_tokens=40,
                                            temperature=0.8, seed=1, tool_choice="required")
    args = "".join(tc.function.arguments or "" for c in stream if c.choices
                   for tc in (c.choices[0].delta.tool_calls or []))
    Weather.model_validate_json(args)

    r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Count: 1, 2, 3"}],
                                       max_tokens=4, temperature=1, seed=5, n=2, logprobs=True, top_logprobs=2)
    assert len(r.choices) == 2 and r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)
    for c in r.choices:
        assert "".join(t.token for t in c.logprobs.content) == c.message.content
        assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in c.logprobs.content)
    again = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Count: 1, 2, 3"}],
                                           max_tokens=4, temperature=1, seed=5, n=2)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]

    class Item(BaseModel):
        label: str
        score: int

    r = client.completions.create(model=name, prompt="An item as JSON: ", max_tokens=30, temperature=0, logprobs=1,
                                  extra_body={"response_format": {"type": "json_schema", "json_schema": {
                                      "name": "item", "schema": Item.model_json_schema()}}})
    Item.model_validate_json(r.choices[0].text)
    assert "".join(r.choices[0].logprobs.tokens) == r.choices[0].text
    assert json.loads(r.choices[0].text)
