"""GGUF continuous batching on the real embedded model: several sequences in one llama_batch per step.

llama.cpp's CPU kernels reduce a step of several rows in another order than a step of one (ggml-org/llama.cpp#6583),
so a sequence's logits in a batch differ from its logits alone by float noise. Greedy outputs are compared with
that in mind: equal up to the first position where the sequence alone had two candidates within TIE of each
other (and there the batch picked one of those two), never a different token where the model was sure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

import quantdeploy
from quantdeploy.backends.base import GenerationParams
from quantdeploy.backends.gguf_batch import Request, pool_cells, sequences_for
from quantdeploy.errors import UsageError

from conftest import in_threads

TIE = 2.0  # log-probability gap below which two candidates count as a near tie
PROMPTS = ["The capital of France is", "1, 2, 3, 4, 5,", "Once upon a time, in a land far away, there lived a",
           "def fib(n):", "Water boils at", "The three primary colors are red,"]
N = 16


@pytest.fixture(scope="module")
def batched(gguf_path):
    """The Gemma fixture, four sequences at once."""
    m = quantdeploy.load(str(gguf_path), max_seqs=4)
    yield m
    m.close()


@pytest.fixture(scope="module")
def default_batched(default_gguf_path):
    """The default model (SmolLM2), four sequences at once."""
    m = quantdeploy.load(str(default_gguf_path), max_seqs=4)
    yield m
    m.close()


@pytest.fixture(params=["gemma", "default"])
def each_batched(request):
    return request.getfixturevalue("batched" if request.param == "gemma" else "default_batched")


def params(**kw) -> GenerationParams:
    kw.setdefault("max_tokens", N)
    kw.setdefault("ignore_eos", True)
    return GenerationParams(**kw)


def submit(model, prompt: str | list[int], p: GenerationParams):
    """Straight to the scheduler (a test that needs to know when a sequence is admitted)."""
    ids = prompt if isinstance(prompt, list) else model.tokenize(prompt)
    return model._sched.submit(ids, Request(p), max_new=p.max_tokens)


def alone(model, prompt: str | list[int], p: GenerationParams) -> list:
    """The sequence decoded with nothing beside it: each token with the likeliest candidates (TokenLogprob)."""
    g = model.generate(prompt, replace(p, logprobs=5))
    "".join(g)
    return g.logprobs


def tokens(model, prompt: str | list[int], p: GenerationParams) -> list[int]:
    g = model.generate(prompt, replace(p, logprobs=0))
    "".join(g)
    return [t.token for t in g.logprobs]


def concurrently(model, texts: list[str], p: GenerationParams) -> list[list[int]]:
    return in_threads(lambda i: tokens(model, texts[i], p), len(texts), timeout=300)


def wait_until(check, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        threading.Event().wait(0.05)
    assert check()


def assert_same_up_to_ties(ref: list, got: list[int]) -> int:
    """got equals ref's tokens, or leaves them where ref had a near tie: got took another of ref's likeliest
    tokens, within TIE of the best. Returns how many tokens matched."""
    for i, (r, g) in enumerate(zip(ref, got)):
        if r.token == g:
            continue
        close = {t for t, lp in r.top if r.top[0][1] - lp < TIE}
        assert g in close and r.token in close, \
            f"token {i}: {g} where the sequence alone gave {r.token} (its likeliest: {r.top})"
        return i
    assert len(got) == len(ref)
    return len(ref)


def test_the_model_batches_and_says_so(batched, gguf_model):
    assert batched.max_sequences == 4 and gguf_model.max_sequences == 1
    stats = batched.batch_stats()
    assert stats["kv_blocks_total"] * 16 == batched.context_length  # the pool is the context's cells
    assert gguf_model.batch_stats() is None  # one at a time: the unbatched path


def test_concurrent_greedy_sequences_equal_each_decoded_alone(each_batched):
    batched = each_batched
    p = params(temperature=0)
    refs = [alone(batched, t, p) for t in PROMPTS]
    got = concurrently(batched, PROMPTS, p)
    matched = [assert_same_up_to_ties(r, g) for r, g in zip(refs, got)]
    assert sum(matched) >= len(PROMPTS) * N // 2, matched  # ties are rare: most tokens agree
    assert batched.batch_stats()["peak_batch"] >= 2  # several sequences shared a step
    assert batched.batch_stats()["kv_blocks_used"] == 0


def test_alone_in_the_scheduler_is_the_unbatched_path(batched, gguf_model):
    """One sequence by itself: its prompt in one chunk, then one row a step, as the unbatched path computes it
    (seeded, so that the unbatched path prefills the whole prompt too instead of reusing its cache)."""
    p = params(temperature=0, seed=0, logprobs=3)
    for text in PROMPTS[:2]:
        one, other = batched.generate(text, p), gguf_model.generate(text, p)
        assert "".join(one) == "".join(other)
        assert one.logprobs == other.logprobs  # tokens, their logprobs and the likeliest three: the same floats


def test_through_generate_from_threads(batched):
    """The public API: generate() from several threads at once, each with its own stop string."""
    texts = ["1, 2, 3, 4, 5,", "10, 11, 12, 13,"]
    out: dict = {}

    def one(text: str) -> None:
        g = batched.generate(text, GenerationParams(max_tokens=40, temperature=0, stop=[" 9", " 19"]))
        out[text] = ("".join(g), g.finish_reason, g.usage.completion_tokens)

    threads = [threading.Thread(target=one, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert out["1, 2, 3, 4, 5,"][:2] == (" 6, 7, 8,", "stop")
    assert out["10, 11, 12, 13,"][:2] == (" 14, 15, 16, 17, 18,", "stop")


def test_a_seed_reproduces_a_sequence(each_batched):
    p = params(temperature=1.0, max_tokens=8)
    ref = tokens(each_batched, PROMPTS[2], replace(p, seed=11))
    assert ref == tokens(each_batched, PROMPTS[2], replace(p, seed=11))
    assert ref != tokens(each_batched, PROMPTS[2], replace(p, seed=12))


@pytest.mark.parametrize("which", ["gguf_path", "default_gguf_path"])
def test_each_sequence_draws_from_its_own_generator(request, which):
    """Three seeded sequences admitted in one step of a fresh model run in lockstep, so every step has the same
    shape and cell layout from run to run: the same seeds give the same tokens, and another seed for the middle
    one changes its tokens only. (A sequence's logits do not depend on the others' tokens, only on the step's
    shape, so what the others draw cannot move its own draws.)"""
    path = request.getfixturevalue(which)
    p = params(temperature=1.5, max_tokens=8)
    texts = [PROMPTS[0], PROMPTS[2], PROMPTS[4]]  # the middle one, a story, has many likely continuations

    def run(seeds: tuple[int, ...]) -> list[list[int]]:
        m = quantdeploy.load(str(path), max_seqs=4)
        try:
            with m._sched._cv:  # the scheduler plans its first step once all of them are in
                handles = [submit(m, text, replace(p, seed=seed)) for text, seed in zip(texts, seeds)]
            out = [[s.token for s in h] for h in handles]
            assert m.batch_stats()["peak_batch"] == len(seeds)
            return out
        finally:
            m.close()

    first = run((11, 12, 13))
    assert run((11, 12, 13)) == first
    other = run((11, 99, 13))
    assert other[0] == first[0] and other[2] == first[2] and other[1] != first[1]


def test_cancelling_frees_the_slot_and_its_kv_cells(batched):
    from quantdeploy.backends.gguf import _llama_cpp

    g = batched.generate("Once upon a time", params(max_tokens=2000, temperature=0))
    it = iter(g)
    for _ in range(3):
        next(it)
    stats = batched.batch_stats()
    assert stats["running"] == 1 and stats["kv_blocks_used"] > 0
    g.close()
    lc = _llama_cpp()
    stepper = batched._sched.stepper

    def freed() -> bool:
        stats = batched.batch_stats()
        cells = [lc.llama_memory_seq_pos_max(stepper.mem, s) for s in range(stepper.max_seqs)]  # -1: none
        return stats["running"] == 0 and stats["kv_blocks_used"] == 0 and cells == [-1] * stepper.max_seqs

    wait_until(freed)
    assert "".join(batched.generate("1, 2, 3,", params(max_tokens=6, temperature=0))) == " 4, 5,"


def test_a_full_context_makes_sequences_wait_and_all_complete(gguf_path):
    """Three sequences of 240 + 30 tokens in a pool of 512 cells and two slots: the third waits for a slot, and the
    two running ones outgrow the pool, so the newest is preempted and recomputed later. Nobody fails."""
    m = quantdeploy.load(str(gguf_path), max_seqs=2, n_ctx=512)
    try:
        assert m.max_sequences == 2 and m.context_length == 512
        p = params(max_tokens=30, temperature=0)
        texts = [m.tokenize(f"{k}: " + ", ".join(str(i) for i in range(k, k + 80)))[:240] for k in (1, 100, 300)]
        assert [len(t) for t in texts] == [240] * 3
        refs = [alone(m, t, p) for t in texts]
        handles = [submit(m, t, p) for t in texts]  # all three at once: two slots, the third waits
        got = [[s.token for s in h] for h in handles]
        assert [h.finish_reason for h in handles] == ["length"] * 3
        for r, g in zip(refs, got):
            assert_same_up_to_ties(r, g)
        stats = m.batch_stats()
        assert stats["preemptions"] >= 1 and stats["kv_blocks_used"] == 0
        with pytest.raises(UsageError, match="context"):
            list(m.generate("word " * 600, params(max_tokens=1)))
    finally:
        m.close()


def test_the_prompt_chunk_sets_the_prompt_tokens_per_step(gguf_path):
    """--prompt-chunk 32: a 200-token prompt is prefilled over at least 7 steps, and decodes what it decodes alone."""
    m = quantdeploy.load(str(gguf_path), max_seqs=2, n_ctx=512, prompt_chunk=32)
    try:
        assert m._sched.stepper.chunk_tokens == 32
        p = params(max_tokens=8, temperature=0)
        ids = m.tokenize(", ".join(str(i) for i in range(200)))[:200]
        ref = alone(m, ids, p)
        before = m.batch_stats()["prompt_steps"]
        got = [s.token for s in submit(m, ids, p)]
        assert m.batch_stats()["prompt_steps"] - before >= 200 // 32
        assert_same_up_to_ties(ref, got)
    finally:
        m.close()


def test_too_small_a_context_batches_fewer_sequences(gguf_path):
    m = quantdeploy.load(str(gguf_path), max_seqs=8, n_ctx=512)
    try:
        assert m.max_sequences == 2  # at least 256 cells each
    finally:
        m.close()


def test_on_a_gpu_the_pool_grows_with_the_sequences_asked_for():
    """Layers on a GPU and no --ctx: 1024 cells per sequence asked for, so 64 sequences decode together (the 8192-cell
    context held 32, and 21 of 384 tokens); on the CPU, and for one sequence, the pool is the context."""
    assert pool_cells(8192, 64, offloaded=True) == 65536
    assert sequences_for(pool_cells(8192, 64, offloaded=True), 64, 256) == 64
    assert pool_cells(8192, 4, offloaded=True) == 8192  # never below one sequence's context
    assert pool_cells(8192, 64, offloaded=False) == 8192
    assert pool_cells(2048, 1, offloaded=True) == 2048


def test_a_slot_moves_between_greedy_in_the_graph_and_logits_on_the_host(batched):
    """A plain greedy sequence samples inside llama.cpp's graph; one that asks for logprobs needs the logits, so its
    slot's backend sampler is detached (and replaced: a chain goes to the backend once). All three say the same."""
    stepper = batched._sched.stepper
    prompt, p = "1, 2, 3, 4,", params(max_tokens=12, temperature=0)
    first = "".join(batched.generate(prompt, p))
    assert stepper._on_backend  # the slots start with their greedy samplers in the graph
    chains = list(stepper._greedy)
    g = batched.generate(prompt, replace(p, logprobs=1))
    with_logprobs = "".join(g)
    assert len(g.logprobs) == 12
    assert stepper._greedy != chains  # its slot's sampler left the graph (a detached chain is replaced)
    assert "".join(batched.generate(prompt, p)) == with_logprobs == first


