"""The fast engine's batching (engine/stepper.py behind batching.Scheduler) on the real fixtures: every sequence
of a batch decodes the tokens it decodes alone; shared prompt prefixes reuse KV blocks; seeds reproduce."""

from __future__ import annotations


import pytest

import quantdeploy
from quantdeploy import GenerationParams

from conftest import in_threads

PROMPTS = ["The capital of France is", "Once upon a time, there was", "1, 2, 3, 4,", "def fibonacci(n):"]


def concurrently(model, prompts, params):
    return in_threads(lambda i: "".join(model.generate(prompts[i], params)), len(prompts))


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


@pytest.mark.slow
def test_the_prompt_chunk_reaches_the_engine(pair, model_paths):
    """--prompt-chunk 16: a prompt of about 40 tokens takes three steps, and the tokens do not change."""
    solo, _ = pair
    prompt = "The quick brown fox jumps over the lazy dog. " * 4
    params = GenerationParams(max_tokens=8, temperature=0)
    m = quantdeploy.load(str(model_paths["gptq"]), engine="fast", device="cpu", max_seqs=2, prompt_chunk=16)
    try:
        assert m.stepper.chunk_tokens == 16
        assert "".join(m.generate(prompt, params)) == "".join(solo.generate(prompt, params))
        assert m.batch_stats()["prompt_steps"] >= 3
    finally:
        m.close()


