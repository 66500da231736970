"""`quantdeploy chat` on the Gemma test GGUF, typed at like a person would (pexpect in a pseudo-terminal).

Gemma-3-270M is a base model without a chat template: these tests rely on its fallback template and on its greedy
replies (test_default_model.py chats with the default, instruction-tuned model)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

import pexpect
import pytest

from conftest import assert_clean_error, run_cli
from test_chat_driver import REPO, Chat, clean

GREEDY = ("--temperature", "0", "--seed", "1")


@pytest.fixture()
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture()
def chat(home, gguf_path):
    sessions = []

    def start(*args, model=None, **kw):
        c = Chat(model or str(gguf_path), *args, home=home, **kw)
        sessions.append(c)
        return c

    yield start
    for c in sessions:
        c.close()


@pytest.fixture(scope="module")
def gguf_copy(tmp_path_factory, gguf_path):
    """A copy of the Gemma GGUF whose eos_token_id metadata we rewrite per test (`declare_eos`)."""
    path = tmp_path_factory.mktemp("eos") / "gemma-eos.gguf"
    shutil.copyfile(gguf_path, path)
    return path


def declare_eos(path, token_id: int) -> None:
    """Declare another token as the model's end-of-generation token, in the GGUF metadata itself."""
    import gguf

    reader = gguf.GGUFReader(str(path), "r+")
    reader.fields["tokenizer.ggml.eos_token_id"].parts[-1][0] = token_id
    reader.data.flush()
    del reader


def test_turns_system_reset_save_load_round_trip(chat, tmp_path):
    c = chat(*GREEDY, "--max-tokens", "8")
    assert "no chat template" in c.banner and "'gemma'" in c.banner, c.banner  # the fallback is announced
    out = c.say("Say hello.")
    assert out.strip() and "[reply cut at max_tokens=8" in out, out
    s = c.stats()
    assert (s["reply"], s["finish"]) == (8, "length"), s
    assert "llama.cpp-cpu" in s["text"] and "device cpu" in s["text"] and "backend llama.cpp" in s["text"], s

    assert "system prompt set" in c.say("/system You are a pirate.")
    assert "system prompt: You are a pirate." in c.say("/system")
    c.say("Who are you?")
    with_system = c.stats()["prompt"]
    saved = c.save(tmp_path / "one.json")
    assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"], saved
    assert saved[0]["content"] == "You are a pirate." and saved[1]["content"] == "Say hello."
    assert all(m["content"].strip() for m in saved), saved

    out = c.say("/reset")
    assert "2 turns forgotten" in out and "system prompt kept" in out, out
    assert c.save(tmp_path / "after_reset.json") == [{"role": "system", "content": "You are a pirate."}]

    assert "loaded 5 messages" in c.say(f"/load {tmp_path / 'one.json'}")
    assert c.save(tmp_path / "two.json") == saved  # /save + /load round trip is exact
    c.say("And then?")
    assert c.stats()["prompt"] > with_system  # the loaded history really is in the prompt
    assert c.leave("quit") == 0
    assert "Traceback" not in c.text()


def test_set_changes_the_next_reply(chat, tmp_path):
    c = chat("--max-tokens", "8")
    assert "max_tokens = 3" in c.say("/set max_tokens 3")
    c.say("Name a fruit.")
    assert c.stats()["reply"] == 3
    for bad, needle in [("/set top_p 2", "top_p must be in (0, 1]"), ("/set max_tokens zero", "must be an integer"),
                        ("/set temperature -1", "temperature must be >= 0"), ("/set colour red", "cannot set"),
                        ("/set seed", "usage: /set seed VALUE")]:
        out = c.say(bad)
        assert "error:" in out and needle in out, (bad, out)
    assert "temperature = 1.2" in c.say("/set temperature 1.2")
    assert "seed = 7" in c.say("/set seed 7")
    assert "max_tokens = 6" in c.say("/set max-tokens 6")
    assert "temperature 1.2 · top_p 0.95 · max_tokens 6 · seed 7" in c.say("/set")
    c.say("/reset")
    first = c.say("Tell me a story.")
    c.say("/reset")
    second = c.say("Tell me a story.")
    assert first == second and first.strip(), (first, second)  # a fixed seed replays the same sampled reply
    c.say("/set seed none")
    assert "seed none" in c.say("/set")
    assert c.leave("/bye") == 0


