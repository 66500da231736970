"""The fast engine's batching (engine/stepper.py behind batching.Scheduler) on the real fixtures: every sequence
of a batch decodes the tokens it decodes alone; shared prompt prefixes reuse KV blocks; seeds reproduce."""

from __future__ import annotations

import threading

import pytest

import quantdeploy
from quantdeploy import GenerationParams

PROMPTS = ["The capital of France is", "Once upon a time, there was", "1, 2, 3, 4,", "def fibonacci(n):"]


def concurrently(model, prompts, params):
    out = [None] * len(prompts)

    def one(i):
        out[i] = "".join(model.generate(prompts[i], params))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return out


@pytest.fixture(scope="module", params=["gptq"])
def pair(request, model_paths):
    path = str(model_paths[request.param])
    solo = quantdeploy.load(path, engine="fast", device="cpu")
    batched = quantdeploy.load(path, engine="fast", device="cpu", max_seqs=3)
    yield solo, batched
    solo.close()
    batched.close()


@pytest.mark.slow
def test_batched_greedy_equals_each_sequence_alone(pair):
    solo, batched = pair
    params = GenerationParams(max_tokens=20, temperature=0)
    alone = ["".join(solo.generate(p, params)) for p in PROMPTS]
    assert batched.max_sequences == 3
    assert concurrently(batched, PROMPTS, params) == alone  # 4 prompts on 3 slots: one waits, then joins
    stats = batched.batch_stats()
    assert stats["steps"] > 0 and stats["kv_blocks_total"] > 0


@pytest.mark.slow
def test_shared_prefix_reuses_blocks_and_changes_nothing(pair):
    solo, batched = pair
    system = "You are a helpful assistant. " * 12  # > 2 KV blocks of 32 tokens
    prompts = [system + "The capital of France is", system + "The quick brown fox"]
    params = GenerationParams(max_tokens=8, temperature=0)
    alone = ["".join(solo.generate(p, params)) for p in prompts]
    before = batched.batch_stats()["prefix_cache_hit_tokens"]
    assert [("".join(batched.generate(p, params))) for p in prompts] == alone
    assert batched.batch_stats()["prefix_cache_hit_tokens"] - before >= 64


@pytest.mark.slow
def test_a_seed_reproduces_whatever_else_is_in_the_batch(pair):
    _, batched = pair
    params = GenerationParams(max_tokens=12, temperature=0.9, seed=1234)
    first = "".join(batched.generate(PROMPTS[0], params))
    together = concurrently(batched, [PROMPTS[0], PROMPTS[1], PROMPTS[2]],
                            params)  # the same seed in three different sequences at once
    assert together[0] == first


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_tiny_llama_batched_greedy_equals_each_sequence_alone(tmp_path, device):
    """The Llama path the 8B benchmarks take, 4 prompts at once on 3 slots (one waits and joins mid-way). On CUDA
    the batch runs through the W4A16 GEMM, the paged kernels and the batch graphs, a sequence alone through the
    GEMV and the single-sequence graphs: the greedy tokens must still agree."""
    import torch

    from quantdeploy.batching import Scheduler
    from quantdeploy.engine.runner import FastEngine
    from quantdeploy.engine.stepper import FastStepper
    from test_engine import _tiny_llama_gptq

    on_cuda = device == "cuda"
    eng = FastEngine(_tiny_llama_gptq(tmp_path / "m"), device, torch.float16 if on_cuda else torch.float32, 1024,
                     gemv="cuda" if on_cuda else "auto")
    prompts = [list(range(10 + i, 30 + 3 * i)) for i in range(4)]
    kw = dict(max_new=24, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set())
    alone = [list(eng.generate(p, **kw)) for p in prompts]
    stepper = FastStepper(eng.dec, max_seqs=3, max_len=1024, num_blocks=64)
    sched = Scheduler(stepper)
    try:
        out = [None] * len(prompts)

        def one(i):
            out[i] = [s.token for s in sched.submit(prompts[i], GenerationParams(temperature=0), max_new=24)]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        [t.start() for t in threads]
        [t.join(300) for t in threads]
        assert out == alone
        assert bool(stepper.graphs) == on_cuda  # on CUDA the decode rows ran from batch graphs
    finally:
        sched.close()
