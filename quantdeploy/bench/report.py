"""Report writers: JSON (the documented schema, docs/bench.md), a Markdown table, HTML with a chart.

The output format follows the file suffix. Files are written to a temporary name and renamed, so a failed
run never leaves half a report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .serving_report import to_markdown as serving_markdown

SUFFIXES = (".json", ".md", ".html")


def check_output_path(path: str | Path) -> Path:
    """Validate --output before anything runs: known suffix, existing parent directory."""
    p = Path(path).expanduser()
    if p.suffix.lower() not in SUFFIXES:
        raise UsageError(f"--output {p}: unknown report format '{p.suffix or '(none)'}'; "
                         f"end the name with one of: {', '.join(SUFFIXES)}")
    if p.is_dir():
        raise UsageError(f"--output {p} is a directory; give a file name ending in {', '.join(SUFFIXES)}")
    if not p.parent.is_dir():
        raise UsageError(f"--output {p}: directory {p.parent} does not exist; create it first")
    return p


def render(report: dict[str, Any], suffix: str) -> str:
    suffix = suffix.lower()
    if suffix == ".json":
        return to_json(report)
    if suffix == ".md":
        return to_markdown(report)
    if suffix == ".html":
        from .html import to_html

        return to_html(report)
    raise UsageError(f"unknown report format '{suffix}'; choose one of: {', '.join(SUFFIXES)}")


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    p = check_output_path(path)
    text = render(report, p.suffix)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {p}: {e.strerror}") from None
    return p


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str) + "\n"


def _num(v: Any, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def summary_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The side-by-side table every format shows: one row per model/format."""
    head = ["model", "format", "device", "kernel", "GPU kernels", "load cold/warm s", "TTFT ms", "prefill tok/s",
            "decode tok/s", "peak MB (host/GPU)", "GB/s", "roofline", "PPL", "KL"]
    rows = []
    for r in report.get("results", []):
        d = r.get("spread", {}).get("decode_tok_s", {})
        decode = f"{_num(r.get('decode_tok_s'))} ({_num(d.get('min'))}-{_num(d.get('max'))})" if d else \
            _num(r.get("decode_tok_s"))
        load = r.get("load_s") or {}
        peak = r.get("peak_memory_mb") or {}
        q = r.get("quality") or {}
        frac = r.get("roofline_fraction")
        rows.append([
            str(r.get("model")), str(r.get("format")), device_text(r), str(r.get("kernel")),
            "yes" if r.get("gpu_kernels_in_use") else "no",
            f"{_num(load.get('cold'), '.2f')}/{_num(load.get('warm'), '.2f')}",
            _num(r.get("ttft_ms"), ".0f"), _num(r.get("prefill_tok_s")), decode,
            f"{_num(peak.get('host'), '.0f')}/{_num(peak.get('gpu'), '.0f')}",
            _num(r.get("achieved_gbps"), ".2f"), "-" if frac is None else f"{frac:.0%}",
            _num(q.get("perplexity"), ".3f"), _num(q.get("kl_divergence"), ".4f"),
        ])
    return head, rows


def device_text(result: dict[str, Any]) -> str:
    """The device column: the device, or for a model over several GPUs its device map (layers per device)."""
    m = result.get("device_map")
    if not m:
        return str(result.get("device"))
    if m.get("layers"):
        return " + ".join(f"{d} {n}" for d, n in m["layers"].items()) + " layers"
    split = m.get("split")
    shares = "/".join(f"{v:g}" for v in split.values()) if isinstance(split, dict) else f"by {split}"
    return f"{m.get('gpus')} GPUs, {m.get('split_mode')} split {shares}"


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _load(v: list[float] | None) -> str:
    return "/".join(map(str, v)) if v else "-"


def environment_lines(report: dict[str, Any]) -> list[str]:
    env = report.get("environment") or {}
    cpu = env.get("cpu") or {}
    gpus = env.get("gpus") or []
    v = env.get("versions") or {}
    git = env.get("git") or {}
    load = env.get("load_average") or {}
    gpu = ", ".join(f"{g['name']} (sm {g['capability']}, {g['memory_gb']} GB)" for g in gpus) or "none"
    lines = [f"CPU: {cpu.get('name')} ({cpu.get('cores')} cores; {' '.join(cpu.get('flags') or []) or '-'})",
             f"GPU: {gpu}; driver {env.get('driver') or '-'}; CUDA (torch) {env.get('cuda') or '-'}; "
             f"llama.cpp GPU offload: {env.get('llama_cpp_gpu_offload')}",
             "versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
             f"python {env.get('python')} on {env.get('platform')}",
             f"load average (1/5/15 min): start {_load(load.get('start'))}, end {_load(load.get('end'))}",
             f"git: {git.get('commit', '-')}{' (dirty)' if git.get('dirty') else ''}"]
    for dev, rf in (report.get("rooflines") or {}).items():
        lines.append(f"roofline {dev}: {rf.get('gbps')} GB/s ({rf.get('method')}; measured {rf.get('measured_at')})")
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    head, rows = summary_rows(report)
    cfg = report.get("config") or {}
    out = ["# quantdeploy bench", ""]
    if report.get("command"):
        out += ["```", report["command"], "```", ""]
    out += [f"{cfg.get('prompt_tokens')} prompt tokens, {cfg.get('new_tokens')} new tokens (EOS ignored, greedy), "
            f"{cfg.get('repeat')} repeats after a warm-up; medians, decode range in brackets. "
            f"Created {report.get('created')}.", ""]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    out += serving_markdown(report)
    out += ["", "## Kernels", ""]
    for r in report.get("results", []):
        out.append(f"- **{_md_escape(str(r['model']))}** ({r['format']}): GPU kernels in use: "
                   f"**{'yes' if r['gpu_kernels_in_use'] else 'no'}**: {_md_escape(r['gpu_kernels_reason'])}")
        kmap = (r.get("kernels") or {}).get("map") or {}
        if kmap:
            out.append("  - layers: " + ", ".join(f"{k}: {v}" for k, v in kmap.items()))
        if (r.get("kernels") or {}).get("kernel_reason"):
            out.append(f"  - kernel {_md_escape(str(r.get('kernel')))}: {_md_escape(r['kernels']['kernel_reason'])}")
        if (r.get("kernels") or {}).get("gemv_tuning"):
            out.append(f"  - GEMV tuning: {_md_escape(r['kernels']['gemv_tuning'])}")
        prof = (r.get("kernels") or {}).get("profile") or {}
        if prof.get("error"):
            out.append(f"  - profiler: {prof['error']}")
        elif prof:
            out.append(f"  - profiler: {prof.get('quant_gemm_share', 0):.0%} of decode GPU time in quantized GEMM "
                       f"kernels: {', '.join(prof.get('quant_ops') or prof.get('quant_kernels') or ['none'])}")
        for f in r.get("fallbacks") or []:
            out.append(f"  - fallback `{f['id']}`: {_md_escape(f['message'])}. Fix: {_md_escape(f['fix'])}")
        q = r.get("quality") or {}
        if q.get("note") or q.get("error"):
            out.append(f"  - quality: {_md_escape(q.get('error') or q['note'])}")
    req = report.get("requirements") or {}
    if req.get("require_gpu") or req.get("require_kernel") or req.get("failures"):
        out += ["", "## Requirements", "",
                "satisfied" if req.get("satisfied") else "NOT satisfied:"]
        out += [f"- {_md_escape(f)}" for f in req.get("failures") or []]
    out += ["", "## Environment", ""] + [f"- {_md_escape(line)}" for line in environment_lines(report)]
    return "\n".join(out) + "\n"
