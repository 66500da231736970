"""Conversation state, context fitting and chat templates, in-process on the real embedded model's tokenizer."""

from __future__ import annotations

import json

import pytest

from quantdeploy.chat.conversation import ContextFull, Conversation
from quantdeploy.chat.templates import (ALIASES, FALLBACKS, fallback_name, render, resolve_template,
                                        template_notice)
from quantdeploy.errors import UsageError


def counter(model):
    return lambda messages: model.count_tokens(model.render_chat(messages))


def long_chat(turns: int, system: str | None = "Be brief.") -> Conversation:
    c = Conversation(system)
    for i in range(turns):
        c.add("user", f"Question {i}: what is the tallest mountain in country number {i}?")
        c.add("assistant", f"Answer {i}: it is a mountain that is quite tall, about {1000 + i} metres.")
    c.add("user", "Last question: and the deepest lake?")
    return c


@pytest.mark.parametrize("window,reserve", [(400, 16), (200, 16), (200, 64), (120, 8)])
def test_fit_drops_only_the_oldest_turns_needed(gguf_model, window, reserve):
    count = counter(gguf_model)
    c = long_chat(6)
    full = list(c.turns)
    fit = c.fit(count, window, reserve)
    assert fit.prompt_tokens == count(c.messages()) and fit.prompt_tokens + reserve <= window
    assert c.system == "Be brief." and c.turns[-1]["content"].startswith("Last question")
    assert c.turns == full[2 * fit.dropped_turns:]  # a suffix of whole turns: the oldest went first
    assert c.turns[0]["role"] == "user"
    if fit.dropped_turns:  # minimal: one more turn would not have fit
        assert count(Conversation(c.system, full[2 * (fit.dropped_turns - 1):]).messages()) + reserve > window


def test_fit_keeps_everything_when_it_fits(gguf_model):
    c = long_chat(3)
    before = c.messages()
    assert c.fit(counter(gguf_model), 8192, 512).dropped_turns == 0
    assert c.messages() == before


def test_a_message_too_big_for_the_window_changes_nothing(gguf_model):
    c = long_chat(2)
    c.add("assistant", "ok")
    c.add("user", "word " * 500)
    before = c.messages()
    with pytest.raises(ContextFull, match="context window holds 256"):
        c.fit(counter(gguf_model), 256, 16)
    assert c.messages() == before


def test_save_and_load_round_trip(tmp_path):
    c = long_chat(2)
    path = c.save(tmp_path / "chat.json", model="m", params={"temperature": 0.1})
    data = json.loads(path.read_text())
    assert data["kind"] == "quantdeploy.chat" and data["version"] == 1 and data["model"] == "m"
    back = Conversation.load(path)
    assert back.messages() == c.messages() and back.system == "Be brief."
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]  # no temporary file left behind
    c.add("assistant", "more")
    c.save(path)  # overwrite in place
    assert Conversation.load(path).messages() == c.messages()


@pytest.mark.parametrize("data,needle", [
    ({"messages": "no"}, "not a saved chat"),
    ({"nothing": []}, "not a saved chat"),
    (42, "not a saved chat"),
    ([{"role": "robot", "content": "x"}], "needs a role"),
    ([{"role": "user", "content": 3}], "string content"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only the first message"),
    (["hello"], "needs a role"),
])
def test_load_rejects_what_is_not_a_chat(data, needle):
    with pytest.raises(UsageError, match=needle):
        Conversation.from_json(data)


def test_load_accepts_a_bare_openai_style_list():
    c = Conversation.from_json([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    assert c.system == "s" and c.turns == [{"role": "user", "content": "u"}]


def test_save_to_a_missing_folder_writes_nothing(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        long_chat(1).save(tmp_path / "nope" / "chat.json")
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("arch,name", [("gemma3", "gemma"), ("gemma2", "gemma"), ("gemma3_text", "gemma"),
                                       ("llama", "llama3"), ("qwen2", "chatml"), ("qwen3", "chatml"),
                                       ("mistral", "mistral"), ("mixtral", "mistral"), ("", "chatml"),
                                       ("somethingnew", "chatml")])
def test_fallback_by_architecture(arch, name):
    assert fallback_name(arch) == name


def test_embedded_model_chats_through_the_gemma_fallback(gguf_model):
    src, where = resolve_template(gguf_model)
    assert src == FALLBACKS["gemma"] and "gemma3" in where
    note = template_notice(gguf_model)
    assert note and "'gemma'" in note and note.count("\n") == 0
    assert template_notice(gguf_model, "chatml") is None
    text = gguf_model.render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_template_aliases(gguf_model, alias):
    assert resolve_template(gguf_model, alias)[0] == FALLBACKS[ALIASES[alias]]


@pytest.mark.parametrize("name,expected", [
    ("llama3", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("chatml", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ("mistral", "<s>[INST] Hi [/INST]"),
])
def test_fallbacks_render_like_the_model_families(name, expected):
    bos = {"llama3": "<|begin_of_text|>", "mistral": "<s>"}.get(name, "")
    assert render(FALLBACKS[name], [{"role": "user", "content": "Hi"}], bos_token=bos, eos_token="</s>") == expected


def test_template_errors_say_what_to_do(gguf_model, tmp_path):
    with pytest.raises(UsageError, match="one of: gemma"):
        resolve_template(gguf_model, "nosuch")
    empty = tmp_path / "empty.jinja"
    empty.write_text("  ")
    with pytest.raises(UsageError, match="is empty"):
        resolve_template(gguf_model, str(empty))
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}")
    with pytest.raises(UsageError, match="failed to render"):
        gguf_model.render_chat([{"role": "user", "content": "x"}], template=str(broken))
