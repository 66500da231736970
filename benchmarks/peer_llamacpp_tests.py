"""Run llama.cpp's own server test suite against `quantdeploy serve`.

    python3 benchmarks/peer_llamacpp_tests.py [--files test_chat_completion.py,...] [--model MODEL] [-k EXPR]

llama-cpp-python 0.3.36's source distribution vendors llama.cpp, tests included. This script fetches it from PyPI
(`pip download --no-binary :all: --no-deps llama-cpp-python==0.3.36`, cached under
~/.cache/quantdeploy/peer-tests), and runs the chosen files of vendor/llama.cpp/tools/server/tests/unit with
their bodies unchanged. Only the harness is adapted, by a pytest plugin this script writes next to them:

- `utils.ServerProcess.start` starts `python -m quantdeploy serve` with the options that have an equivalent
  (`--alias` -> `--name`, `--ctx-size` -> `--ctx`, `--parallel` -> `--max-concurrency`, `--api-key`,
  `--cors-origins` -> `--cors-origin`, built-in `--chat-template` names, `--chat-template-file` -> `--template`,
  with the suite's own template files: Llama 3.x, Qwen, Mistral, ...) and `--alias '*'`, since llama-server
  answers to any model id. Its other options (default temperature, seed and n_predict, `--jinja`, slots, LoRA,
  speculative decoding, embeddings, ...) have no equivalent and are dropped;
- `ServerPreset.load_all` downloads nothing: every preset serves MODEL (default: the default model), as
  the suite's own models (stories260K, ...) come from Hugging Face, which this setup does not reach;
- `wget` (used only for downloads) is stubbed, and each request's path is recorded so that the report can tell
  the tests of the OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models, with or without
  /v1, as llama-server routes them) from those of llama.cpp's own endpoints (/completion, /completions, /props,
  /slots, /tokenize, /infill, ...).

Results (pass/fail per test, the endpoints it used, the first line of each failure, and the reason class) go to
benchmarks/results/llamacpp_server_tests.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.3.36"
DEFAULT_FILES = "test_chat_completion.py,test_completion.py,test_tool_call.py,test_security.py"
# llama-server's OpenAI-compatible routes: /v1/..., and /chat/completions and /models without /v1 (its /completion
# and /completions are its own completion API, with another request and response shape)
OPENAI_PATHS = re.compile(r"^(/v1/(chat/completions|completions|models)|/chat/completions|/models)(/[^?]*)?$")

PLUGIN = r'''
"""quantdeploy's adapter of llama.cpp's server test harness (written by benchmarks/peer_llamacpp_tests.py)."""
import json, os, subprocess, sys, time, types, urllib.request

sys.modules.setdefault("wget", types.ModuleType("wget"))
import pytest
import utils

MODEL = os.environ.get("QD_PEER_MODEL") or None
TEMPLATES = {"chatml", "llama3", "gemma", "mistral"}
PATHS = []


def start(self, timeout_seconds=300):
    args = [sys.executable, "-m", "quantdeploy", "serve"] + ([MODEL] if MODEL else []) + [
        "--host", self.server_host, "--port", str(self.server_port), "--alias", "*", "--log-level", "warning"]
    if self.model_alias:
        args += ["--name", self.model_alias]
    if self.n_ctx:
        args += ["--ctx", str(self.n_ctx)]
    if self.api_key:
        args += ["--api-key", self.api_key]
    if self.n_slots:
        args += ["--max-concurrency", str(self.n_slots)]
    for origin in (self.cors_origins or "").split(","):
        if origin.strip():
            args += ["--cors-origin", origin.strip()]
    if self.chat_template in TEMPLATES:
        args += ["--template", self.chat_template]
    if self.chat_template_file:
        args += ["--template", os.path.abspath(self.chat_template_file)]
    self._log = open(os.environ["QD_PEER_LOG"], "a")
    self.process = subprocess.Popen(args, stdout=self._log, stderr=self._log, cwd=os.environ["QD_REPO"])
    utils.server_instances.add(self)
    deadline = time.time() + timeout_seconds
    while time.time() < deadline:
        if self.process.poll() is not None:
            raise RuntimeError(f"quantdeploy serve exited with {self.process.returncode}")
        try:
            with urllib.request.urlopen(self.make_url("/health"), timeout=5) as r:
                if r.status == 200:
                    self.ready = True
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("quantdeploy serve did not become ready")


_request, _stream = utils.ServerProcess.make_request, utils.ServerProcess.make_stream_request


def make_request(self, method, path, *a, **kw):
    PATHS.append(path)
    return _request(self, method, path, *a, **kw)


def make_stream_request(self, method, path, *a, **kw):
    PATHS.append(path)
    return _stream(self, method, path, *a, **kw)


utils.ServerProcess.start = start
utils.ServerProcess.make_request = make_request
utils.ServerProcess.make_stream_request = make_stream_request
utils.ServerPreset.load_all = staticmethod(lambda: None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    PATHS.clear()
    yield
    item.user_properties.append(("paths", json.dumps(sorted(set(PATHS)))))
'''

# the failing line (and pytest's explanation) -> why; the first match wins
REASONS = [
    (r"system_fingerprint", "`system_fingerprint` is `fp_...` (OpenAI's form); the test wants llama.cpp's build "
                            "`b...`"),
    (r'\["content"\] is None|Expected non empty content delta',
     "a stream's first chunk carries `content: \"\"` with the role, as OpenAI's does; llama.cpp sends null"),
    (r"__verbose", "`__verbose`: llama.cpp's debug echo of the request"),
    (r"timings", "`timings`: llama.cpp's per-request timer object"),
    (r"exceed_context_size_error", "context overflow is OpenAI's `invalid_request_error` / "
                                   "`context_length_exceeded`, not llama.cpp's `exceed_context_size_error`"),
    (r"authentication_error", "a bad key is OpenAI's 401 `invalid_request_error` / `invalid_api_key`, not "
                              "llama.cpp's `authentication_error`"),
    (r"cached_tokens|prompt_tokens_details", "no `prompt_tokens_details.cached_tokens`"),
    (r"last_progress|return_progress", "`return_progress`: llama.cpp's prompt-progress events"),
    (r"prompt_tokens|completion_tokens|n_prompt|n_predicted", "token counts differ: another model and tokenizer"),
    (r"match_regex|Expected .*, got", "generated text differs: another model (the suite's is stories260K)"),
    (r"assert 405 == 200", "CORS preflight: no origin is allowed unless named (--cors-origin); llama-server "
                           "allows all"),
    (r"assert 404 == 200", "a llama.cpp-only endpoint (404)"),
    (r"assert 400 == 200", "a request the server refuses (image content, or a field with no equivalent)"),
    (r"assert 200 == 400|200 == 400 or 200 == 500", "accepted where llama.cpp refuses (its template or its "
                                                    "option checks)"),
    (r"RuntimeError: quantdeploy serve exited", "the server refused an option"),
]


def fetch(cache: Path) -> Path:
    tests = cache / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp" / "tools" / "server" / "tests"
    if tests.is_dir():
        return tests
    cache.mkdir(parents=True, exist_ok=True)
    if not any(cache.glob(f"llama_cpp_python-{VERSION}.tar.gz")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={VERSION}", "-d", str(cache)], check=True)
    with tarfile.open(next(cache.glob(f"llama_cpp_python-{VERSION}.tar.gz"))) as tar:
        members = [m for m in tar.getmembers() if "/tools/server/tests/" in m.name or "/models/templates/" in m.name]
        tar.extractall(cache, members=members, filter="data")
    return tests


def failure_line(fail) -> str:
    """The failing line of the test or harness and pytest's first explanation of it."""
    lines = (fail.text or "").splitlines()
    where = [line[1:].strip() for line in lines if line.startswith(">")]
    why = [line[1:].strip() for line in lines if line.startswith("E ")]
    parts = [where[-1] if where else "", why[0] if why else (fail.get("message") or "")]
    return " — ".join(p for p in parts if p)[:300]


