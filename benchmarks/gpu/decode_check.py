"""`make test-gpu`'s decode check: the fast engine's decode speed on this GPU against the committed record for its
GPU model (benchmarks/results/gpu/*.json). A row fails when it decodes more than 10 % below its record.

    python benchmarks/gpu/decode_check.py [--rows gptq,awq] [--models build/gpu-models]

Skips (exit 0, with one line that says why) on a machine without a CUDA GPU, or without a record for its GPU
model. Each row runs as bench_all.py ran it for the record (the same model, prompt, new tokens and repeats, in its
own process), on the 8B-shape synthetic models that synth.py writes once into --models (as run.sh does; set
VOCAB_GGUF=FILE where pip cannot fetch the tokenizer). About a minute once the models exist.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_all import Row, bench, rows  # noqa: E402  (this directory)

ROOT = HERE.parents[1]
RECORDS = ROOT / "benchmarks" / "results" / "gpu"
TOLERANCE = 0.10  # a row fails below (1 - TOLERANCE) x its recorded decode speed


class Recorded(NamedTuple):
    decode_tok_s: float
    config: dict  # the record's bench config: prompt_tokens, new_tokens, repeat, ...
    file: Path
    created: str


def cuda_gpu() -> str | None:
    """The GPU model torch sees (e.g. "NVIDIA H200"), or None."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def records_for(gpu: str, records: Path = RECORDS) -> dict[str, Recorded]:
    """Row name -> its newest recorded decode speed on this GPU model, over every record in `records`."""
    out: dict[str, Recorded] = {}
    for f in sorted(records.glob("*.json")):
        report = json.loads(f.read_text())
        gpus = (report.get("environment") or {}).get("gpus") or []
        if not gpus or gpus[0].get("name") != gpu:
            continue
        for r in report.get("results", []):
            if r.get("decode_tok_s") is None:
                continue
            rec = Recorded(float(r["decode_tok_s"]), report["config"], f, report["created"])
            if r["model"] not in out or rec.created > out[r["model"]].created:
                out[r["model"]] = rec
    return out


def recorded_gpus(records: Path = RECORDS) -> list[str]:
    names = set()
    for f in records.glob("*.json"):
        gpus = (json.loads(f.read_text()).get("environment") or {}).get("gpus") or []
        names.update(g["name"] for g in gpus[:1])
    return sorted(names)


def plan(gpu: str | None, todo: list[Row], records: Path = RECORDS) -> tuple[list[tuple[Row, Recorded]], str]:
    """The rows to measure with their records, or none and the line that says why the check is skipped."""
    if gpu is None:
        return [], "skip: no CUDA GPU here (torch sees none), so there is no decode speed to check"
    found = records_for(gpu, records)
    pairs = [(row, found[row.name]) for row in todo if row.name in found]
    if not pairs:
        where = records.relative_to(ROOT) if records.is_relative_to(ROOT) else records
        have = ", ".join(recorded_gpus(records)) or "none"
        return [], (f"skip: no record for {gpu} in {where}/ (records exist for: {have}); "
                    "make one with: bash benchmarks/gpu/run.sh")
    return pairs, ""


def verdict(name: str, measured: float | None, rec: Recorded) -> tuple[bool, str]:
    if measured is None:
        return False, f"FAIL {name}: not measured (the bench failed; its error is above)"
    ok = measured >= (1 - TOLERANCE) * rec.decode_tok_s
    change = measured / rec.decode_tok_s - 1
    line = (f"{name}: {measured:.1f} tok/s, record {rec.decode_tok_s:.1f} ({rec.file.name}, {rec.created[:10]}): "
            f"{change:+.1%}")
    return ok, ("ok   " if ok else "FAIL ") + line + ("" if ok else f", more than {TOLERANCE:.0%} below the record")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="gptq,awq", help="bench_all.py row keys to check (default: gptq,awq)")
    ap.add_argument("--models", type=Path, default=ROOT / "build" / "gpu-models", help="synth.py's output directory")
    a = ap.parse_args()
    keys = a.rows.split(",")
    todo = [r for r in rows(a.models, skip_hf=True) if r.key in keys]
    pairs, skip = plan(cuda_gpu(), todo)
    if skip:
        print(skip)
        return 0
    formats = sorted({row.path.relative_to(a.models).parts[0] for row, _ in pairs})
    synth = [sys.executable, str(HERE / "synth.py"), "--out", str(a.models)]
    synth += [x for f in formats for x in ("--only", f)]
    if os.environ.get("VOCAB_GGUF"):
        synth += ["--vocab-gguf", os.environ["VOCAB_GGUF"]]
    if subprocess.run(synth).returncode != 0:
        print("FAIL: the synthetic models could not be written (synth.py's error is above)")
        return 1
    results = []
    for row, rec in pairs:
        c = rec.config
        one = bench(row, c["prompt_tokens"], c["new_tokens"], c["repeat"])
        results.append(verdict(row.name, one["results"][0]["decode_tok_s"] if one else None, rec))
    for _, line in results:
        print(line)
    bad = sum(not ok for ok, _ in results)
    print(f"decode check: {len(results) - bad} of {len(results)} rows within {TOLERANCE:.0%} of the record")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
