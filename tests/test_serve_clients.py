"""What real clients send, against a real `quantdeploy serve` of the tests' GGUF (Gemma-3-270M, a base model):
the `openai` SDK (tools, tool_choice, chat.completions.parse, streamed tool-call deltas, logprobs, n, seed),
LangChain's ChatOpenAI (bind_tools, with_structured_output in json_schema and function_calling modes) and
pydantic-ai (a structured output_type). With constrained decoding every structured answer validates, even from
this small model. Bad input gets a 400 naming the field, and the server keeps serving. One server, small replies."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel, Field

from quantdeploy.server.process import ServerProcess

from conftest import openai_client

NAME = "gemma-gguf"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str = Field(description="the person's first name")
    age: int


class Weather(BaseModel):
    city: str
    unit: str


@pytest.fixture(scope="module")
def server(gguf_path):
    with ServerProcess(str(gguf_path), "--name", NAME, "--alias", "*") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


def test_parse_with_a_pydantic_model(client):
    r = client.chat.completions.parse(model=NAME, messages=[{"role": "user", "content": "Alice is 30 years old. "
                                                                                        "Extract the person."}],
                                      response_format=Person, max_tokens=60, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Person), choice
    assert choice.message.parsed.age == 30


def test_required_and_named_tool_calls_validate(client):
    r = client.chat.completions.create(model=NAME, messages=ASK, tools=[WEATHER, ADD], tool_choice="required",
                                       max_tokens=60, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in ("get_weather", "add")
    assert isinstance(json.loads(call.function.arguments), dict)

    r = client.chat.completions.create(model=NAME, messages=ASK, tools=[WEATHER, ADD], max_tokens=60, temperature=1,
                                       seed=3, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    w = Weather.model_validate_json(call.function.arguments)
    assert w.unit in ("celsius", "fahrenheit")


def test_tool_call_deltas_stream_as_openai_shapes_them(client):
    stream = client.chat.completions.create(model=NAME, messages=ASK, tools=[WEATHER], stream=True, max_tokens=60,
                                            temperature=0, tool_choice={"type": "function",
                                                                        "function": {"name": "get_weather"}},
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    assert deltas[0].function.arguments == "" and all(d.index == 0 for d in deltas)
    args = "".join(d.function.arguments or "" for d in deltas)
    Weather.model_validate_json(args)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["tool_calls"] and chunks[-1].usage.completion_tokens > 0
    # the SDK's own stream helper assembles the same call
    with client.chat.completions.stream(model=NAME, messages=ASK, tools=[WEATHER], max_tokens=60, temperature=0,
                                        tool_choice="required") as s:
        final = s.get_final_completion()
    assert json.loads(final.choices[0].message.tool_calls[0].function.arguments) == json.loads(args)


def test_history_with_tool_calls_and_results(client):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_abc", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "18 degrees and sunny"},
        {"role": "developer", "content": "Answer in one sentence."}]
    r = client.chat.completions.create(model=NAME, messages=history, tools=[WEATHER], tool_choice="none",
                                       max_tokens=12, temperature=0, user="u-42", metadata={"run": "test"},
                                       store=False)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls


def test_logprobs_and_several_choices(client):
    r = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Count: 1, 2, 3"}],
                                       max_completion_tokens=5, temperature=1, seed=11, n=3, logprobs=True,
                                       top_logprobs=3)
    assert [c.index for c in r.choices] == [0, 1, 2] and r.usage.completion_tokens == sum(
        len(c.logprobs.content) for c in r.choices)
    for c in r.choices:
        text = "".join(t.token for t in c.logprobs.content)
        assert text == c.message.content
        for t in c.logprobs.content:
            assert t.logprob <= 0 and len(t.top_logprobs) == 3 and bytes(t.bytes).decode() == t.token
            assert t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
    again = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Count: 1, 2, 3"}],
                                           max_completion_tokens=5, temperature=1, seed=11, n=3)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]  # seeded
    stream = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], n=2,
                                            max_tokens=4, temperature=0, stream=True, logprobs=True)
    by_index: dict[int, str] = {0: "", 1: ""}
    lp_text: dict[int, str] = {0: "", 1: ""}
    for ch in stream:
        for c in ch.choices:
            by_index[c.index] += c.delta.content or ""
            if c.logprobs and c.logprobs.content:
                lp_text[c.index] += "".join(t.token for t in c.logprobs.content)
    assert by_index == lp_text and by_index[0] and by_index[1]

    done = client.completions.create(model=NAME, prompt="1, 2, 3, 4,", max_tokens=4, temperature=0, logprobs=2,
                                     stop=[" 7", "\n\n", "xx", "yy", "zz", "end", "stop", "done", "fin", " 8"])
    lp = done.choices[0].logprobs
    assert "".join(lp.tokens) == done.choices[0].text and len(lp.top_logprobs[0]) == 2
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])


def test_completions_with_a_json_schema(client):
    r = client.completions.create(model=NAME, prompt="A person as JSON: ", max_tokens=40, temperature=0,
                                  extra_body={"response_format": {"type": "json_schema", "json_schema": {
                                      "name": "p", "schema": Person.model_json_schema()}}})
    assert r.choices[0].finish_reason == "stop"
    Person.model_validate_json(r.choices[0].text)


@pytest.mark.parametrize("kwargs,param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "array", "uniqueItems": True}}}}}]}, "tools.0.function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
     "messages.1.tool_call_id"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
     "response_format.json_schema.schema"),
    ({"n": 1000}, "n"),
    ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"presence_penalty": 1.5}, "presence_penalty"),
])
def test_bad_input_is_a_400_naming_the_field_and_the_server_keeps_serving(client, kwargs, param):
    body = {"model": NAME, "messages": ASK, "max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**body)
    assert e.value.body["param"] == param, e.value.body
    assert client.chat.completions.create(model=NAME, messages=ASK, max_tokens=1).choices


def test_langchain_structured_output_and_tools(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server.base_url + "/v1", api_key="unused", model="gpt-4o-mini", temperature=0,
                     max_tokens=60, max_retries=0)
    text = "Alice is 30 years old. Extract the person."
    for method in ("json_schema", "function_calling"):
        out = llm.with_structured_output(Person, method=method).invoke(text)
        assert isinstance(out, Person) and out.age == 30, (method, out)

    def get_weather(city: str, unit: str) -> str:
        """Get the current weather in a city; unit is celsius or fahrenheit."""
        return "sunny"

    msg = llm.bind_tools([get_weather], tool_choice="any").invoke("What is the weather in Paris?")
    (call,) = msg.tool_calls
    assert call["name"] == "get_weather" and set(call["args"]) == {"city", "unit"}
    msg = llm.bind_tools([get_weather]).invoke("Say hello.")  # auto: the model may answer in text
    assert msg.content or msg.tool_calls


def test_pydantic_ai_agent_with_a_structured_output(server):
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(base_url=server.base_url + "/v1", api_key="x"))
    agent = Agent(model, output_type=Person, model_settings={"temperature": 0, "max_tokens": 60})
    result = agent.run_sync("Alice is 30 years old. Extract the person.")
    assert isinstance(result.output, Person) and result.output.age == 30
