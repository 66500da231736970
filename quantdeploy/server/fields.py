"""Request fields beyond the ones the parser reads: those accepted because they never change the answer, and
those refused (400 naming the field) unless they hold the value that means "off", because the server cannot
honour them and ignoring them would change what the client gets."""

from __future__ import annotations

from typing import Any

from .errors import bad_request

# Label, store or route a request; never change what is generated. Accepted and ignored.
QUIET = frozenset({"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier",
                   "prediction", "prompt_cache_retention"})

# field -> (values that mean "off", why it is refused otherwise / what to do instead)
REFUSED: dict[str, tuple[tuple[Any, ...], str]] = {
    "frequency_penalty": ((None, 0, 0.0), "frequency_penalty is not supported; send 0 or leave it out"),
    "presence_penalty": ((None, 0, 0.0), "presence_penalty is not supported; send 0 or leave it out"),
    "logit_bias": ((None, {}), "logit_bias is not supported; leave it out"),
    "audio": ((None,), "audio output is not supported; this server answers in text"),
    "modalities": ((None, ["text"]), "only the text modality is supported: send [\"text\"] or leave it out"),
    "reasoning_effort": ((None,), "reasoning_effort is not supported by the served model; leave it out"),
    "verbosity": ((None,), "verbosity is not supported; leave it out"),
    "web_search_options": ((None,), "web search is not supported by this server"),
    "functions": ((None, []), "'functions' is deprecated and not supported; send the same schemas as 'tools'"),
    "function_call": ((None,), "'function_call' is deprecated and not supported; send 'tool_choice'"),
    # extensions other servers accept (vLLM, llama.cpp) that would change the answer
    "min_p": ((None, 0, 0.0), "min_p is not supported; send 0 or leave it out"),
    "repetition_penalty": ((None, 1, 1.0), "repetition_penalty is not supported; send 1 or leave it out"),
    "guided_json": ((None,), "guided_json is not supported; send response_format {\"type\": \"json_schema\"}"),
    "guided_regex": ((None,), "guided_regex is not supported"),
    "guided_choice": ((None,), "guided_choice is not supported; use a json_schema with an enum"),
    "guided_grammar": ((None,), "guided_grammar is not supported; send grammar (GBNF)"),
}


def refuse_unhonoured(data: dict[str, Any]) -> None:
    """400 for the first field set to something the server cannot honour."""
    for name, (off, why) in REFUSED.items():
        value = data.get(name)
        if value is not None and not any(value == v and type(value) is type(v) for v in off):
            raise bad_request(why, param=name, code="unsupported_parameter")
