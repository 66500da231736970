"""Do processes that used prompt CUDA graphs exit cleanly? (An earlier build aborted at exit, "double free or
corruption", in 5 of 28 benchmark processes with QUANTDEPLOY_PREFILL_GRAPH=1.) Runs RUNS child processes, PARALLEL
at a time; each loads MODEL on the fast engine, prompts it with prompt graphs on, decodes, returns normally.

    python benchmarks/gpu/exit_check.py MODEL_DIR [RUNS] [PARALLEL]
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
print("ok", len(eng.prefill_graphs), "prompt graphs")
"""


def one(model: str) -> tuple[int, str]:
    env = dict(os.environ, QUANTDEPLOY_PREFILL_GRAPH="1")
    p = subprocess.run([sys.executable, "-c", CHILD, model], capture_output=True, text=True, env=env)
    return p.returncode, (p.stdout + p.stderr).strip().splitlines()[-1:] or [""]


if __name__ == "__main__":
    model = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    par = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    with ThreadPoolExecutor(par) as ex:
        results = list(ex.map(one, [model] * runs))
    for rc, last in results:
        print(f"exit {rc}: {last[0][:160]}")
    bad = sum(rc != 0 for rc, _ in results)
    print(f"{runs - bad} of {runs} processes exited cleanly (exit code 0), {bad} did not")
    sys.exit(1 if bad else 0)