@pytest.mark.parametrize("asym", [False, True], ids=["sym", "asym"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_tiny_llama_batched_greedy_equals_each_sequence_alone(tmp_path, device, asym):
    """The Llama path the 8B benchmarks take, 4 prompts at once on 3 slots (one waits and joins mid-way). On CUDA
    the batch runs through the W4A16 GEMM, the paged kernels and the batch graphs, a sequence alone through the
    GEMV and the single-sequence graphs: the greedy tokens must still agree. asym: zero points per group, in the
    meta form AWQ's weights take."""
    import torch

    from quantdeploy.batching import Scheduler
    from quantdeploy.engine.runner import FastEngine
    from quantdeploy.engine.stepper import FastStepper
    from test_engine import _tiny_llama_gptq

    on_cuda = device == "cuda"
    eng = FastEngine(_tiny_llama_gptq(tmp_path / "m", asym=asym), device,
                     torch.float16 if on_cuda else torch.float32, 1024, gemv="cuda" if on_cuda else "auto")
    prompts = [list(range(10 + i, 30 + 3 * i)) for i in range(4)]
    kw = dict(max_new=24, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set())
    alone = [list(eng.generate(p, **kw)) for p in prompts]
    stepper = FastStepper(eng.dec, max_seqs=3, max_len=1024, num_blocks=64)
    assert [stepper.row_bucket(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 4, 8]
    assert stepper.graph_buckets() == [(r, k) for r in (1, 2, 4) for k in (256, 512, 1024)]
    pool = [t[:-1].clone() for t in stepper.kv.k + stepper.kv.v]  # every block but the scratch one
    warmed = stepper.warm(prompts=True)  # the prompt chunks too, off CUDA as well: they must leave no trace
    assert all(torch.equal(a, b[:-1]) for a, b in zip(pool, stepper.kv.k + stepper.kv.v))
    assert warmed == (9 if on_cuda else 0)
    # the default chunk: 512 tokens on the CPU; 2048 on CUDA, capped by max_len
    assert stepper.warmed_prompts == [1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 511, 512] + (
        [1023, 1024] if on_cuda else [])
    sched = Scheduler(stepper)
    try:
        out = in_threads(lambda i: [s.token for s in sched.submit(prompts[i], GenerationParams(temperature=0),
                                                                  max_new=24)], len(prompts), timeout=300)
        assert out == alone
        assert len(stepper.graphs) == warmed  # every decode ran from a graph captured before the first request
    finally:
        sched.close()


@pytest.mark.slow
def test_structured_output_and_logprobs_in_a_batch(pair):
    """A JSON-schema reply and a reply with logprobs decoded together with a plain one: the JSON validates, the
    logprobs are the ones the sequence gets alone, the plain reply is unchanged."""
    import json

    solo, batched = pair
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "year": {"type": "integer"}},
              "required": ["city", "year"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}}
    msgs = [{"role": "user", "content": "Name a city and a year as JSON."}]
    greedy = GenerationParams(max_tokens=40, temperature=0)
    with_lp = GenerationParams(max_tokens=6, temperature=0, logprobs=2)
    plain_alone = "".join(solo.generate(PROMPTS[0], GenerationParams(max_tokens=12, temperature=0)))
    lp_alone = solo.generate(PROMPTS[1], with_lp)
    list(lp_alone)
    jobs = {"json": lambda: batched.chat(msgs, greedy, response_format=fmt),
            "lp": lambda: batched.generate(PROMPTS[1], with_lp),
            "plain": lambda: batched.generate(PROMPTS[0], GenerationParams(max_tokens=12, temperature=0))}

    def run(name):
        g = jobs[name]()
        return "".join(g), g

    out = dict(zip(jobs, in_threads(lambda i: run(list(jobs)[i]), len(jobs))))
    reply = json.loads(out["json"][0])
    assert set(reply) == {"city", "year"} and isinstance(reply["year"], int)
    assert out["plain"][0] == plain_alone
    got, want = out["lp"][1].logprobs, lp_alone.logprobs
    assert [t.token for t in got] == [t.token for t in want]
    assert all(abs(a.logprob - b.logprob) < 1e-3 and len(a.top) == 2 for a, b in zip(got, want))


def test_the_cpu_kv_pool_fits_in_a_quarter_of_the_available_memory():
    """64 slots at 128k tokens of a wide model would want far more RAM than a machine has (serve's default on the CPU
    was killed by the OOM killer): the pool is capped, and still holds one full sequence."""
    import os
    from types import SimpleNamespace

    import torch

    from quantdeploy.engine.attention import PagedKV
    from quantdeploy.engine.stepper import pool_blocks

    cfg = SimpleNamespace(layers=32, kv_heads=8, head_dim=128)
    dec = SimpleNamespace(cfg=cfg, device=torch.device("cpu"), dtype=torch.float32)
    per_block = PagedKV.bytes_per_block(cfg.layers, 16, cfg.kv_heads, cfg.head_dim, torch.float32)
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    blocks = pool_blocks(dec, max_seqs=64, max_len=131072, block_size=16, memory_fraction=None)
    one = 131072 // 16
    assert one <= blocks < 64 * one and blocks * per_block <= max(available // 4, one * per_block)
    assert pool_blocks(dec, max_seqs=2, max_len=256, block_size=16, memory_fraction=None) == 2 * 256 // 16  # small: all


def test_running_out_of_gpu_memory_while_capturing_the_graphs_says_what_to_lower(tmp_path, monkeypatch):
    """A capture that runs out of GPU memory at load is one usage line naming the options that make room, not a
    traceback (the out-of-memory error itself is raised by hand: this machine may have no GPU)."""
    import torch

    from quantdeploy.engine.runner import FastEngine
    from quantdeploy.engine.stepper import FastStepper
    from quantdeploy.errors import UsageError
    from test_engine import _tiny_llama_gptq

    eng = FastEngine(_tiny_llama_gptq(tmp_path / "m"), "cpu", torch.float32, 1024)
    stepper = FastStepper(eng.dec, max_seqs=4, max_len=1024, num_blocks=16, use_graph=True)

    def no_room(rows, kv_len):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(stepper, "_capture", no_room)
    with pytest.raises(UsageError, match="warming up \\(decode graphs, prompt chunks of up to 512 tokens\\) for 4 "
                                         "sequences of up to 1024 tokens; "
                                         "lower --max-concurrency, --ctx, --prompt-chunk or --gpu-memory-utilization"):
        stepper.warm()
    assert not stepper.graphs


def test_the_default_prompt_chunk_is_larger_on_a_gpu():
    from quantdeploy.engine.stepper import default_chunk_tokens

    assert default_chunk_tokens("cpu") == 512 and default_chunk_tokens("cuda:0") == 2048
