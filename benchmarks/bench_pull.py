"""Pull benchmark: throughput against a plain `hf_hub_download`, and bytes re-fetched when a pull resumes.

    python benchmarks/bench_pull.py [--rounds 9]

Serves the embedded Gemma-3-270M Q4_K_M GGUF (253 MB) from the local Hub look-alike in tests/hubserver.py on
127.0.0.1 and measures:
  throughput  `quantdeploy pull` (API, no progress bars) vs `huggingface_hub.hf_hub_download` of the same file,
              interleaved rounds in random order against a server in its own process; medians compared
  resume      bytes the server sends after a pull is SIGKILLed / SIGINTed mid-file and run again, and after a
              connection dropped mid-file inside one pull, against the bytes that were actually missing;
              the same kill + rerun with `hf_hub_download` for contrast
Writes benchmarks/results/pull.json and pull.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
REPO = "bench/gemma-3-270m-GGUF"
RESULTS = ROOT / "benchmarks" / "results"


def _server_process(gguf: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "hubserver.py"), "--repo", f"{REPO}={gguf}"],
                            stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def _time_hf(url: str, filename: str) -> tuple[float, float]:
    """(wall seconds, client CPU seconds across all its threads)"""
    from huggingface_hub import hf_hub_download

    d = tempfile.mkdtemp(prefix="bench-hf-")
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        hf_hub_download(REPO, filename, endpoint=url, cache_dir=d)
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        shutil.rmtree(d)


def _time_ours(url: str, quant: str) -> tuple[float, float]:
    from quantdeploy.hub import PullRequest, pull
    from quantdeploy.hub.progress import Quiet

    home = tempfile.mkdtemp(prefix="bench-qd-")
    os.environ["QUANTDEPLOY_HOME"] = home
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        pull(PullRequest(name=f"{REPO}:{quant}", endpoint=url), progress=Quiet())
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        shutil.rmtree(home)


def throughput(gguf: Path, rounds: int) -> dict:
    size = gguf.stat().st_size
    proc, url = _server_process(gguf)
    try:
        _time_hf(url, gguf.name)  # warm the page cache and the connection pool for both
        _time_ours(url, "Q4_K_M")
        runs = []
        for _ in range(rounds):
            order = ["hf", "ours"]
            random.shuffle(order)
            r = {}
            for who in order:
                r[who] = _time_hf(url, gguf.name) if who == "hf" else _time_ours(url, "Q4_K_M")
            runs.append({**{k: round(size / w / 1e6, 1) for k, (w, _) in r.items()},
                         **{f"{k}_cpu_s": round(c, 3) for k, (_, c) in r.items()}})
    finally:
        proc.kill()
    hf = statistics.median(r["hf"] for r in runs)
    ours = statistics.median(r["ours"] for r in runs)
    cpu = {k: statistics.median(r[f"{k}_cpu_s"] for r in runs) for k in ("hf", "ours")}
    return {"file_bytes": size, "rounds": runs, "median_MBps": {"hf_hub_download": hf, "quantdeploy_pull": ours},
            "ratio_ours_over_hf": round(ours / hf, 3),
            "median_client_cpu_s": {"hf_hub_download": cpu["hf"], "quantdeploy_pull": cpu["ours"]}}


def _partial_size(home: Path) -> int:
    parts = list(home.rglob("*.part"))
    return parts[0].stat().st_size if parts else 0


def _hf_partial_size(cache: Path) -> int:
    parts = list(cache.rglob("*.incomplete"))
    return parts[0].stat().st_size if parts else 0


def _kill_midway(cmd: list[str], env: dict, sizer, at: int, sig: int) -> int:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while sizer() < at and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(60)
    return proc.returncode


def resume(gguf: Path) -> dict:
    from hubserver import HubServer

    size = gguf.stat().st_size
    out = {}
    with HubServer() as hub:
        hub.add_repo(REPO, {gguf.name: gguf})
        name = f"{REPO}:Q4_K_M"
        for label, sig in (("sigkill", signal.SIGKILL), ("sigint", signal.SIGINT)):
            home = Path(tempfile.mkdtemp(prefix="bench-resume-"))
            env = dict(os.environ, QUANTDEPLOY_HOME=str(home))
            hub.clear()
            hub.fault("*.gguf", "throttle", 60_000_000, times=None)  # slow enough to land the signal mid-file
            cmd = [sys.executable, "-m", "quantdeploy", "pull", name, "--endpoint", hub.url, "-q"]
            rc = _kill_midway(cmd, env, lambda: _partial_size(home), int(size * 0.4), sig)
            kept = _partial_size(home)
            hub.clear()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            sent = hub.bytes_sent("*.gguf")
            out[label] = {"exit_code_when_stopped": rc, "kept_bytes": kept, "missing_bytes": size - kept,
                          "refetched_bytes": sent, "extra_bytes": sent - (size - kept),
                          "extra_pct_of_file": round(100 * (sent - (size - kept)) / size, 3),
                          "range_start": hub.body_hits("*.gguf")[0].start}
            shutil.rmtree(home)
        # a connection dropped mid-file inside one pull: huggingface_hub's retry resumes with Range
        home = Path(tempfile.mkdtemp(prefix="bench-drop-"))
        hub.clear()
        hub.fault("*.gguf", "drop", 100_000_000)
        env = dict(os.environ, QUANTDEPLOY_HOME=str(home))
        done = subprocess.run([sys.executable, "-m", "quantdeploy", "pull", name, "--endpoint", hub.url, "-q"],
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        sent = hub.bytes_sent("*.gguf")
        out["dropped_connection"] = {"dropped_after_bytes": 100_000_000, "total_sent": sent, "extra_bytes": sent - size,
                                     "extra_pct_of_file": round(100 * (sent - size) / size, 3)}
        shutil.rmtree(home)
        # the same SIGKILL + rerun with plain hf_hub_download
        cache = Path(tempfile.mkdtemp(prefix="bench-hfkill-"))
        hub.clear()
        hub.fault("*.gguf", "throttle", 60_000_000, times=None)
        code = (f"from huggingface_hub import hf_hub_download; hf_hub_download({REPO!r}, {gguf.name!r}, "
                f"endpoint={hub.url!r}, cache_dir={str(cache)!r})")
        _kill_midway([sys.executable, "-c", code], dict(os.environ), lambda: _hf_partial_size(cache), int(size * 0.4),
                     signal.SIGKILL)
        kept = _hf_partial_size(cache)
        hub.clear()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        sent = hub.bytes_sent("*.gguf")
        out["hf_hub_download_sigkill"] = {"kept_bytes_on_disk": kept, "refetched_bytes": sent,
                                          "extra_bytes": sent - (size - kept)}
        shutil.rmtree(cache)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    from quantdeploy.testing.fixtures import gemma_gguf

    gguf = gemma_gguf()
    result = {
        "command": " ".join(["python", "benchmarks/bench_pull.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_at_start": os.getloadavg()},
        "file": gguf.name,
        "throughput": throughput(gguf, args.rounds),
        "resume": resume(gguf),
    }
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pull.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "pull.md").write_text(_markdown(result))
    print(_markdown(result))


def _markdown(r: dict) -> str:
    t, res = r["throughput"], r["resume"]
    mb = t["file_bytes"] / 1e6
    lines = [
        "# quantdeploy pull benchmark", "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']['cpus']} CPUs, {r['machine']['platform']}, Python {r['machine']['python']}; "
        f"load average {r['machine']['loadavg_at_start'][0]:.1f} at start, {r['machine']['loadavg_at_end'][0]:.1f} "
        "at end (shared machine)  ",
        f"File: {r['file']} ({mb:.1f} MB) from tests/hubserver.py on 127.0.0.1 (own process for throughput)", "",
        "## Throughput (median of interleaved rounds)", "",
        "| client | MB/s | client CPU s |", "|---|---|---|",
        f"| huggingface_hub.hf_hub_download | {t['median_MBps']['hf_hub_download']:.1f} | "
        f"{t['median_client_cpu_s']['hf_hub_download']:.2f} |",
        f"| quantdeploy pull (sha256 verified, resumable) | {t['median_MBps']['quantdeploy_pull']:.1f} | "
        f"{t['median_client_cpu_s']['quantdeploy_pull']:.2f} |",
        "", f"Ratio ours / hf_hub_download: **{t['ratio_ours_over_hf'] * 100:.1f} %**", "",
        "Client CPU s = process CPU time of the downloading process (all threads, hashing included): less sensitive "
        "than wall time to other load on a shared machine.", "",
        "Rounds (MB/s): " + "; ".join(f"hf {x['hf']}, ours {x['ours']}" for x in t["rounds"]), "",
        "## Bytes re-fetched on resume", "",
        "| case | kept on disk | missing | re-fetched | extra |", "|---|---|---|---|---|",
    ]
    for case in ("sigkill", "sigint"):
        c = res[case]
        lines.append(f"| quantdeploy pull, {case.upper()} at ~40 % then rerun | {c['kept_bytes']:,} | "
                     f"{c['missing_bytes']:,} | {c['refetched_bytes']:,} | {c['extra_bytes']:,} "
                     f"({c['extra_pct_of_file']} % of file) |")
    d = res["dropped_connection"]
    lines.append(f"| quantdeploy pull, connection dropped at 100 MB (one run) | - | - | {d['total_sent']:,} total | "
                 f"{d['extra_bytes']:,} ({d['extra_pct_of_file']} % of file) |")
    h = res["hf_hub_download_sigkill"]
    lines.append(f"| hf_hub_download, SIGKILL at ~40 % then rerun | {h['kept_bytes_on_disk']:,} (not reused) | - | "
                 f"{h['refetched_bytes']:,} | {h['extra_bytes']:,} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