def reason(message: str) -> str:
    for pattern, why in REASONS:
        if re.search(pattern, message):
            return why
    return "other: " + message[:120]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", default=DEFAULT_FILES)
    ap.add_argument("--model", default=None, help="what to serve (default: the default model, SmolLM2-135M)")
    ap.add_argument("-k", default=None, help="pytest -k expression")
    ap.add_argument("-m", default="not slow", help="pytest -m expression (default: not slow; the slow tests download "
                                                   "real models from Hugging Face)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from the last run's results")
    args = ap.parse_args()
    tests = fetch(Path.home() / ".cache" / "quantdeploy" / "peer-tests")
    (tests / "qd_harness.py").write_text(PLUGIN)
    junit = tests / "qd-results.xml"
    log = tests / "qd-serve.log"
    if not args.report_only:
        run(tests, junit, log, args)
    write(parse(junit), args, Path(args.out))


def run(tests: Path, junit: Path, log: Path, args) -> None:
    log.write_text("")
    env = dict(os.environ, QD_REPO=str(ROOT), QD_PEER_LOG=str(log), QD_PEER_MODEL=args.model or "",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(tests)]), PORT=os.environ.get("PORT", "18080"))
    cmd = [sys.executable, "-m", "pytest", "-p", "qd_harness", "-q", "-rN", "--junitxml", str(junit),
           "-o", "junit_logging=no", "-p", "no:cacheprovider",
           *[f"unit/{f}" for f in args.files.split(",")], *(["-k", args.k] if args.k else []),
           *(["-m", args.m] if args.m else [])]
    subprocess.run(cmd, cwd=tests, env=env)


