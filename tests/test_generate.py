"""Offline batch generation: `quantdeploy generate` through the real CLI on the Gemma test GGUF (mixed good and bad
lines, resume after a real kill, --retry-errors), `model.generate_batch` against single generations (the GGUF
and the GPTQ fixture), ordering under concurrency with a model that batches, and the file rules."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_clean_error, run_cli
from quantdeploy.backends.base import GenerationParams, LoadedModel, ModelSpec, TemplateSource
from quantdeploy.errors import QuantDeployError, UsageError
from quantdeploy.offline.jsonl import Appender, finalize, scan_input, scan_output
from quantdeploy.offline.requests import BadRequest, parse_item

GREEDY = {"temperature": 0, "seed": 0}  # seeded: every run prefills in full, so results match across processes


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def read_out(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- requests: table-driven ----------------------------------------------------------------------------------

DEFAULTS = GenerationParams(max_tokens=32, temperature=0.7)


@pytest.mark.parametrize("item, expect", [
    ("Once upon", {"prompt": "Once upon", "id": 9, "max_tokens": 32}),
    ([{"role": "user", "content": "hi"}], {"messages": [{"role": "user", "content": "hi"}]}),
    ({"prompt": "a", "id": "x", "max_tokens": 5, "temperature": 0, "top_p": 0.5, "top_k": 3, "seed": 1,
      "stop": "\n", "ignore_eos": True}, {"id": "x", "max_tokens": 5, "temperature": 0.0, "top_p": 0.5, "top_k": 3,
                                          "seed": 1, "stop": ("\n",), "ignore_eos": True, "given": True}),
    ({"prompt": "a", "stop": ["x", ""], "temperature": None}, {"stop": ("x",), "temperature": 0.7, "given": False}),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
     {"messages": [{"role": "user", "content": "a\nb"}]}),
    ({"prompt": "a", "metadata": {"row": 3}}, {"metadata": {"row": 3}}),
])
def test_valid_requests(item, expect):
    r = parse_item(item, DEFAULTS, 9)
    p = r.params
    got = {"prompt": r.prompt, "messages": r.messages, "id": r.id, "max_tokens": p.max_tokens,
           "temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k, "seed": p.seed, "stop": tuple(p.stop),
           "ignore_eos": p.ignore_eos, "given": r.max_tokens_given, "metadata": r.metadata}
    for k, v in expect.items():
        assert got[k] == v, k


@pytest.mark.parametrize("item, needle", [
    ({}, "missing 'prompt'"),
    ({"prompt": "a", "messages": []}, "exactly one of"),
    ({"prompt": ""}, "prompt must be a non-empty string"),
    ({"prompt": ["a"]}, "prompt must be a non-empty string"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role must be one of"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content must be a string"),
    ({"prompt": "a", "max_tokens": 0}, "max_tokens must be a positive integer"),
    ({"prompt": "a", "max_tokens": 2.5}, "max_tokens must be a positive integer"),
    ({"prompt": "a", "max_tokens": True}, "max_tokens must be a positive integer"),
    ({"prompt": "a", "temperature": -1}, "temperature must be a number from 0"),
    ({"prompt": "a", "temperature": "hot"}, "temperature must be a number from 0"),
    ({"prompt": "a", "top_p": 0}, "top_p must be a number in (0, 1]"),
    ({"prompt": "a", "top_k": -2}, "top_k must be 0 (off)"),
    ({"prompt": "a", "seed": "x"}, "seed must be an integer"),
    ({"prompt": "a", "stop": [1]}, "stop must be a string or a list of strings"),
    ({"prompt": "a", "ignore_eos": 1}, "ignore_eos must be true or false"),
    ({"prompt": "a", "id": 1.5}, "id must be a string or an integer"),
    ({"prompt": "a", "maxtokens": 3}, "unknown field 'maxtokens'"),
    (7, "expected a JSON object"),
])
def test_bad_requests_say_what_is_wrong(item, needle):
    with pytest.raises(BadRequest) as e:
        parse_item(item, DEFAULTS, 1)
    assert needle in str(e.value)


# --- the output file ----------------------------------------------------------------------------------------

def test_output_repairs_a_cut_off_last_line(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": 1, "text": "a"}\n{"id": 2, "te')
    state = scan_output(out)
    assert set(state.done) == {"1"} and "dropped" in state.repaired
    assert out.read_bytes() == b'{"id": 1, "text": "a"}\n'
    out.write_bytes(b'{"id": 1, "text": "a"}\n{"id": 2, "error": "x"}')  # complete, only the newline missing
    state = scan_output(out)
    assert state.done == {"1": False, "2": True} and out.read_bytes().endswith(b'"x"}\n')


def test_output_that_is_not_ours_is_refused(tmp_path):
    out = write_lines(tmp_path / "out.jsonl", ['{"id": 1, "text": "a"}', "hello", '{"id": 2, "text": "b"}'])
    with pytest.raises(UsageError, match="line 2 is not a result"):
        scan_output(out)


def test_appender_writes_whole_lines_and_finalize_restores_input_order(tmp_path):
    out = tmp_path / "out.jsonl"
    w = Appender(out)
    for rid in (3, "b", 1, 99):
        w.write({"id": rid, "text": f"t{rid}\nnext"} if rid != 1 else {"id": rid, "error": "bad"})
    w.close()
    assert len(out.read_text().splitlines()) == 4
    tally = finalize(out, ['1', '"b"', '3', '4'])
    assert [r["id"] for r in read_out(out)] == [1, "b", 3, 99]  # an id not in the input goes last
    assert (tally.ok, tally.errors, tally.missing, tally.reordered) == (2, 1, 1, True)
    assert finalize(out, ['1', '"b"', '3', '4']).reordered is False


def test_input_ids_must_be_unique(tmp_path):
    inp = write_lines(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b", "id": 1}])
    with pytest.raises(UsageError, match="line 2 has the id 1, like line 1"):
        scan_input(inp)
    inp = write_lines(tmp_path / "in.jsonl", [{"prompt": "a", "id": "1"}, {"prompt": "b", "id": 1}, "", "junk"])
    assert scan_input(inp) == ['"1"', "1", "4"]  # "1" and 1 differ; blank lines take no id; junk keeps its line


# --- ordering under concurrency, with a model that batches -----------------------------------------------

class EchoModel(LoadedModel):
    """A model that decodes `max_sequences` requests at once: each yields its prompt's words back, one per step,
    sleeping as long as the prompt says, so later requests often finish first."""

    format, backend = "toy", "toy"

    def __init__(self, max_seqs: int):
        super().__init__(ModelSpec(path=Path("toy"), format="toy", max_seqs=max_seqs))
        self.live = self.peak = 0
        self._lock = threading.Lock()

    device = "cpu"
    context_length = 64

    @property
    def max_sequences(self) -> int:
        return self.spec.max_seqs

    def tokenize(self, text, *, add_bos=True):
        return [len(w) for w in text.split()]

    def _generate_tokens(self, prompt_ids, params):
        with self._lock:
            self.live += 1
            self.peak = max(self.peak, self.live)
        try:
            for n in prompt_ids:
                time.sleep(0.002 * n)
                yield n, f"{n} "
        finally:
            with self._lock:
                self.live -= 1

    def chat_template_info(self):
        return TemplateSource(template=None, architecture="llama")

    def eog_token_ids(self):
        return set()

    def kernel_report(self):
        return {"kernel": "toy"}


def test_results_come_back_in_input_order_while_requests_overlap():
    model = EchoModel(max_seqs=8)
    prompts = [" ".join("x" * ((i * 7) % 11 + 1) for _ in range(4)) for i in range(40)]
    results = model.generate_batch(prompts, GenerationParams(max_tokens=8))
    assert [r.id for r in results] == list(range(40))
    assert [r.text for r in results] == [" ".join(str(len(p.split()[0])) for _ in range(4)) + " " for p in prompts]
    assert all(r.finish_reason == "length" and r.usage.completion_tokens == 4 for r in results)
    assert model.peak > 1  # they really ran at the same time
    one = EchoModel(max_seqs=1)
    one.generate_batch(prompts[:6], GenerationParams(max_tokens=8), max_concurrency=8)
    assert one.peak == 1  # a model that does not batch is never called from two threads at once


def test_generate_batch_errors_raise_or_are_returned():
    model = EchoModel(max_seqs=4)
    long = " ".join(["x"] * 70)
    with pytest.raises(UsageError, match="prompt 1: missing 'prompt'"):
        model.generate_batch(["a b", {"id": 5}])
    with pytest.raises(QuantDeployError, match=r"prompt 1 \(id 1\): the prompt takes 70 tokens but the context"):
        model.generate_batch(["a b", long, "c"])
    res = model.generate_batch(["a b", long, {"prompt": "c", "max_tokens": 64}, {"id": 5}], return_errors=True)
    assert [r.ok for r in res] == [True, False, False, False]
    assert "lower max_tokens to at most 63" in res[2].error and "missing 'prompt'" in res[3].error
    # a default max_tokens is cut to what the context holds; one per prompt is honoured
    res = model.generate_batch(["a", "a b c"], [GenerationParams(max_tokens=1), GenerationParams(max_tokens=500)])
    assert [r.usage.completion_tokens for r in res] == [1, 3]


# --- real runs on the Gemma test model -----------------------------------------------------------------------

PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Water boils at", "My favourite colour is", "Once upon a time"]


def test_generate_batch_equals_one_generation_at_a_time(gguf_model):
    params = GenerationParams(max_tokens=6, **GREEDY)
    items = PROMPTS[:3] + [[{"role": "user", "content": "Name a fruit."}]]
    res = gguf_model.generate_batch(items, params)
    for item, r in zip(items, res):
        gen = gguf_model.chat(item, params) if isinstance(item, list) else gguf_model.generate(item, params)
        assert r.text == "".join(gen) and r.finish_reason == gen.finish_reason
        assert r.usage.prompt_tokens == gen.usage.prompt_tokens and r.usage.completion_tokens == 6


@pytest.mark.slow
def test_generate_batch_on_the_gptq_fixture_batched_by_the_fast_engine(gptq_path):
    """A backend that really batches: the fast engine's scheduler decodes up to 3 of the 4 requests together."""
    import quantdeploy

    model = quantdeploy.load(str(gptq_path), engine="fast", device="cpu", max_seqs=3)
    try:
        assert model.max_sequences == 3
        params = GenerationParams(max_tokens=6, **GREEDY)
        items = PROMPTS[:3] + [[{"role": "user", "content": "Name a fruit."}]]
        res = model.generate_batch(items, params)
        steps = model.batch_stats()["steps"]
        alone = ["".join(model.chat(x, params) if isinstance(x, list) else model.generate(x, params)) for x in items]
        assert [r.text for r in res] == alone
        assert all(r.usage.completion_tokens == 6 for r in res)
        assert steps < model.batch_stats()["steps"] - steps  # together took fewer steps than one after the other
    finally:
        model.close()