def test_ctrl_c_stops_the_reply_and_keeps_the_session(chat, tmp_path):
    c = chat(*GREEDY, "--max-tokens", "500")
    c.start_reply("Tell me a very long story.")  # the reply is streaming: text is on screen before it ends
    c.p.sendintr()
    out = c.wait_prompt()
    assert "[reply stopped]" in out, out
    s = c.stats()
    assert s["finish"] == "interrupted" and 0 < s["reply"] < 500, s
    saved = c.save(tmp_path / "c.json")
    assert saved[-1]["role"] == "assistant" and saved[-1]["content"].strip()  # what was shown is kept
    c.say("/set max_tokens 4")
    assert "[reply cut at max_tokens=4" in c.say("Hello again.")  # the session goes on
    assert c.stats()["finish"] == "length"
    assert c.leave("ctrl-d") == 0
    assert "Traceback" not in c.text()


@pytest.mark.parametrize("how", ["ctrl-d", "exit", "quit", "/bye", "ctrl-c"])
def test_leaving_exits_zero(chat, how):
    c = chat("--max-tokens", "4")
    assert c.leave(how) == 0
    assert "Traceback" not in c.text() and "error" not in c.text()


def test_ctrl_c_works_when_started_with_sigint_ignored(chat):
    # A shell running a job in the background, or a CI runner, starts it with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: Ctrl-C at the prompt did nothing and the session hung.
    c = chat(*GREEDY, "--max-tokens", "300", sigint_ignored=True)
    c.start_reply("Tell me a very long story.")
    c.p.sendintr()
    assert "[reply stopped]" in c.wait_prompt()
    assert c.leave("ctrl-c") == 0
    assert "Traceback" not in c.text()


def test_multiline_block_is_one_message_never_a_command(chat, tmp_path):
    c = chat(*GREEDY, "--max-tokens", "3")
    c.type_line('"""', more=True)
    c.type_line("/stats is not a command in a block", more=True)
    c.p.sendline('second line"""')
    c.wait_prompt()
    c.say('"""one-liner"""')
    saved = c.save(tmp_path / "m.json")
    users = [m["content"] for m in saved if m["role"] == "user"]
    assert users == ["/stats is not a command in a block\nsecond line", "one-liner"], users
    assert c.leave() == 0


def test_context_overflow_drops_oldest_turns_and_says_so(chat, tmp_path):
    c = chat(*GREEDY, "--ctx", "128", "--max-tokens", "16", "--system", "You are terse.")
    outs = [c.say(f"Message {i}: tell me about the weather in Paris today, please.") for i in range(4)]
    notes = [o for o in outs if "dropped the" in o]
    assert notes and "128-token context window" in notes[0] and "system prompt is kept" in notes[0], outs
    saved = c.save(tmp_path / "ctx.json")
    assert saved[0] == {"role": "system", "content": "You are terse."}
    users = [m["content"] for m in saved if m["role"] == "user"]
    assert 0 < len(users) < 4 and users[-1].startswith("Message 3"), users  # the oldest went, the newest stayed
    assert c.stats()["prompt"] < 128
    out = c.say("word " * 300)  # alone larger than the window: refused, nothing dropped, no crash
    assert "error:" in out and "context window holds 128" in out, out
    assert c.save(tmp_path / "ctx2.json") == saved
    assert c.leave() == 0
    assert "Traceback" not in c.text()


def test_stop_token_from_gguf_metadata_ends_the_reply_unprinted(chat, gguf_copy, gguf_model, tmp_path):
    # Greedy, the base model answers "Say hello." with "Say hello. mendatang user ...": declare " mendatang" as the
    # model's eos and the reply must end right before it, without printing it.
    (stop_id,) = gguf_model.tokenize(" mendatang", add_bos=False)
    declare_eos(gguf_copy, stop_id)
    c = chat(*GREEDY, "--max-tokens", "40", model=str(gguf_copy))
    out = c.say("Say hello.")
    s = c.stats()
    assert s["finish"] == "stop" and s["reply"] < 40, s
    assert "mendatang" not in out and "mendatang" not in c.text(), out
    saved = c.save(tmp_path / "stop.json")
    assert saved[-1] == {"role": "assistant", "content": "Say hello."}, saved
    assert c.leave() == 0


def test_empty_reply_gets_a_friendly_note(chat, gguf_copy, gguf_model):
    (first_id,) = gguf_model.tokenize("Say", add_bos=False)  # the model's first reply token is now its eos
    declare_eos(gguf_copy, first_id)
    c = chat(*GREEDY, "--max-tokens", "40", model=str(gguf_copy))
    out = c.say("Say hello.")
    assert "empty reply" in out, out
    assert c.stats()["finish"] == "stop"
    assert c.leave() == 0


def test_history_file_and_up_arrow_recall(chat, home):
    c = chat("--max-tokens", "4")
    c.say("/system History test prompt")
    assert c.leave("quit") == 0
    lines = (home / "chat_history").read_text().splitlines()
    assert lines[-2:] == ["/system History test prompt", "quit"], lines
    c = chat("--max-tokens", "4")
    c.p.send("\x1b[A\x1b[A\r")  # up, up, enter: the line typed in the last session
    c.wait_prompt()
    assert "system prompt: History test prompt" in c.say("/system")
    assert c.leave() == 0


