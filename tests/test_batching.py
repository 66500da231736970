"""The continuous-batching scheduler, over a toy model whose tokens depend on every cached token (no weights)."""

from __future__ import annotations

import threading

import pytest

from quantdeploy.batching import QueueFull, Scheduler
from quantdeploy.batching.toy import ToyStepper, solo


def collect(handle) -> list[int]:
    return [s.token for s in handle]


def run_all(sched, jobs):
    """Submit every (prompt, max_new, stop) at once from its own thread; return the tokens per job."""
    out = [None] * len(jobs)

    def one(i, prompt, n, stop):
        out[i] = collect(sched.submit(prompt, None, stop_ids=stop, max_new=n))

    threads = [threading.Thread(target=one, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


@pytest.fixture()
def sched_factory():
    made = []

    def make(**kw):
        kw.setdefault("delay", 0.001)  # a step takes time, as on a device: sequences overlap
        s = Scheduler(ToyStepper(**kw))
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_every_sequence_equals_itself_decoded_alone(sched_factory):
    sched = sched_factory(max_seqs=4, num_blocks=64)
    jobs = [([i + 1] * (3 + 5 * i), 10 + 3 * i, frozenset()) for i in range(9)]
    got = run_all(sched, jobs)
    assert got == [solo(p, n) for p, n, _ in jobs]
    assert sched.pool.used == 0
    assert max(d for d, _ in sched.stepper.steps) > 1  # several sequences really were decoded in one step


def test_shared_prompt_prefix_reuses_blocks(sched_factory):
    sched = sched_factory(max_seqs=2, num_blocks=64, block_size=4)
    system = list(range(100, 117))  # 17 tokens: 4 full blocks
    first = collect(sched.submit(system + [1, 2], None, max_new=5))
    assert sched.pool.hits == 0
    second = collect(sched.submit(system + [3], None, max_new=5))
    assert sched.pool.hits == 16
    assert first == solo(system + [1, 2], 5) and second == solo(system + [3], 5)


def test_full_pool_preempts_and_recomputes(sched_factory):
    # 10 blocks of 4 tokens: three sequences of 8 + 20 tokens cannot all keep their KV
    sched = sched_factory(max_seqs=3, num_blocks=10, block_size=4, prefix_caching=False)
    jobs = [([7 + i] * 8, 20, frozenset()) for i in range(3)]
    got = run_all(sched, jobs)
    assert got == [solo(p, n) for p, n, _ in jobs]
    assert sched.preemptions > 0
    assert sched.pool.used == 0


def test_stop_token_ends_the_sequence(sched_factory):
    sched = sched_factory()
    prompt = [5, 6, 7]
    ref = solo(prompt, 12)
    stop = ref[4]
    h = sched.submit(prompt, None, stop_ids={stop}, max_new=12)
    assert collect(h) == ref[:ref.index(stop) + 1]
    assert h.finish_reason == "stop"


def test_long_prompt_is_prefilled_in_chunks_between_decodes(sched_factory):
    sched = sched_factory(max_seqs=2, num_blocks=128, chunk_tokens=8, block_size=4)
    short = sched.submit([1, 2], None, max_new=200)
    it = iter(short)
    first = [next(it).token for _ in range(3)]  # the short one is decoding
    long_prompt = list(range(1, 81))
    long = sched.submit(long_prompt, None, max_new=4)
    assert collect(long) == solo(long_prompt, 4)
    assert first + [s.token for s in it] == solo([1, 2], 200)
    assert all(p <= 8 for _, p in sched.stepper.steps)
    assert any(d == 1 and p == 8 for d, p in sched.stepper.steps)  # chunks shared steps with the decode
    stats = sched.stats()  # the host time of steps with prompt chunks, apart
    assert stats["steps"] == len(sched.stepper.steps)
    assert stats["prompt_steps"] == sum(1 for _, p in sched.stepper.steps if p) >= 10
    assert 0 < stats["prompt_host_s"] < stats["host_s"]


def test_cancel_frees_the_sequence(sched_factory):
    sched = sched_factory(max_seqs=1)
    h = sched.submit([1, 2, 3], None, max_new=200)
    it = iter(h)
    next(it)
    h.cancel()
    list(it)
    assert h.finish_reason == "cancelled"
    after = sched.submit([4], None, max_new=3)  # the slot is free again
    assert collect(after) == solo([4], 3)
    assert sched.pool.used == 0


def test_context_end_finishes_with_length(sched_factory):
    sched = sched_factory(max_len=12)
    h = sched.submit([1] * 8, None, max_new=50)
    assert len(collect(h)) == 4
    assert h.finish_reason == "length"


def test_waiting_queue_is_bounded(sched_factory):
    sched = sched_factory(max_seqs=1)
    sched.max_waiting = 0
    with pytest.raises(QueueFull):
        for _ in range(50):
            sched.submit([1], None, max_new=1000)


def test_a_failing_step_fails_its_sequences_and_the_scheduler_goes_on(sched_factory):
    sched = sched_factory()
    stepper = sched.stepper
    real = stepper.launch
    stepper.launch = lambda d, p: (_ for _ in ()).throw(RuntimeError("device lost"))
    with pytest.raises(RuntimeError, match="device lost"):
        collect(sched.submit([1, 2], None, max_new=5))
    stepper.launch = real
    assert collect(sched.submit([3], None, max_new=5)) == solo([3], 5)


def test_bad_submissions_are_refused(sched_factory):
    sched = sched_factory(max_len=16, num_blocks=2, block_size=4)
    with pytest.raises(ValueError, match="empty"):
        sched.submit([], None, max_new=1)
    with pytest.raises(ValueError, match="context"):
        sched.submit([1] * 16, None, max_new=1)
    with pytest.raises(ValueError, match="KV blocks"):
        sched.submit([1] * 8, None, max_new=8)


class _Grammar:
    """A constraint that allows every token and is complete after `n` of them (the scheduler's side of a grammar:
    such a sequence is never planned while a token of it is in flight)."""

    def __init__(self, n):
        self.n, self.seen = n, []

    def accept(self, tok):
        self.seen.append(tok)

    @property
    def done(self):
        return len(self.seen) >= self.n


def test_a_constrained_sequence_decodes_one_token_at_a_time_across_blocks(sched_factory):
    sched = sched_factory(block_size=4)
    stepper = sched.stepper
    real = stepper.launch

    def launch(decodes, prefills):
        out = real(decodes, prefills)
        for w, r in zip(decodes + prefills, out):
            c = w.seq.constraint
            if c is not None and r is not None:
                assert w.seq.pending == 1  # nothing else of it in flight
                c.accept(r.token)
                r.final = c.done
        return out

    stepper.launch = launch
    g = _Grammar(11)  # 3 prompt + 11 tokens: past three 4-token blocks, one token per planned step
    h = sched.submit([1, 2, 3], None, max_new=50, constraint=g)
    assert collect(h) == solo([1, 2, 3], 11) == g.seen
    assert h.finish_reason == "stop"


def test_with_many_sequences_running_tokens_go_out_a_few_at_a_time(sched_factory, monkeypatch):
    """32 running sequences: a caller wakes every 2 steps for 2 tokens (32 // SEQS_PER_STREAM_STEP), its first
    token and its end at once; every sequence still gets exactly its tokens alone."""
    import queue

    from quantdeploy.batching import scheduler as S

    puts: dict[queue.SimpleQueue, list[list]] = {}  # keyed by the queue itself (an id could be reused)

    class Recorded(queue.SimpleQueue):
        def put(self, items, *a, **kw):
            puts.setdefault(self, []).append(list(items))
            super().put(items, *a, **kw)

    monkeypatch.setattr(S.queue, "SimpleQueue", Recorded)
    sched = sched_factory(max_seqs=32, num_blocks=32 * 8, chunk_tokens=32 * 4, delay=0.005)
    prompts = [[i + 1] * 4 for i in range(32)]
    handles = [sched.submit(p, None, max_new=12) for p in prompts]  # at once: all 32 run together
    got: list = [None] * 32

    def one(i):
        got[i] = collect(handles[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == [solo(p, 12) for p in prompts]
    assert max(d for d, _ in sched.stepper.steps) == 32
    assert len(puts) == 32
    for batches in puts.values():
        assert len(batches[0]) == 1 and isinstance(batches[0][0], S.Sampled)  # the first token alone, at once
        assert batches[-1][-1] is S._END
        assert max(len(b) for b in batches) <= S.MAX_STREAM_STEPS + 1  # tokens of a few steps (and the end)
        assert sum(isinstance(x, S.Sampled) for b in batches for x in b) == 12
    assert sum(len(batches) for batches in puts.values()) < 32 * 12  # fewer wake-ups than tokens
