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


@pytest.fixture(scope="module", params=["gptq", "awq"])
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


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_batched_greedy_on_the_gpu_equals_each_sequence_alone(fmt, model_paths):
    """On CUDA the batch runs through the W4A16 GEMM and the paged kernels, alone through the GEMV: the greedy
    tokens must still agree (the fixtures' prompts have no near-ties in their first tokens)."""
    path = str(model_paths[fmt])
    params = GenerationParams(max_tokens=16, temperature=0)
    solo = quantdeploy.load(path, engine="fast", device="cuda")
    alone = ["".join(solo.generate(p, params)) for p in PROMPTS]
    solo.close()
    batched = quantdeploy.load(path, engine="fast", device="cuda", max_seqs=4)
    try:
        assert concurrently(batched, PROMPTS, params) == alone
        assert batched.kernel_report()["kernel"] == "qd-w4a16-gemv"
    finally:
        batched.close()