def test_a_grown_pool_that_does_not_fit_falls_back_to_one_context(gguf_path, monkeypatch, caplog):
    """Layers "offloaded" (n_gpu_layers: the CPU build ignores it) and 64 sequences asked for: the pool grows to
    65,536 cells. Where llama.cpp cannot allocate that (a small GPU; here refused above 8,192 cells), the model still
    loads, batching what one 8,192-token context holds, and says so."""
    from quantdeploy.backends import gguf_batch

    real = gguf_batch.GGUFStepper.__init__
    asked = []

    def small_gpu(self, lc, model, *, n_ctx, **kw):
        asked.append(n_ctx)
        if n_ctx > 8192:
            raise gguf_batch.InvalidModel("llama.cpp could not create a context (out of memory?)")
        real(self, lc, model, n_ctx=n_ctx, **kw)

    monkeypatch.setattr(gguf_batch.GGUFStepper, "__init__", small_gpu)
    m = quantdeploy.load(str(gguf_path), max_seqs=64, extra={"n_gpu_layers": 1})
    try:
        assert asked == [65536, 8192]
        assert m.max_sequences == 32 and m.context_length == 8192
        assert "did not fit the GPU" in caplog.text
        assert "".join(m.generate("1, 2, 3,", params(max_tokens=6, temperature=0))) == " 4, 5,"
    finally:
        m.close()