def test_cli_runs_good_lines_and_reports_bad_ones(tmp_path, gguf_path):
    inp = write_lines(tmp_path / "in.jsonl", [
        {"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 12, "stop": " 9", **GREEDY},
        "{not json",
        {"messages": [{"role": "user", "content": "Say hello."}], "id": "chat", "max_tokens": 3, "metadata": [1]},
        "",
        {"prompt": "x", "max_token": 3},
        {"prompt": "hello " * 600, "id": "long"},
        {"prompt": "Once upon a time", "max_tokens": 4, "ignore_eos": True},
    ])
    out = tmp_path / "out.jsonl"
    proc = run_cli("generate", str(gguf_path), "--input", str(inp), "--output", str(out), "--ctx", "512")
    assert_clean_error(proc, "3 of 6 requests failed", "--retry-errors")
    rows = read_out(out)
    assert [r["id"] for r in rows] == [1, 2, "chat", 5, "long", 7]
    assert rows[0]["finish_reason"] == "stop" and rows[0]["text"].startswith(" 7") and " 9" not in rows[0]["text"]
    assert rows[1]["error"].startswith("line 2: not valid JSON")
    assert rows[2]["usage"]["completion_tokens"] <= 3 and rows[2]["metadata"] == [1]
    assert "unknown field 'max_token'" in rows[3]["error"]
    assert "tokens but the context window holds 512" in rows[4]["error"]
    assert rows[5]["finish_reason"] == "length" and rows[5]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4,
                                                                          "total_tokens": 9}
    assert "3 results, 3 errors" in proc.stderr and "tok/s" in proc.stderr  # the progress bar's last state

    # a rerun has nothing to do (the model is not even loaded), and still says that 3 failed
    again = run_cli("generate", "no/such-model", "--input", str(inp), "--output", str(out))
    assert_clean_error(again, "3 of 6 requests failed")
    assert "6 of 6 ids already there" in again.stderr and read_out(out) == rows

    # fix two lines, retry the errors: they take their place in input order
    lines = inp.read_text().splitlines()
    lines[1] = json.dumps({"prompt": "Water boils at", "max_tokens": 2})
    lines[4] = json.dumps({"prompt": "x", "max_tokens": 3})
    inp.write_text("\n".join(lines) + "\n")
    fixed = run_cli("generate", str(gguf_path), "--input", str(inp), "--output", str(out), "--ctx", "512",
                    "--retry-errors")
    assert_clean_error(fixed, "1 of 6 requests failed")
    rows2 = read_out(out)
    assert [r["id"] for r in rows2] == [1, 2, "chat", 5, "long", 7]
    assert "text" in rows2[1] and "text" in rows2[3] and "error" in rows2[4]
    assert rows2[0] == rows[0] and rows2[5] == rows[5]  # finished lines were not run again


