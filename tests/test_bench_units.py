"""The pieces bench is built from, on real models: bytes per token, logits/score, perplexity and KL, the
roofline cache, peak memory."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from quantdeploy import GenerationParams
from quantdeploy.bench.quality import Reference, log_softmax, measure_quality
from quantdeploy.bench.text import text_ids
from quantdeploy.bench.weights import gguf_bytes_per_token, gguf_tensors, torch_bytes_per_token


def test_gguf_bytes_per_token_from_the_header(gguf_path, gguf_model):
    tensors = dict(gguf_tensors(gguf_path))
    assert "token_embd.weight" in tensors and "output.weight" not in tensors  # Gemma ties the lm_head
    n_vocab = gguf_model.llm.n_vocab()
    got = gguf_bytes_per_token(gguf_path, n_vocab)
    row = tensors["token_embd.weight"] // n_vocab
    assert got["bytes"] == sum(tensors.values()) + row
    assert got["detail"]["embedding_row"] == row == 640 * 34 // 32  # Q8_0: 34 bytes per 32 weights


def test_torch_bytes_per_token_counts_tied_and_untied_heads():
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self, tied: bool):
            super().__init__()
            self.embed = torch.nn.Embedding(100, 8)  # 100 x 8 float32 = 3200 bytes, a row = 32
            self.proj = torch.nn.Linear(8, 8, bias=False)  # 256 bytes
            self.register_buffer("scales", torch.zeros(4, dtype=torch.float16))  # 8 bytes
            self.head = torch.nn.Linear(8, 100, bias=False)
            if tied:
                self.head.weight = self.embed.weight

        def get_input_embeddings(self):
            return self.embed

        def get_output_embeddings(self):
            return self.head

    tied = torch_bytes_per_token(Tiny(tied=True))
    assert tied["bytes"] == 3200 + 256 + 8 + 32  # the table once (read by the head) and a row
    assert tied["detail"]["tied_lm_head"] is True
    untied = torch_bytes_per_token(Tiny(tied=False))
    assert untied["bytes"] == 32 + 256 + 8 + 3200  # a row of the table, the whole head
    assert untied["detail"]["tied_lm_head"] is False


def test_safetensors_bytes_per_token_for_engines_without_a_module(reference_path):
    from quantdeploy.bench.weights import safetensors_bytes_per_token, safetensors_tensors

    tensors = safetensors_tensors(reference_path)
    emb = tensors["model.embed_tokens.weight"]
    assert emb == ([262144, 640], 262144 * 640 * 4) and not any("lm_head" in k for k in tensors)
    got = safetensors_bytes_per_token(reference_path)
    total = sum(b for _, b in tensors.values())
    assert got["bytes"] == total + 640 * 4 and got["detail"]["tied_lm_head"] is True
    files = sum(f.stat().st_size for f in reference_path.glob("*.safetensors"))
    assert 0.99 * files < total < files


def test_text_ids_repeat_the_shipped_text(gguf_model):
    short = text_ids(gguf_model, 10)
    long = text_ids(gguf_model, 3000)
    assert len(short) == 10 and len(long) == 3000 and long[:10] == short
    assert short[0] == gguf_model.llm.token_bos()


def test_logits_and_score_agree(gguf_model):
    ids = text_ids(gguf_model, 24)
    lg = gguf_model.logits(ids)
    assert lg.shape == (24, gguf_model.llm.n_vocab()) and lg.dtype == np.float32
    scores = gguf_model.score(ids)
    assert len(scores) == 24 and scores[0] == 0.0 and all(s <= 0 for s in scores)
    lp = log_softmax(lg)
    assert scores[5] == pytest.approx(float(lp[4, ids[5]]), abs=1e-4)
    # the logits are the ones generation uses: greedy decoding picks their argmax
    g = gguf_model.generate(ids, GenerationParams(max_tokens=1, temperature=0, seed=0))
    "".join(g)
    assert gguf_model.tokenize(g.text, add_bos=False)[0] == int(lg[-1].argmax())


def test_kl_is_zero_against_itself_and_skipped_on_token_mismatch(gguf_model):
    ids = text_ids(gguf_model, 32)
    lp = log_softmax(gguf_model.logits(ids)[:-1])
    ppl = math.exp(-float(lp[np.arange(31), ids[1:]].mean()))
    same = measure_quality(gguf_model, 32, Reference(path=Path("self"), ids=ids, logprobs=lp, perplexity=ppl))
    assert same["kl_divergence"] == pytest.approx(0.0, abs=1e-4) and same["top1_agreement"] == 1.0
    assert same["perplexity"] == pytest.approx(ppl, rel=1e-4)
    other = measure_quality(gguf_model, 32, Reference(path=Path("x"), ids=[ids[0], 7] + ids[2:], logprobs=lp,
                                                      perplexity=ppl))
    assert other["kl_divergence"] is None and "token 1" in other["note"]
    alone = measure_quality(gguf_model, 32, None)
    assert alone["kl_divergence"] is None and "--reference" in alone["note"] and alone["perplexity"] > 1


def test_roofline_is_measured_once_then_cached(qd_home):
    from quantdeploy.bench.roofline import cache_file, roofline

    first = roofline("cpu")
    assert first["cached"] is False and first["gbps"] > 0 and cache_file().is_file()
    again = roofline("cpu")
    assert again["cached"] is True and again["gbps"] == first["gbps"]
    assert roofline("cpu", refresh=True)["cached"] is False


def test_peak_memory_sees_an_allocation():
    from quantdeploy.bench.memory import PeakMemory

    mem = PeakMemory()
    mem.start()
    block = np.ones(200 << 20, dtype=np.uint8)  # 200 MiB touched
    out = mem.result("cpu", "llama.cpp")
    del block
    assert out["gpu"] is None and out["host"] > 200
    if out["host_over_baseline"] is not None:  # Linux: the peak was reset at start()
        assert out["host_over_baseline"] >= 190
