"""Chat templates: the model's own (rendered in a Jinja sandbox as transformers does), else a fallback by architecture."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import UsageError


@dataclass
class TemplateSource:
    """What a loaded model tells the renderer: its own template (or None) and what the fallback needs."""

    template: str | None  # the model's own Jinja chat template, if any
    architecture: str  # e.g. "gemma3", "llama", "qwen2"
    bos_token: str = ""
    eos_token: str = ""


class HasTemplate(Protocol):
    """Anything that answers chat_template_info(): a LoadedModel of any backend."""

    def chat_template_info(self) -> TemplateSource: ...


GEMMA = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
LLAMA3 = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
)
CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
MISTRAL = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set sys = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set sys = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '[INST] ' + (sys if loop.first else '') + message['content'] | trim + ' [/INST]' }}"
    "{%- else -%}{{ ' ' + message['content'] | trim + eos_token }}{%- endif -%}"
    "{%- endfor -%}"
)
FALLBACKS = {"gemma": GEMMA, "llama3": LLAMA3, "chatml": CHATML, "mistral": MISTRAL}
# other names users type for the same built-ins (--template gemma3, --template qwen2, ...)
ALIASES = {"gemma3": "gemma", "gemma2": "gemma", "llama-3": "llama3", "llama3.1": "llama3", "qwen": "chatml",
           "qwen2": "chatml", "qwen3": "chatml"}
# architecture name (HF model_type or GGUF general.architecture) -> fallback
_ARCH = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3_text": "gemma", "llama": "llama3",
         "qwen2": "chatml", "qwen3": "chatml", "qwen2_moe": "chatml", "qwen3_moe": "chatml", "mistral": "mistral",
         "mixtral": "mistral", "phi3": "chatml"}
# Turn openers: in a chat, a model that emits one has finished its reply.
TURN_START_TOKENS = ("<start_of_turn>", "<|im_start|>", "<|start_header_id|>")
# End-of-turn markers that some templates use beyond the tokenizer's eos.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>", "</s>", "<eos>",
                      "<|end_of_text|>")


def fallback_name(architecture: str) -> str:
    return _ARCH.get((architecture or "").lower(), "chatml")


def resolve_template(model: HasTemplate, template: str | None = None) -> tuple[str, str]:
    """(jinja source, where it came from). `template` is a fallback name or a file path, overriding the model's."""
    if template:
        name = ALIASES.get(template.lower(), template.lower())
        if name in FALLBACKS:
            return FALLBACKS[name], f"built-in '{name}' template (--template)"
        return _read_template_file(template), f"template file {Path(template).expanduser()}"
    info = model.chat_template_info()
    if info.template:
        return info.template, "the model's chat template"
    name = fallback_name(info.architecture)
    return FALLBACKS[name], f"built-in '{name}' template (the model has none; chosen for {info.architecture or '?'})"


def check_template(template: str | None) -> None:
    """Fail on a --template that cannot work before any model loads: an unknown name, an unreadable or empty
    file, or a file that does not render a one-message conversation."""
    if not template or ALIASES.get(template.lower(), template.lower()) in FALLBACKS:
        return
    render(_read_template_file(template), [{"role": "user", "content": "hi"}])


def _read_template_file(template: str) -> str:
    p = Path(template).expanduser()
    if not p.is_file():
        raise UsageError(f"unknown template '{template}'; pass a Jinja file or one of: {', '.join(FALLBACKS)}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read template file {p} ({e}); pass a UTF-8 Jinja file") from None
    if not text.strip():
        raise UsageError(f"template file {p} is empty; pass a Jinja chat template")
    return text


def template_notice(model: HasTemplate, template: str | None = None) -> str | None:
    """One line for the user when a built-in fallback stands in for a template the model lacks; else None."""
    if template:
        return None
    info = model.chat_template_info()
    if info.template:
        return None
    name = fallback_name(info.architecture)
    return (f"note: the model has no chat template; using the built-in '{name}' template (chosen for "
            f"{info.architecture or 'an unknown architecture'}); --template NAME|FILE overrides")


def render_chat(model: HasTemplate, messages: list[dict], *, template: str | None = None) -> str:
    src, _ = resolve_template(model, template)
    info = model.chat_template_info()
    return render(src, messages, bos_token=info.bos_token, eos_token=info.eos_token)


def render(source: str, messages: list[dict], *, bos_token: str = "", eos_token: str = "",
           add_generation_prompt: bool = True, **variables) -> str:
    """Render as transformers' apply_chat_template does (chat/jinja.py), without importing transformers.
    `variables` reach the template as they do there: tools=[...], documents=[...]."""
    from .jinja import TemplateError, render_template

    _validate(messages)
    try:
        return render_template(source, messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, **variables)
    except TemplateError as e:
        raise UsageError(f"the chat template failed to render: {e}") from None


def _validate(messages: list[dict]) -> None:
    if not messages:
        raise UsageError("messages must not be empty")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise UsageError("each message needs a role of system, user, assistant or tool")
        if not isinstance(m.get("content"), str) and not (m["role"] == "assistant" and m.get("tool_calls")
                                                          and m.get("content") in (None, "")):
            raise UsageError("each message needs a string content (an assistant's may be null when it has "
                             "tool_calls)")