def stop_midway(cmd: list[str], out: Path, at_least: int, sig: int) -> subprocess.CompletedProcess:
    """Run cmd until `out` holds `at_least` lines, then send it `sig`."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= at_least:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "finished before it could be stopped: " + proc.stderr.read()[-2000:]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, "", err)


@pytest.mark.slow
def test_resume_after_ctrl_c_and_after_a_kill(tmp_path, gguf_path, gguf_model):
    n = 12
    lines = [{"prompt": PROMPTS[i % len(PROMPTS)] + f" ({i})", "id": f"r{i}", "max_tokens": 4, **GREEDY}
             for i in range(n)]
    inp = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    # one request at a time, so the stops land between lines (a batch of them would finish together)
    cmd = [sys.executable, "-m", "quantdeploy", "generate", str(gguf_path), "--input", str(inp), "--output", str(out),
           "--max-concurrency", "1"]

    stopped = stop_midway(cmd, out, 2, signal.SIGINT)  # Ctrl-C: the work in flight stops, whole lines stay
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "run the same command again to resume" in stopped.stderr.strip().splitlines()[-1]
    after_int = out.read_bytes().count(b"\n")
    assert after_int >= 2 and out.read_bytes().endswith(b"\n")

    killed = stop_midway(cmd, out, after_int + 2, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    first = out.read_bytes()
    kept = first.count(b"\n")
    assert after_int + 2 <= kept < n and first.endswith(b"\n")
    with open(out, "ab") as f:  # as if the kill had landed inside a write
        f.write(b'{"id": "r11", "text": "half')

    done = run_cli("generate", str(gguf_path), "--input", str(inp), "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dropped a cut-off last line" in done.stderr and f"{kept} of {n} ids already there" in done.stderr
    rows = read_out(out)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(n)]  # none lost, none twice, input order
    assert out.read_bytes().startswith(first)  # the stopped runs' lines stayed as they were
    assert all(r["usage"]["completion_tokens"] >= 1 and "error" not in r for r in rows)

    # the same requests run in one go give the same results
    assert [r.to_json() for r in gguf_model.generate_batch(lines)] == rows


@pytest.mark.parametrize("args, needle", [
    ([], "--input is required"),
    (["--input", "IN"], "--output is required"),
    (["--input", "nope.jsonl", "--output", "OUT"], "no such file"),
    (["--input", "IN", "--output", "IN"], "is the --input file"),
    (["--input", "IN", "--output", "missing/out.jsonl"], "does not exist"),
    (["--input", "DUP", "--output", "OUT"], "ids must be unique"),
    (["--input", "EMPTY", "--output", "OUT"], "holds no requests"),
    (["--input", "IN", "--output", "OUT", "--top-p", "0"], "top_p must be in (0, 1]"),
    (["--input", "IN", "--output", "OUT", "--template", "nope"], "unknown template 'nope'"),
])
def test_cli_usage_errors_before_any_load(tmp_path, args, needle):
    files = {"IN": write_lines(tmp_path / "in.jsonl", [{"prompt": "a"}]),
             "DUP": write_lines(tmp_path / "dup.jsonl", [{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "x"}]),
             "EMPTY": write_lines(tmp_path / "empty.jsonl", ["", "  "]), "OUT": tmp_path / "out.jsonl"}
    argv = [str(files.get(a, a)) if a in files else a for a in args]
    argv = [str(tmp_path / a) if a.startswith(("nope.", "missing/")) else a for a in argv]
    proc = run_cli("generate", "no/such-model", *argv, timeout=60)
    assert_clean_error(proc, needle)
    assert proc.returncode == 2 and not (tmp_path / "out.jsonl").exists()