def test_structured_output_and_logprobs_in_a_batch(batched):
    """A grammar and logprobs per sequence, while other sequences decode beside them: every reply parses, and the
    logprobs describe the sampled tokens."""
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": {
        "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"], "additionalProperties": False}}}
    msgs = [{"role": "user", "content": "Alice is 30. Give her name and age as JSON."}]
    out: dict = {}

    def structured(seed: int) -> None:
        g = batched.chat(msgs, GenerationParams(max_tokens=40, temperature=1.0, seed=seed, logprobs=2),
                         response_format=rf)
        out[seed] = ("".join(g), g.finish_reason, g.logprobs)

    def plain(i: int) -> None:
        out[f"plain{i}"] = tokens(batched, PROMPTS[i], params(temperature=0))

    threads = [threading.Thread(target=structured, args=(seed,)) for seed in (1, 2)]
    threads += [threading.Thread(target=plain, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for seed in (1, 2):
        text, finish, logprobs = out[seed]
        data = json.loads(text)
        assert finish == "stop" and set(data) == {"name", "age"} and isinstance(data["age"], int), text
        assert b"".join(batched.token_bytes(t.token) for t in logprobs).decode() == text
        assert all(t.logprob <= 0 and len(t.top) == 2 for t in logprobs)
    assert len(out["plain0"]) == len(out["plain1"]) == N
    wait_until(lambda: batched.batch_stats()["kv_blocks_used"] == 0)  # the grammar's end cancels its sequence


def test_a_gguf_model_loads_llama_cpp_before_numpy(gguf_path):
    """Naming a GGUF loads llama.cpp's libraries before anything imports numpy (reading the header does): a CUDA
    build crashed loading a model in a process that had imported numpy first."""
    code = ("import sys, quantdeploy; quantdeploy.resolve_model(sys.argv[1]); m = list(sys.modules); "
            "ll = min(i for i, k in enumerate(m) if k.startswith('llama_cpp.')); "
            "print('numpy' not in m or ll < m.index('numpy'))")
    proc = subprocess.run([sys.executable, "-c", code, str(gguf_path)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"
