"""Tokens/s seen in `quantdeploy chat` against the backend's raw generation on the same prompt.

    python3 benchmarks/bench_chat.py [MODEL] [--format F] [--tokens 64] [--rounds 15]

Raw: the loaded model's `generate()` on the chat-rendered prompt, consumed in-process (nothing printed).
Chat: the real REPL (`python3 -m quantdeploy chat MODEL --verbose`) in a pseudo-terminal, timed from outside: from
the first token (the moment the line was sent plus the TTFT the REPL reports) to the arrival of the last reply
byte on the terminal, over the reply's token count; the REPL's own decode rate is recorded beside it. Rounds alternate
raw / chat so that load from other processes hits both alike. Other processes can only slow a round down, so
the headline compares the best round of each (goal: chat >= 95 % of raw); the medians and the median of
back-to-back pairs are recorded too. Results go to benchmarks/results/chat_<format>.json and .md, with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MESSAGE = "Write a long story about a lighthouse keeper."
_STATS = re.compile(r"\[(\d+) prompt \+ (\d+) reply tokens · TTFT (\d+) ms · ([\d.]+) tok/s · finish (\w+)\]")


def raw_round(model, prompt_ids: list[int], n: int) -> dict:
    from quantdeploy import GenerationParams

    gen = model.generate(prompt_ids, GenerationParams(max_tokens=n, temperature=0.0, ignore_eos=True))
    for _ in gen:
        pass
    u = gen.usage
    return {"tokens": u.completion_tokens, "ttft_ms": round(u.ttft_s * 1000, 1), "tok_s": round(u.decode_tok_s, 2)}


class ChatProcess:
    def __init__(self, model: str | None, fmt: str | None, device: str, n: int, home: Path):
        import pexpect

        args = ["-m", "quantdeploy", "chat", *([model] if model else []), *(["--format", fmt] if fmt else []),
                "--device", device, "--temperature", "0", "--max-tokens", str(n), "--verbose"]
        env = dict(os.environ, QUANTDEPLOY_HOME=str(home), TERM="xterm")
        self.p = pexpect.spawn(sys.executable, args, encoding="utf-8", timeout=900, env=env, cwd=str(ROOT),
                               dimensions=(50, 4000))
        self.p.expect_exact(">>> ")

    def round(self) -> dict:
        import pexpect

        self.p.sendline("/reset")
        self.p.expect_exact(">>> ")
        sent = time.perf_counter()
        self.p.sendline(MESSAGE)
        self.p.expect_exact(MESSAGE + "\r\n")
        buf, first, last = "", None, None
        while ">>> " not in buf:
            try:
                chunk = self.p.read_nonblocking(65536, timeout=900)
            except pexpect.TIMEOUT:
                raise SystemExit("the chat did not answer within 15 minutes")
            now = time.perf_counter()
            if first is None and chunk.strip():
                first = now
            buf += chunk
            if last is None and "[" in chunk and _STATS.search(buf):
                last = now  # the stats line is written right after the last reply token
        m = _STATS.search(buf)
        if not m or first is None:
            raise SystemExit(f"unexpected chat output: {buf[-500:]!r}")
        n, ttft = int(m[2]), int(m[3]) / 1000
        # The first token's time is the send time plus the REPL's TTFT: the first byte on the terminal comes a few
        # tokens later (text that could start a stop string is held back), which would flatter the rate.
        t0 = sent + ttft
        seen = (n - 1) / (last - t0) if last and last > t0 and n > 1 else 0.0
        return {"tokens": n, "ttft_ms": int(m[3]), "tok_s_repl": float(m[4]), "tok_s": round(seen, 2),
                "first_byte_ms": round((first - sent) * 1000, 1), "finish": m[5]}

    def close(self) -> None:
        self.p.sendline("/bye")
        self.p.expect(__import__("pexpect").EOF)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default=None, help="model path or name (default: the default model)")
    ap.add_argument("--format", dest="fmt", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tokens", type=int, default=64, help="reply tokens per round")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("-o", "--out", type=Path, default=None, help="result file stem (default results/chat_<fmt>)")
    args = ap.parse_args()

    import tempfile

    import quantdeploy
    from quantdeploy.settings import prepare_process_env

    prepare_process_env()
    model = quantdeploy.load(args.model, fmt=args.fmt, device=args.device)
    prompt_ids = model.tokenize(model.render_chat([{"role": "user", "content": MESSAGE}]), add_bos=False)
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as home:
        chat = ChatProcess(args.model, args.fmt, args.device, args.tokens, Path(home))
        raw_round(model, prompt_ids, 8)  # warm-up both
        chat.round()
        raws, chats = [], []
        for i in range(args.rounds):
            if i % 2 == 0:  # alternate which goes first, so a drift in machine load favours neither
                c = chat.round()
                r = raw_round(model, prompt_ids, c["tokens"])  # the same number of tokens the chat produced
            else:
                r = raw_round(model, prompt_ids, args.tokens)
                c = chat.round()
            chats.append(c)
            raws.append(r)
            print(f"round {i + 1}: raw {r['tok_s']:.1f} tok/s · chat {c['tok_s']:.1f} tok/s seen "
                  f"({c['tok_s_repl']:.1f} inside the REPL) · {c['tokens']} tokens", file=sys.stderr)
        chat.close()
    load.append(os.getloadavg()[0])
    raw_med = statistics.median(r["tok_s"] for r in raws)
    chat_med = statistics.median(c["tok_s"] for c in chats)
    raw_best = max(r["tok_s"] for r in raws)
    chat_best = max(c["tok_s"] for c in chats)
    pair_med = statistics.median(c["tok_s"] / r["tok_s"] for c, r in zip(chats, raws) if r["tok_s"])
    result = {
        "command": "python3 benchmarks/" + " ".join(shlex.quote(a) for a in [Path(__file__).name, *sys.argv[1:]]),
        "model": model.spec.display_name, "format": model.format, "device": model.device,
        "kernel": model.kernel_report().get("kernel"), "cpu_count": os.cpu_count(),
        "load_average_1m": load, "tokens": args.tokens, "rounds": args.rounds,
        "raw_tok_s_best": raw_best, "chat_tok_s_best": chat_best,
        "chat_over_raw_best": round(chat_best / raw_best, 3) if raw_best else None,
        "raw_tok_s_median": round(raw_med, 2), "chat_tok_s_median": round(chat_med, 2),
        "chat_over_raw_median": round(chat_med / raw_med, 3) if raw_med else None,
        "chat_over_raw_paired_median": round(pair_med, 3),
        "raw": raws, "chat": chats,
    }
    model.close()
    stem = args.out or ROOT / "benchmarks" / "results" / f"chat_{result['format']}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(f"{stem}.md").write_text(
        f"# chat vs raw generation: {result['model']} ({result['format']}, {result['kernel']} on "
        f"{result['device']})\n\n`{result['command']}`\n\n"
        f"| | best decode tok/s | median | every round |\n|---|---|---|---|\n"
        f"| raw `generate()` | {raw_best:.2f} | {raw_med:.2f} | {', '.join(str(r['tok_s']) for r in raws)} |\n"
        f"| `quantdeploy chat` (seen on the terminal) | {chat_best:.2f} | {chat_med:.2f} | "
        f"{', '.join(str(c['tok_s']) for c in chats)} |\n\n"
        f"chat / raw = **{result['chat_over_raw_best']:.1%}** for the best rounds (goal >= 95 %); "
        f"{result['chat_over_raw_median']:.1%} of the medians and {pair_med:.1%} as the median of back-to-back "
        f"pairs, which the load of other processes blurs. {args.tokens} reply tokens per round; "
        f"{os.cpu_count()} CPU cores, 1-minute load average {load[0]:.1f} before and {load[1]:.1f} after "
        "(other processes share this machine).\n")
    print(json.dumps({k: result[k] for k in ("raw_tok_s_best", "chat_tok_s_best", "chat_over_raw_best",
                                           "chat_over_raw_median", "chat_over_raw_paired_median")}))


if __name__ == "__main__":
    main()