def test_verbose_and_template_override(chat, tmp_path):
    c = chat(*GREEDY, "--max-tokens", "4", "--verbose", "--template", "chatml")
    assert "no chat template" not in c.banner  # an explicit --template needs no notice
    assert re.search(r"loaded in \d+\.\d s", c.banner), c.banner
    assert "backend llama.cpp" in c.banner and "kernel llama.cpp-cpu" in c.banner and "device cpu" in c.banner
    assert "built-in 'chatml' template (--template)" in c.banner, c.banner
    out = c.say("Hello.")
    assert re.search(r"\d+ prompt \+ 4 reply tokens · TTFT \d+ ms · [\d.]+ tok/s · finish length", out), out
    assert c.leave() == 0

    qa = tmp_path / "qa.jinja"
    qa.write_text("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}assistant:{% endif %}")
    c = chat(*GREEDY, "--max-tokens", "4", "--verbose", "--template", str(qa))
    assert f"template file {qa}" in c.banner, c.banner
    assert "[reply cut at max_tokens=4" in c.say("Hello.")
    assert c.leave() == 0


@pytest.mark.parametrize("template,needle", [("nosuch", "unknown template"), ("{bad}", "failed to render")])
def test_bad_template_is_one_clean_error(chat, tmp_path, template, needle):
    if template == "{bad}":
        bad = tmp_path / "bad.jinja"
        bad.write_text("{% for m in messages %}{{ m['content'] }")
        template = str(bad)
    env = dict(os.environ, QUANTDEPLOY_HOME=str(tmp_path))
    env.pop("QUANTDEPLOY_DEBUG", None)
    p = pexpect.spawn(sys.executable, ["-m", "quantdeploy", "chat", "--template", template], encoding="utf-8",
                      timeout=300, env=env, cwd=str(REPO))
    p.expect(pexpect.EOF)
    p.close()
    out = clean(p.before)
    assert p.exitstatus == 2 and needle in out and "Traceback" not in out, out
    errors = [l for l in out.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, out


def test_bad_commands_keep_the_session(chat, tmp_path):
    c = chat("--max-tokens", "4")
    notjson = tmp_path / "notes.txt"
    notjson.write_text("hello")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"role": "robot", "content": "beep"}]))
    for line, needle in [("/nope", "unknown command /nope"), ("/load", "usage: /load FILE"),
                         (f"/load {tmp_path / 'missing.json'}", "no such file"), (f"/load {notjson}", "not a saved chat"),
                         (f"/load {wrong}", "needs a role"), ("/save", "usage: /save FILE"),
                         (f"/save {tmp_path / 'no' / 'dir.json'}", "does not exist"), (f"/save {tmp_path}", "directory")]:
        out = c.say(line)
        assert "error:" in out and needle in out, (line, out)
    assert not (tmp_path / "no").exists()
    assert "/help" in c.say("/help") and "/stats" in c.say("/help")
    assert "no reply yet" in c.say("/stats")
    assert c.leave() == 0


def test_piped_stdin_is_one_prompt_answered_once():
    proc = run_cli("chat", *GREEDY, "--max-tokens", "5", input="Say hello.\nThis second line is the same prompt.\n",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and ">>>" not in proc.stdout and "Traceback" not in proc.stderr


def test_empty_pipe_is_a_clean_error():
    assert_clean_error(run_cli("chat", input="", timeout=300), "stdin was empty")


def test_json_replies_are_valid_json_and_follow_a_schema(chat, tmp_path):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    (tmp_path / "person.json").write_text(json.dumps(schema))
    (tmp_path / "bad.json").write_text('{"type": "array", "uniqueItems": true}')
    c = chat(*GREEDY, "--max-tokens", "60")
    assert "JSON replies on" in c.say("/json")
    c.say("Alice is 30. Give her name and age.")
    assert c.stats()["finish"] == "stop"
    assert isinstance(json.loads(c.save(tmp_path / "a.json")[-1]["content"]), dict)
    out = c.say(f"/json {tmp_path / 'bad.json'}")
    assert "error:" in out and "uniqueItems" in out, out
    assert "matches the schema" in c.say(f"/json {tmp_path / 'person.json'}")
    c.say("/reset")
    c.say("Alice is 30. Give her name and age.")
    reply = json.loads(c.save(tmp_path / "b.json")[-1]["content"])
    assert set(reply) == {"name", "age"} and isinstance(reply["name"], str) and isinstance(reply["age"], int), reply
    assert "JSON replies off" in c.say("/json off")
    assert c.leave("/bye") == 0
