"""Formats side by side with `quantdeploy bench`, plus one deliberate fallback caught by --require-gpu.

    python benchmarks/bench_formats.py [MODEL ...] [--name NAME] [--prompt-tokens 128] [--new-tokens 64]
                                       [--repeat 3] [--no-quality] [--refresh-roofline]

Default MODELs: the embedded Gemma-3-270M Q4_K_M GGUF and the GPTQ and AWQ fixtures made from it (built on
first use, see quantdeploy/testing/fixtures.py), with --quality against the float32 reference fixture.
Writes benchmarks/results/bench-NAME.{json,md} (NAME: cpu, or gpu where a GPU is usable) and
bench-NAME-fallback.txt: a run that must fail --require-gpu (on a GPU: GPTQ forced onto the torch kernel and
GGUF with 0 offloaded layers; on a CPU: the GGUF itself), with the exit code and the error line it printed.
Each report holds the exact command that made it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def qd(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "quantdeploy", *args]
    print("$ quantdeploy " + shlex.join(args), file=sys.stderr, flush=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--name")
    ap.add_argument("--prompt-tokens", default="128")
    ap.add_argument("--new-tokens", default="64")
    ap.add_argument("--repeat", default="3")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--refresh-roofline", action="store_true", help="measure the copy bandwidth again")
    a = ap.parse_args()

    from quantdeploy.backends.hw import cuda_device_count
    from quantdeploy.testing import fixtures

    gpu = cuda_device_count() > 0
    name = a.name or ("gpu" if gpu else "cpu")
    paths = fixtures.build_all()
    models = a.models or [str(paths["gguf"]), str(paths["gptq"]), str(paths["awq"])]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = [RESULTS / f"bench-{name}.{s}" for s in ("json", "md")]
    args = ["bench", *models, "--prompt-tokens", a.prompt_tokens, "--new-tokens", a.new_tokens, "--repeat",
            a.repeat]
    if a.refresh_roofline:
        args.append("--refresh-roofline")
    if not a.no_quality:
        args += ["--quality", "--reference", str(paths["reference"])]
    for p in out:
        args += ["--output", str(p)]
    load = os.getloadavg()[0]
    r = qd(*args)
    sys.stderr.write(r.stderr[-4000:])
    if r.returncode != 0:
        print(f"bench failed with exit code {r.returncode}", file=sys.stderr)
        return r.returncode
    print(f"wrote {', '.join(str(p.relative_to(ROOT)) for p in out)} (load average at start {load:.1f})")

    demos = ([["bench", str(paths["gptq"]), "--kernel", "torch"], ["bench", str(paths["gguf"]), "--gpu-layers", "0"]]
             if gpu else [["bench", str(paths["gguf"])]])
    lines = ["# deliberate fallbacks, each must exit 3 under --require-gpu", ""]
    ok = True
    for demo in demos:
        d = demo + ["--prompt-tokens", "32", "--new-tokens", "8", "--repeat", "1", "--no-warm-load", "--require-gpu"]
        r = qd(*d)
        err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        lines += [f"$ quantdeploy {shlex.join(d)}", f"exit code: {r.returncode}", *err, ""]
        ok = ok and r.returncode == 3
    fb = RESULTS / f"bench-{name}-fallback.txt"
    fb.write_text("\n".join(lines))
    print(f"wrote {fb.relative_to(ROOT)}: " + ("every fallback caught" if ok else "a fallback was NOT caught"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
