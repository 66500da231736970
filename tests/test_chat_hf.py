"""`quantdeploy chat` on the real GPTQ and AWQ fixtures: the same REPL behaviour as on GGUF (slow: they load
in transformers + gptqmodel)."""

from __future__ import annotations

import json
import os
import re

import pytest

from conftest import run_cli
from test_chat_driver import Chat

pytestmark = pytest.mark.slow
GREEDY = ("--temperature", "0", "--seed", "1")
NEWLINE_ID = 107  # Gemma-3's "\n" token
OUR_LINE = re.compile(r"(note|warning): |\[|\(the model returned")  # what quantdeploy itself writes to stderr


@pytest.fixture()
def chat(tmp_path):
    sessions = []

    def start(*args):
        c = Chat(*args, home=tmp_path)
        sessions.append(c)
        return c

    yield start
    for c in sessions:
        c.close()


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_stream_stats_ctrl_c_reset_on_hf_quant(chat, model_paths, fmt, tmp_path):
    c = chat(str(model_paths[fmt]), *GREEDY, "--max-tokens", "6")
    assert "no chat template" in c.banner and "'gemma'" in c.banner, c.banner
    out = c.say("Say hello.")
    assert out.strip() and "[reply cut at max_tokens=6" in out, out
    s = c.stats()
    assert (s["reply"], s["finish"]) == (6, "length"), s
    assert f"· {fmt} ·" in s["text"] and "transformers+gptqmodel" in s["text"] and "device cpu" in s["text"], s

    c.say("/set max_tokens 300")
    c.start_reply("Write a long list of fruits.")
    c.p.sendintr()
    assert "[reply stopped]" in c.wait_prompt()
    s = c.stats()
    assert s["finish"] == "interrupted" and s["reply"] < 300, s
    assert "2 turns forgotten" in c.say("/reset")
    assert c.save(tmp_path / "empty.json") == []
    assert c.leave("ctrl-d") == 0
    assert "Traceback" not in c.text()


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_generation_config_eos_list_ends_the_reply_unprinted(chat, model_paths, fmt, tmp_path):
    # Greedy, both fixtures put a newline after a few tokens ("Say hello.\n..." / "(a)\n..."). A copy whose
    # generation_config declares "\n" as one more eos must stop there and never print it.
    src = model_paths[fmt]
    dst = tmp_path / fmt
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "generation_config.json" and f.is_file():
            os.symlink(f, dst / f.name)
    gen_cfg = json.loads((src / "generation_config.json").read_text())
    eos = gen_cfg.get("eos_token_id")
    gen_cfg["eos_token_id"] = (eos if isinstance(eos, list) else [eos]) + [NEWLINE_ID]
    (dst / "generation_config.json").write_text(json.dumps(gen_cfg))

    c = chat(str(dst), *GREEDY, "--max-tokens", "30")
    c.say("Say hello.")
    s = c.stats()
    assert s["finish"] == "stop" and 0 < s["reply"] < 30, s
    reply = c.save(tmp_path / "r.json")[-1]
    assert reply["role"] == "assistant" and reply["content"].strip() and "\n" not in reply["content"], reply
    assert c.leave() == 0


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_one_shot_stderr_holds_only_our_lines(model_paths, fmt):
    """gptqmodel's banner and log lines, torch's warnings and transformers' progress bar stay out of a plain run;
    -v shows them (on stderr: stdout carries the reply alone)."""
    proc = run_cli("chat", str(model_paths[fmt]), "--prompt", "Say hello.", "-n", "4", *GREEDY)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert [line for line in proc.stderr.splitlines() if not OUR_LINE.match(line)] == [], proc.stderr
    # what runs the model, in one line as it loads (the CPU's default: gptqmodel's CPU kernels)
    assert f"note: runs on transformers + gptqmodel (cpu kernel) — first kernel in order that can run it on cpu\n" \
        in proc.stderr, proc.stderr
    if fmt == "gptq":
        loud = run_cli("chat", str(model_paths[fmt]), "--prompt", "Say hello.", "-n", "4", *GREEDY, "-v")
        assert loud.returncode == 0, loud.stderr
        assert loud.stdout == proc.stdout
        assert [line for line in loud.stderr.splitlines() if line.strip() and not OUR_LINE.match(line)], loud.stderr
