"""Do processes that used prompt CUDA graphs exit cleanly? (An earlier build aborted at exit, "double free or
corruption", in 5 of 28 benchmark processes with whole prompts in graphs.) Runs RUNS child processes, PARALLEL at a
time; each loads MODEL on the fast engine, prompts it with prompt graphs, decodes, returns normally.

    python benchmarks/gpu/exit_check.py MODEL_DIR [RUNS] [PARALLEL] [--close]

--close: each child also decodes across a cache bucket and then closes the engine before it exits, as
`quantdeploy bench` does (close() drops the graphs and their shared memory pools while the process goes on).
Exits 1 when any child did not exit cleanly. (The bench's own exit aborts were torch's profiler's, which this
script does not run; see docs/troubleshooting.md.)
"""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

CHILD = """
import sys, torch
from pathlib import Path
from quantdeploy.engine.runner import FastEngine
eng = FastEngine(Path(sys.argv[1]), "cuda", torch.float16, 1024)
for n in (512, 100, 512, 20):
    out = list(eng.generate(list(range(1000, 1000 + n)), max_new=8, temperature=0.0, top_p=1.0, top_k=0, seed=0,
                            stop_ids=set()))
assert eng.prefill_graphs, "no prompt graph was captured"
if "--close" in sys.argv:
    list(eng.generate(list(range(1000, 1250)), max_new=12, temperature=0.0, top_p=1.0, top_k=0, seed=0,
                      stop_ids=set()))  # positions 250-261: across the 256 bucket
    assert len(eng.greedy_graphs) >= 2, eng.greedy_graphs
    n = len(eng.prefill_graphs)
    eng.close()
    torch.cuda.synchronize()
    print("ok", n, "prompt graphs, closed")
else:
    print("ok", len(eng.prefill_graphs), "prompt graphs")
"""


def one(model: str) -> tuple[int, str]:
    # faulthandler prints the Python stack of every thread on SIGABRT: where the heap error is found
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    p = subprocess.run([sys.executable, "-c", CHILD, model] + (["--close"] if CLOSE else []), capture_output=True,
                       text=True, env=env)
    lines = (p.stdout + p.stderr).strip().splitlines()
    return p.returncode, (lines[-1:] if p.returncode == 0 else lines[-14:]) or [""]


CLOSE = "--close" in sys.argv

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--close"]
    model = args[0]
    runs = int(args[1]) if len(args) > 1 else 12
    par = int(args[2]) if len(args) > 2 else 4
    with ThreadPoolExecutor(par) as ex:
        results = list(ex.map(one, [model] * runs))
    for rc, last in results:
        print(f"exit {rc}: " + "\n    ".join(x[:160] for x in last))
    bad = sum(rc != 0 for rc, _ in results)
    print(f"{runs - bad} of {runs} processes exited cleanly (exit code 0), {bad} did not")
    sys.exit(1 if bad else 0)
