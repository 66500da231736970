"""Structured output and tool calling below the server: grammars from schemas (and the 400-worthy errors), the
tool-call parser for every family's syntax, the streaming filter, the prompt for templates with and without
tool support, the row-wise torch sampler with its grammar bitmask, and the Python API on the real embedded GGUF."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from quantdeploy import GenerationParams
from quantdeploy.chat.prepare import prepare_chat
from quantdeploy.chat.toolcalls import ToolCallFilter, parse_calls
from quantdeploy.chat.tools import SYNTAX, ToolPlan, check_history, check_tools, plan
from quantdeploy.errors import RequestError
from quantdeploy.structured.grammar import closed, json_schema_grammar, response_format_grammar

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
NAMES = ["get_weather", "add"]


class Weather(BaseModel):
    city: str
    unit: str


# --- grammars and their errors --------------------------------------------------------------------------

@pytest.mark.parametrize("schema,param,words", [
    ({"type": "array", "uniqueItems": True}, "s", "uniqueItems"),
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "s", "not"),
    ({"type": "strin"}, "s", "invalid type"),
    ({"$ref": "#/$defs/nowhere"}, "s", "does not exist"),
    ({"type": "string", "pattern": "[a-"}, "s", "regex"),
    ([1, 2], "s", "JSON schema object"),
])
def test_unenforceable_schemas_are_refused_by_name(schema, param, words):
    with pytest.raises(RequestError) as e:
        json_schema_grammar(schema, param)
    assert e.value.param == param and words.lower() in str(e.value).lower(), str(e.value)


@pytest.mark.parametrize("rf,param", [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "has space", "schema": {}}}, "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}}, "response_format.json_schema.strict"),
    ("json", "response_format"),
])
def test_bad_response_formats_name_the_field(rf, param):
    with pytest.raises(RequestError) as e:
        response_format_grammar(rf)
    assert e.value.param == param


def test_text_formats_need_no_grammar_and_pydantic_schemas_compile():
    assert response_format_grammar(None) is None and response_format_grammar({"type": "text"}) is None

    class Pet(BaseModel):
        kind: str
        legs: int | None = None
        tags: list[str] = []

    class Owner(BaseModel):
        name: str
        pets: list[Pet]

    assert response_format_grammar({"type": "json_schema", "json_schema": {
        "name": "owner", "strict": True, "schema": Owner.model_json_schema()}})


def test_closed_objects_allow_only_their_properties():
    s = closed({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}},
                                                 "c": {"type": "array", "items": {"properties": {"d": {}}}},
                                                 "e": {"type": "object", "properties": {}, "additionalProperties": True}},
                "$defs": {"X": {"properties": {"y": {}}}}, "allOf": [{"properties": {"z": {}}}]})
    assert s["additionalProperties"] is False and s["properties"]["a"]["additionalProperties"] is False
    assert s["properties"]["c"]["items"]["additionalProperties"] is False
    assert s["properties"]["e"]["additionalProperties"] is True  # an explicit choice stays
    assert s["$defs"]["X"]["additionalProperties"] is False
    assert "additionalProperties" not in s["allOf"][0]  # closing allOf branches would make them contradict
    n = closed({"type": "object", "properties": {"i": {"type": "integer"}, "j": {"type": ["integer", "null"],
                                                                                 "minimum": 0}}})
    assert (n["properties"]["i"]["minimum"], n["properties"]["i"]["maximum"]) == (-(2 ** 53 - 1), 2 ** 53 - 1)
    assert (n["properties"]["j"]["minimum"], n["properties"]["j"]["maximum"]) == (0, 2 ** 53 - 1)


# --- tools: checks, parsing, the streaming filter ---------------------------------------------------------

@pytest.mark.parametrize("tools,param", [
    ([{"type": "function"}], "tools.0"),
    ([{"type": "retrieval", "function": {"name": "f"}}], "tools.0"),
    ([{"type": "function", "function": {"name": "bad name"}}], "tools.0.function.name"),
    ([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}],
     "tools.1.function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], "tools.0.function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "string", "format": "no-such-format"}}}}}], "tools.0.function.parameters"),
    ({"name": "f"}, "tools"),
])
def test_malformed_tools_are_refused_by_name(tools, param):
    with pytest.raises(RequestError) as e:
        check_tools(tools)
    assert e.value.param == param, str(e.value)


def test_tool_history_must_pair_calls_with_results():
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]}
    check_history([{"role": "user", "content": "hi"}, call, {"role": "tool", "tool_call_id": "call_1", "content": "3"}])
    with pytest.raises(RequestError) as e:
        check_history([{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_1", "content": "3"}])
    assert e.value.param == "messages.1.tool_call_id"


PARSE = [
    # (what a model wrote, the text left, [(name, arguments)])
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>', "",
     [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    ('Checking.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n<tool_call>\n'
     '{"name": "add", "arguments": {"a": 3, "b": 4}}\n</tool_call>', "Checking.",
     [("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4})]),
    ('<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}', "", [("add", {"a": 1, "b": 2})]),
    ('{"name": "add", "parameters": {"a": 1, "b": 2}}; {"name": "get_weather", "parameters": {"city": "Rome", '
     '"unit": "celsius"}}', "", [("add", {"a": 1, "b": 2}), ("get_weather", {"city": "Rome", "unit": "celsius"})]),
    ('[TOOL_CALLS][{"name": "add", "arguments": {"a": 5, "b": 6}}]', "", [("add", {"a": 5, "b": 6})]),
    ('[TOOL_CALLS]add[ARGS]{"a": 5, "b": 6}', "", [("add", {"a": 5, "b": 6})]),
    ('add{"a": 5, "b": 6}', "", [("add", {"a": 5, "b": 6})]),  # Mistral v11 with its markers unshown
    ('{"tool_calls": [{"name": "add", "arguments": {"a": 7, "b": 8}}]}', "", [("add", {"a": 7, "b": 8})]),
    ('{"tool_call": {"name": "add", "arguments": "{\\"a\\": 9, \\"b\\": 1}"}}', "", [("add", {"a": 9, "b": 1})]),
    ('```json\n{"name": "add", "arguments": {"a": 2, "b": 2}}\n```', "", [("add", {"a": 2, "b": 2})]),
    ('{"name": "multiply", "arguments": {"a": 2}}', '{"name": "multiply", "arguments": {"a": 2}}', []),
    ('The answer is {"a": 1}.', 'The answer is {"a": 1}.', []),
    ('<tool_call>\n{"name": "add", "arguments": {"a": 1', '<tool_call>\n{"name": "add", "arguments": {"a": 1', []),
]


@pytest.mark.parametrize("text,content,calls", PARSE, ids=[p[0][:30] for p in PARSE])
def test_tool_calls_are_found_in_every_family_syntax(text, content, calls):
    got_content, got = parse_calls(text, NAMES)
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == calls
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in got)
    assert len({c["id"] for c in got}) == len(got)


def _filter(family: str, forced: bool) -> ToolCallFilter:
    tools = check_tools([WEATHER, ADD])
    return ToolCallFilter(ToolPlan(tools=tools, choice="required" if forced else "auto", parallel=True,
                                   syntax=SYNTAX[family], native=True))


@pytest.mark.parametrize("family,pieces,shown,content,calls", [
    ("hermes", ["Let me ", "check. <tool", "_call>\n", '{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'],
     ["Let me ", "check. "], "Let me check. ", ["add"]),
    ("generic", ["  ", '{"tool_calls": [{"name": ', '"add", "arguments": {"a": 1, "b": 2}}]}'], [], "", ["add"]),
    ("generic", ["Hello", " world", "!"], ["Hello", " world", "!"], "Hello world!", []),
    ("hermes", ["a <tool", "box> b"], ["a ", "<toolbox> b"], "a <toolbox> b", []),
    ("generic", ['{"answer": 42}'], ['{"answer": 42}'], '{"answer": 42}', []),
])
def test_the_filter_streams_text_and_holds_back_calls(family, pieces, shown, content, calls):
    f = _filter(family, forced=False)
    out = [o for o in (f.feed(p) for p in pieces) if o]
    tail = f.finish()
    if tail:
        out.append(tail)
    assert [o for o in out[:len(shown)]] == shown[:len(out)]
    assert "".join(out) == content
    assert [c["function"]["name"] for c in f.tool_calls] == calls


QWEN_LIKE = (  # a Hermes-style template that renders tools, as Qwen 2.5's does
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>\n{%- for t in tools %}\n{{ t | tojson }}{%- endfor %}\n"
    "</tools>\nReturn calls as <tool_call>\n{\"name\": ..., \"arguments\": ...}\n</tool_call><|im_end|>\n{%- endif %}"
    "{%- for m in messages %}{%- if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n"
    "</tool_response><|im_end|>\n{%- elif m.tool_calls %}<|im_start|>assistant\n{%- for c in m.tool_calls %}"
    "\n<tool_call>\n{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}\n"
    "</tool_call>{%- endfor %}<|im_end|>\n{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
HISTORY = [{"role": "user", "content": "Weather in Paris?"},
           {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
               "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
           {"role": "tool", "tool_call_id": "call_1", "content": "18 and sunny"}]


def test_a_template_with_tool_support_renders_tools_and_history_itself():
    from quantdeploy.chat.templates import render

    p = plan(QWEN_LIKE, HISTORY, check_tools([WEATHER]), "auto", False, lambda text: None)
    assert p.native and p.syntax.family == "hermes"
    text = render(QWEN_LIKE, p.messages, **p.render_kwargs)
    assert '"name": "get_weather"' in text.split("</tools>")[0]  # the tools, in the template's own section
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}' in text
    assert "<tool_response>\n18 and sunny" in text


def test_the_forced_grammar_uses_the_family_syntax_and_special_tokens(gguf_model):
    import llguidance

    tools = check_tools([WEATHER])
    special = {"<tool_call>": 105}  # pretend the vocabulary has the marker as one special token
    p = plan(QWEN_LIKE, HISTORY[:1], tools, "get_weather", False, special.get)
    assert "<[105]>" in p.grammar
    p = plan(QWEN_LIKE, HISTORY[:1], tools, "get_weather", False, lambda text: None)
    m = llguidance.LLMatcher(gguf_model.grammar_tokenizer(), p.grammar, log_level=0)
    tok = gguf_model.grammar_tokenizer()
    ok = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>'
    assert m.consume_tokens(tok.tokenize_str(ok)) and m.is_accepting()
    m.reset()
    assert m.try_consume_tokens(tok.tokenize_str('<tool_call>\n{"name": "get_weather", "arguments": {"town"')) < \
        len(tok.tokenize_str('<tool_call>\n{"name": "get_weather", "arguments": {"town"'))


def test_a_template_without_tools_gets_them_in_the_system_prompt(gguf_model):
    prompt = prepare_chat(gguf_model, [{"role": "system", "content": "Be brief."}] + HISTORY, tools=[WEATHER])
    assert prompt.tools is not None and prompt.tools.syntax.family == "generic" and not prompt.tools.native
    assert "Be brief.\n\nYou can call these tools:" in prompt.text and '"name": "get_weather"' in prompt.text
    assert '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]}' in \
        prompt.text  # the earlier call, in the syntax the model is told to use
    assert "Result of the tool get_weather (call call_1):\n18 and sunny" in prompt.text
    assert "lazy" in prompt.grammar  # "auto": free text, well-formed calls
    none = prepare_chat(gguf_model, HISTORY, tools=[WEATHER], tool_choice="none")
    assert none.tools is None and "You can call these tools" not in none.text


# --- the Python API on the real GGUF ----------------------------------------------------------------------

def test_response_format_always_yields_valid_json(gguf_model):
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    msgs = [{"role": "user", "content": "Alice is 30. Give her name and age as JSON."}]
    for seed in (1, 2, 3):
        g = gguf_model.chat(msgs, GenerationParams(max_tokens=40, temperature=1.0, seed=seed), response_format=rf)
        text = "".join(g)
        data = json.loads(text)
        assert g.finish_reason == "stop" and set(data) == {"name", "age"} and isinstance(data["age"], int), text


def test_forced_tool_calls_validate_and_auto_may_answer_in_text(gguf_model):
    msgs = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
    params = GenerationParams(max_tokens=60, temperature=0)
    g = gguf_model.chat(msgs, params, tools=[WEATHER, ADD], tool_choice="required")
    assert "".join(g) == "" and g.finish_reason == "tool_calls" and len(g.tool_calls) == 1
    (call,) = g.tool_calls
    assert call["function"]["name"] in NAMES and json.loads(call["function"]["arguments"])
    g = gguf_model.chat(msgs, params, tools=[WEATHER, ADD], tool_choice="get_weather")
    list(g)
    (call,) = g.tool_calls
    assert call["function"]["name"] == "get_weather"
    Weather.model_validate_json(call["function"]["arguments"])
    g = gguf_model.chat(msgs, GenerationParams(max_tokens=8, temperature=0), tools=[WEATHER], tool_choice="none")
    assert "".join(g) and g.tool_calls == [] and g.finish_reason in ("stop", "length")


def test_logprobs_follow_the_emitted_text_and_stop_strings(gguf_model):
    g = gguf_model.generate("1, 2, 3, 4, 5,", GenerationParams(max_tokens=12, temperature=0, logprobs=3,
                                                               stop=[" 8"]))
    text = "".join(g)
    assert g.finish_reason == "stop" and text == " 6, 7,"
    pieces = b"".join(gguf_model.token_bytes(t.token) for t in g.logprobs).decode()
    assert pieces == text  # one entry per emitted token; the stop string's tokens are not reported
    for t in g.logprobs:
        assert t.logprob <= 0 and len(t.top) == 3 and t.top[0][1] >= t.top[1][1] >= t.top[2][1]
        assert t.top[0][0] == t.token  # greedy: the sampled token is the likeliest
        assert t.logprob == pytest.approx(t.top[0][1])


def test_seeded_sampling_is_reproducible(gguf_model):
    msgs = [{"role": "user", "content": "Tell me a story."}]
    runs = ["".join(gguf_model.chat(msgs, GenerationParams(max_tokens=12, temperature=1.0, seed=s))) for s in (5, 5, 6)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


# --- the torch engines' row-wise sampler -------------------------------------------------------------------

def test_sample_rows_keeps_each_row_to_its_own_parameters():
    import torch

    from quantdeploy.engine.sampling import Rows, make_generator, sample_rows

    torch.manual_seed(0)
    vocab = 1000
    logits = torch.randn(4, vocab) * 3
    mask = torch.full((4, (vocab + 31) // 32), -1, dtype=torch.int32)
    mask[2] = 0
    mask[2, 500 // 32] = 1 << (500 % 32)  # row 2: only token 500 is allowed
    mask[2, 7 // 32] |= 1 << 7  # ... and token 7
    rows = Rows(temperature=[0.0, 1.0, 1.0, 0.7], top_p=[1.0, 1.0, 1.0, 0.5], top_k=[0, 1, 0, 0],
                generators=[None, None, make_generator("cpu", 3), make_generator("cpu", 4)], logprobs=2)
    s = sample_rows(logits, rows, mask)
    assert s.tokens[0] == logits[0].argmax() and s.tokens[1] == logits[1].argmax()  # greedy; top-k 1
    assert int(s.tokens[2]) in (7, 500)
    raw = torch.log_softmax(logits, -1)
    assert torch.allclose(s.logprobs, raw.gather(1, s.tokens[:, None])[:, 0])  # before temperature and mask
    assert torch.equal(s.top_ids[:, 0], logits.argmax(-1))
    # top-p 0.5 at temperature 0.7 keeps the smallest set reaching half the mass
    probs = torch.softmax(logits[3] / 0.7, -1).sort(descending=True)
    kept = probs.indices[:int((probs.values.cumsum(0) - probs.values < 0.5).sum())]
    assert int(s.tokens[3]) in kept.tolist()
    # a seeded row samples the same whatever the other rows are
    again = sample_rows(torch.stack([logits[1], logits[3]]), Rows([1.0, 0.7], [1.0, 0.5], [0, 0],
                                                                  [None, make_generator("cpu", 4)]))
    assert int(again.tokens[1]) == int(s.tokens[3])


def test_the_exponential_race_samples_the_distribution():
    import torch

    from quantdeploy.engine.sampling import Rows, make_generator, sample_rows

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]).repeat(4000, 1))
    gens = None
    s = sample_rows(logits, Rows([1.0] * 4000, [1.0] * 4000, [0] * 4000, gens))
    freq = torch.bincount(s.tokens, minlength=3).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.04), freq
    g = make_generator("cpu", 1)
    assert sample_rows(logits[:1], Rows([1.0], [1.0], [0], [g])).tokens.shape == (1,)


@pytest.mark.parametrize("template,family,ok,bad", [
    (QWEN_LIKE, "hermes", 'Sure. <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
     'Sure. <tool_call>\n{"name": "add", "arguments": {"a": "one"'),
    ("{{ messages }}", "generic", '{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}',
     '{"tool_calls": [{"name": "multiply", '),
])
def test_auto_tool_choice_leaves_text_free_and_keeps_calls_well_formed(gguf_model, template, family, ok, bad):
    import llguidance

    p = plan(template, HISTORY[:1], check_tools([WEATHER, ADD]), "auto", False, lambda text: None)
    assert p.syntax.family == family and p.grammar
    tok = gguf_model.grammar_tokenizer()

    def accepts(text: str) -> bool:
        m = llguidance.LLMatcher(tok, p.grammar, log_level=0)
        ids = tok.tokenize_str(text)
        return m.try_consume_tokens(ids) == len(ids) and not m.is_error()

    for text in ("Hello, no tool needed here.", '{"answer": 42}', ok):
        assert accepts(text), text
    assert not accepts(bad)
