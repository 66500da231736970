"""Where one decode step's time goes, kernel by kernel, inside the captured CUDA graph of the 8B step.

Under PDL the kernels overlap, so their durations add up to more than the step (graph_check.py prints those). Here
each kernel is charged its *marginal* time: its end minus the end of the kernel before it. The marginal times of a
step add up to the step, and a quantized GEMV's weight bytes over its marginal time say how close to the memory
roofline that part of the step runs.

    python benchmarks/gpu/step_timeline.py MODEL_DIR [--variants '{"down": [8, 1, 14]}' ...] [--steps 20] [--pos 16]

Each --variants (JSON: role -> (R, U, S)) is applied on top of the engine's variants (this GPU's tuned file, as the
CLI runs it) and gets its own table. The same graph's step time can differ by ~40 us depending on
what ran before (the first table of a process can read faster than the rest; docs/engine.md), so with variants every
setting is timed twice, the second pass in reverse order, and both times are printed at the end.
"""
import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from graph_ab import linears  # this directory: the same way to reach each layer's GEMV

from quantdeploy.engine.runner import FastEngine
from quantdeploy.settings import get_settings

ROLES = ("qkv", "o", "gate_up", "down")


def kernels_of(prof) -> list[tuple[float, float, str]]:
    """(start µs, end µs, name) of every GPU kernel the profiler saw, in start order."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.loads(Path(f.name).read_text())
    ks = [(e["ts"], e["ts"] + e["dur"], e["name"]) for e in trace["traceEvents"]
          if e.get("cat") == "kernel" and e.get("ph") == "X"]
    return sorted(ks)


def short(name: str) -> str:
    name = name.removeprefix("void ")
    return name.split("(")[0] if name.startswith("qd_") else name.split("<")[0].split("(")[0][:40]


def table(ks, steps: int, gemv_bytes: list[int]) -> None:
    per = len(ks) // steps
    assert per * steps == len(ks), (len(ks), steps)
    marg, dur, calls = defaultdict(float), defaultdict(float), defaultdict(int)
    spans = []
    for s in range(steps):
        step = ks[s * per:(s + 1) * per]
        spans.append(max(e for _, e, _ in step) - step[0][0])
        gemv = 0
        last_end = step[0][0]
        for start, end, name in step:
            n = short(name)
            if n.startswith("qd_w4a16"):  # the layer's GEMVs in order: qkv, o, gate|up, down
                label = f"{ROLES[gemv % 4]:7s} {n}"
                gemv += 1
            else:
                label = f"{'':7s} {n}"
            marg[label] += max(end, last_end) - last_end
            dur[label] += end - start
            calls[label] += 1
            last_end = max(end, last_end)
    span = sum(spans) / steps
    print(f"  {per} kernels per step, first start to last end {span:.1f} us (mean of {steps} replays)")
    print(f"  {'kernel':58s} {'per step':>8s} {'dur/call':>9s} {'marginal/call':>13s} {'marginal/step':>13s}  GB/s")
    for label in sorted(marg, key=lambda k: -marg[k]):
        c = calls[label] / steps
        m = marg[label] / calls[label]
        gbs = ""
        role = label[:7].strip()
        if role in ROLES and m > 0:
            gbs = f"{gemv_bytes[ROLES.index(role)] / m / 1e3:6.0f}"
        print(f"  {label[:58]:58s} {c:8.0f} {dur[label] / calls[label]:8.2f}u {m:12.2f}u "
              f"{marg[label] / steps:12.1f}u  {gbs}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--variants", action="append", default=[])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--pos", type=int, default=16, help="the step's position (a prompt of that many tokens first)")
    a = ap.parse_args()
    eng = FastEngine(a.model, "cuda", torch.float16, 1024, gemv="cuda", config=get_settings().engine)
    tok, pos = torch.tensor([42], device="cuda"), torch.tensor([a.pos], device="cuda")
    base = {role: linears(eng, role)[0].variant for role in ROLES}
    nbytes = [linears(eng, role)[0].w.nbytes() for role in ROLES]
    print(torch.cuda.get_device_name(), "engine variants", base, "weight MB", [round(b / 1e6, 1) for b in nbytes])
    with torch.inference_mode():
        eng.prefill([1000 + i % 5000 for i in range(a.pos)])
        specs = ["{}"] + a.variants
        order = specs + specs[::-1] if len(specs) > 1 else specs  # a second pass, reversed: see the docstring
        times = {spec: [] for spec in specs}
        for n, spec in enumerate(order):
            change = {k: tuple(v) for k, v in json.loads(spec).items() if k in ROLES}
            for role, v in {**base, **change}.items():
                for lin in linears(eng, role):
                    lin.use(v)
            eng.close()
            eng.step(tok, pos, a.pos)
            g, _ = eng.graphs[eng.bucket(a.pos)]
            for _ in range(100):
                g.replay()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(300):
                g.replay()
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t) / 300
            times[spec].append(dt)
            if n >= len(specs):
                continue
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(a.steps):
                    g.replay()
                torch.cuda.synchronize()
            used = {role: linears(eng, role)[0].variant for role in ROLES}
            print(f"\n{spec}: variants {used}, position {a.pos}: {dt * 1e3:.3f} ms per replay unprofiled")
            table(kernels_of(prof), a.steps, nbytes)
        if len(specs) > 1:
            print("\nms per replay unprofiled, first pass / second pass (reversed order):")
            for spec in specs:
                print(f"  {spec}: " + " / ".join(f"{t * 1e3:.3f}" for t in times[spec]))


if __name__ == "__main__":
    main()
