"""What greedy sampling costs per token on llama.cpp, host side: llama.cpp's greedy sampler chain
(llama_sampler_sample) against quantdeploy's in-place argmax of the same logits (backends/gguf.py). On a GPU this
cost sits between two decode steps, so it is a direct share of the gap to llama.cpp's own eval timer.

    python benchmarks/gguf_greedy.py [MODEL.gguf] [--vocab-of-8b]
Default model: the embedded Gemma-3-270M (262,144-token vocabulary). Writes nothing; prints microseconds per call.
"""
import sys
import time

import quantdeploy
from quantdeploy.backends.gguf import _argmax, _llama_cpp


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else None
    if path is None:
        from quantdeploy.testing.fixtures import gemma_gguf

        path = str(gemma_gguf())
    m = quantdeploy.load(path)
    lc = _llama_cpp()
    ctx = m.llm._ctx.ctx
    ids = m.tokenize("The capital of France is")
    m._decode(lc, ctx, ids)
    n_vocab = m.llm.n_vocab()
    chain = m._sampler_chain(lc, quantdeploy.GenerationParams(temperature=0))
    for name, fn in (("llama_sampler_sample (greedy chain)", lambda: lc.llama_sampler_sample(chain, ctx, -1)),
                     ("in-place argmax", lambda: _argmax(lc, ctx, n_vocab))):
        fn()
        t = time.perf_counter()
        n = 2000
        for _ in range(n):
            tok = fn()
        print(f"{name:38s} {1e6 * (time.perf_counter() - t) / n:7.1f} us per token (token {tok}, vocab {n_vocab})")
    lc.llama_sampler_free(chain)
    m.close()


if __name__ == "__main__":
    main()
