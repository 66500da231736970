"""Chat templates render as transformers' apply_chat_template renders them, without importing transformers."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime

import pytest

from conftest import REPO
from quantdeploy.chat.templates import FALLBACKS, render
from quantdeploy.errors import UsageError

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <there> & \"you\" é"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"}]
# Templates exercising what transformers gives a template: whitespace control, loop controls, namespace, tojson,
# raise_exception, the generation block, dict(), strftime_now.
FEATURES = {
    "whitespace": "{% for m in messages %}\n  {% if m.role == 'user' %}\n    U: {{ m.content }}\n  {% endif %}\n"
                  "{% endfor %}\n{% if add_generation_prompt %}A:{% endif %}",
    "loopcontrols": "{% for m in messages %}{% if m.role == 'assistant' %}{% break %}{% endif %}[{{ m.content }}]"
                    "{% endfor %}{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
                    "<{{ m.role }}>{% endfor %}",
    "namespace": "{% set ns = namespace(n=0, last='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                 "{% set ns.last = m.role %}{% endfor %}{{ ns.n }} {{ ns.last }}",
    "tojson": "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}|{{ {'b': 1, 'a': [1, 2]} | "
              "tojson(sort_keys=True, separators=(',', ':')) }}",
    "generation": "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
                  "{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}",
    "dict": "{% set d = dict(a=1, b=2) %}{{ d.a + d.b }} {{ dict.fromkeys(['x', 'y'], 0) | tojson }}",
    "bos-eos": "{{ bos_token }}{% for m in messages %}{{ m.content + eos_token }}{% endfor %}",
}
# SmolLM2-135M-Instruct's own template (the default model's GGUF metadata) and Gemma-3's, as published
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
           "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
           "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
GEMMA3 = ("{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- set first_user_prefix = messages[0]"
          "['content'] + '\n\n' -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set "
          "first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in "
          "loop_messages -%}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n        {{ "
          "raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n    {%- endif "
          "-%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n    {%- else -%}"
          "\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n    {{ '<start_of_turn>' + role + '\n' + "
          "(first_user_prefix if loop.first else \"\") }}\n    {{ message['content'] | trim }}\n    {{ '<end_of_turn>\n'"
          " }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n")
TEMPLATES = {**FEATURES, **{f"fallback-{k}": v for k, v in FALLBACKS.items()}, "smollm2": SMOLLM2, "gemma3": GEMMA3}


def transformers_render(source: str, messages: list[dict], **kw) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=source, add_generation_prompt=True,
                                        **kw)
    return rendered[0]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_renders_exactly_as_transformers(name):
    pytest.importorskip("transformers")
    source = TEMPLATES[name]
    kw = {"bos_token": "<bos>", "eos_token": "</s>"}
    msgs = CONVERSATION[1:] if name in ("gemma3", "fallback-mistral") else CONVERSATION
    ours = render(source, msgs, **kw)
    assert ours == transformers_render(source, msgs, **kw), name
    assert ours.strip()


def test_tojson_keeps_text_as_is_and_strftime_now_is_today():
    out = render("{{ messages[0].content | tojson }} {{ strftime_now('%Y-%m-%d') }}",
                 [{"role": "user", "content": "a <b> & 'c' é"}])
    assert out == f'"a <b> & \'c\' é" {datetime.now():%Y-%m-%d}'  # no HTML escaping, no \\u00e9


def test_smollm2_template_adds_its_system_prompt_and_opens_the_reply():
    out = render(SMOLLM2, [{"role": "user", "content": "Hi"}])
    assert out == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                   "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("source,needle", [
    (GEMMA3, "Conversation roles must alternate"),  # raise_exception() reaches the user as the template's words
    ("{% for m in messages %}{{ m.content }", "failed to render"),  # a syntax error
    ("{{ messages.__class__.__mro__ }}", "failed to render"),  # the sandbox refuses internals
    ("{% set ns = namespace(_x=1) %}", "underscore"),
    ("{{ messages[5].content.upper() }}", "failed to render"),
])
def test_template_failures_are_one_usage_error(source, needle):
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(UsageError) as e:
        render(source, msgs)
    assert needle in str(e.value) and "\n" not in str(e.value).strip()


def test_rendering_never_imports_transformers():
    code = ("import sys; from quantdeploy.chat.templates import render, FALLBACKS; "
            "render(FALLBACKS['chatml'], [{'role': 'user', 'content': 'hi'}]); "
            "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