def parse(junit: Path) -> list[dict]:
    results = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        paths = json.loads(props.get("paths", "[]"))
        fail = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped") is not None
        message = failure_line(fail) if fail is not None else ""
        results.append({"test": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}",
                        "outcome": "skipped" if skipped else ("failed" if fail is not None else "passed"),
                        "openai": bool(paths) and all(OPENAI_PATHS.match(p.split("?")[0]) for p in paths),
                        "paths": paths, "message": message, "reason": reason(message) if fail is not None else ""})
    return results


def write(results: list[dict], args, out: Path) -> None:
    def count(rows):
        c = Counter(r["outcome"] for r in rows)
        return f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped (of {len(rows)})"

    oai = [r for r in results if r["openai"]]
    native = [r for r in results if not r["openai"]]
    why = Counter(r["reason"] for r in oai if r["outcome"] == "failed")
    command = "python3 benchmarks/peer_llamacpp_tests.py " + " ".join(sys.argv[1:])
    lines = [f"# llama.cpp's server tests against `quantdeploy serve` (llama-cpp-python {VERSION}'s llama.cpp)", "",
             f"`{command}` — files: {args.files}; model: "
             f"{args.model or 'the default model (SmolLM2-135M-Instruct)'}.", "",
             f"- OpenAI-compatible tests (every request to /v1/chat/completions, /v1/completions, /v1/models, "
             f"/chat/completions or /models): **{count(oai)}**",
             f"- tests of llama.cpp's own endpoints and options: {count(native)}", "",
             "Why the OpenAI-compatible ones fail:", "", "| reason | tests |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in why.most_common()]
    lines += ["", "| test | outcome | endpoints | first line of the failure |", "|---|---|---|---|"]
    for r in sorted(oai, key=lambda r: (r["outcome"], r["test"])):
        msg = r["message"].replace("|", "\\|")[:160]
        lines.append(f"| {r['test']} | {r['outcome']} | {', '.join(r['paths'])} | {msg} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "llamacpp_server_tests.json").write_text(json.dumps({"command": command, "results": results}, indent=1)
                                                    + "\n")
    (out / "llamacpp_server_tests.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12 + len(why)]))


if __name__ == "__main__":
    main()
