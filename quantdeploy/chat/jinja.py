"""Chat templates rendered the way transformers' `apply_chat_template` renders them, without transformers.

A chat template comes with the model (GGUF metadata, tokenizer_config.json) and is untrusted code: it runs in
jinja2's ImmutableSandboxedEnvironment with the options and the few helpers transformers gives templates, so a
template written for transformers renders the same text here:

- `trim_blocks` and `lstrip_blocks` on, the `loopcontrols` extension (`{% break %}`, `{% continue %}`), and a
  `{% generation %}` block (transformers uses it to mark assistant tokens; it renders its body unchanged);
- `raise_exception(message)`: the template refuses a conversation (its message reaches the user);
- `strftime_now(format)`: today's date, for templates that print it;
- `tojson` as `json.dumps` (no HTML escaping, non-ASCII kept, with indent / separators / sort_keys);
- `dict(...)` and `namespace(...)` that refuse underscore-prefixed names.

Everything the template sees is first rebuilt from plain JSON types, as transformers does.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_CACHE_SIZE = 32  # distinct templates compiled and kept (one per loaded model, plus --template files)


class TemplateError(Exception):
    """The template could not be compiled or refused to render; str() is the reason."""


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body (transformers marks assistant tokens with it)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller) -> str:
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


def _check_name(name) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(
            f"chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}")


class _TemplateDict:
    """`dict(...)` inside a template, without the dict type itself (no attribute access to its internals)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    def __init__(*args, **kwargs):  # the same signature trick as jinja's Namespace: namespace(self=...) works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


@functools.lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


@functools.lru_cache(maxsize=TEMPLATE_CACHE_SIZE)
def _compile(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def plain(value: Any) -> Any:
    """A copy built only from JSON types (str, int, float, bool, None, dict, list): subclasses and other objects
    carry methods the sandbox does not know to be dangerous, so none reach the template."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return f"<{type(value).__name__}>"  # an inert placeholder: templates test for presence, never read these


def render_template(source: str, **context: Any) -> str:
    """Render `source` with `context` (messages, add_generation_prompt, bos_token, tools, ...) in the sandbox."""
    try:
        return _compile(source).render(**{k: plain(v) for k, v in context.items()})
    except jinja2.exceptions.TemplateError as e:  # syntax errors, raise_exception(), sandbox refusals
        raise TemplateError(str(e) or type(e).__name__) from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, ZeroDivisionError) as e:
        raise TemplateError(f"{type(e).__name__}: {e}") from None
