"""Constrained decoding: output that always matches a grammar (a JSON schema, a tool call's arguments).

The grammars are llguidance's (a light Rust library, no torch): `grammar.py` builds and checks them from OpenAI's
`response_format` and from JSON schemas, `vocab.py` gives llguidance a model's vocabulary (from llama.cpp's or from
a Hugging Face tokenizer), and `state.GrammarState` follows one generation, token by token, and writes the bitmask
of allowed tokens that each backend's sampling step applies to its logits.
"""

from .grammar import json_schema_grammar, lark_grammar, response_format_grammar
from .state import GrammarState

__all__ = ["GrammarState", "json_schema_grammar", "lark_grammar", "response_format_grammar"]
