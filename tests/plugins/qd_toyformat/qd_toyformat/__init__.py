"""The `toyq` format: a toy quantdeploy backend that lives outside quantdeploy.

A toyq model is a directory with a `config.json` whose `quantization_config` says `quant_method: toyq` and a
`model.toyq` (JSON: a word list). Its "decoder" picks each next word from the words before it, deterministically:
enough to prove that a format added as a plugin is detected, pulled, loaded, chatted with and benched.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Iterator

from quantdeploy.backends.base import (Backend, Confidence, GenerationParams, LoadedModel, ModelFiles, ModelSpec,
                                       PullChoice, TemplateSource)
from quantdeploy.errors import InvalidModel

FORMAT = "toyq"
WEIGHTS = "model.toyq"
SPECIAL = ("<eos>", "<unk>", "<|im_start|>", "<|im_end|>")  # ids 0..3; words follow
EOS, UNK = 0, 1
CONTEXT = 512


class ToyBackend(Backend):
    name = "toy"
    formats = (FORMAT,)
    expects = f"config.json with quantization_config.quant_method {FORMAT} and a {WEIGHTS}"
    kernel_patterns = ("toy_lookup",)

    def check_environment(self) -> tuple[bool, str]:
        return True, ""

    def detect(self, files: ModelFiles) -> Confidence | None:
        quant = files.quant
        return Confidence.DECLARED if quant is not None and quant.method == FORMAT else None

    def pull_choice(self, files: ModelFiles, tag: str | None) -> PullChoice:
        return PullChoice(files=[n for n in files.names() if n in ("config.json", WEIGHTS)])

    def inspect(self, spec: ModelSpec) -> dict[str, Any]:
        quant = spec.model_files().quant
        return {"architecture": "toy", "quantization": quant.summary() if quant else None,
                "words": len(_words(spec.path))}

    def load(self, spec: ModelSpec) -> LoadedModel:
        return ToyModel(spec)


def _words(path: Path) -> list[str]:
    try:
        words = json.loads((path / WEIGHTS).read_text(encoding="utf-8"))["words"]
    except (OSError, ValueError, KeyError) as e:
        raise InvalidModel(f"{path / WEIGHTS} is not a toyq weights file ({e})") from None
    return list(SPECIAL) + [str(w) for w in words]


def next_token(ids: list[int], vocab: int) -> int:
    """The toy decoder: a word id from the checksum of every id so far (never a special token)."""
    return len(SPECIAL) + zlib.crc32(json.dumps(ids).encode()) % (vocab - len(SPECIAL))


class ToyModel(LoadedModel):
    format = FORMAT
    backend = "toy"

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.vocab = _words(spec.path)
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def context_length(self) -> int:
        return CONTEXT

    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        return [self.index.get(w, UNK) for w in text.split()]

    def token_text(self, token_id: int) -> str:
        return self.vocab[token_id] if 0 <= token_id < len(self.vocab) else ""

    def _generate_tokens(self, prompt_ids: list[int], params: GenerationParams) -> Iterator[tuple[int, str]]:
        ids = list(prompt_ids)
        while len(ids) < CONTEXT:
            tok = next_token(ids, len(self.vocab))
            ids.append(tok)
            yield tok, " " + self.vocab[tok]

    def chat_template_info(self) -> TemplateSource:
        return TemplateSource(template=None, architecture="toy")

    def eog_token_ids(self) -> set[int]:
        return {EOS}

    def kernel_report(self) -> dict[str, Any]:
        return {"backend": self.backend, "format": self.format, "device": "cpu", "kernel": "toy_lookup",
                "layers": {"lookup": "ToyLookup"}, "quant_linear_classes": ["ToyLookup"], "gpu": False}

    def weight_bytes_per_token(self) -> dict[str, Any]:
        size = (self.spec.path / WEIGHTS).stat().st_size
        return {"bytes": size, "method": f"the whole {WEIGHTS} per token", "detail": {WEIGHTS: size}}
