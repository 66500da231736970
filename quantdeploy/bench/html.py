"""A self-contained HTML report: the summary table and an SVG chart of achieved bandwidth against each
device's roofline (no scripts, no network: it opens anywhere, CI artifacts included)."""

from __future__ import annotations

from html import escape
from typing import Any

from .report import environment_lines, summary_rows
from .serving_report import to_html as serving_html

_CSS = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
th{background:#f3f3f3}.no{color:#b00020;font-weight:600}.yes{color:#137333;font-weight:600}
code,pre{background:#f6f6f6;padding:2px 4px}ul{line-height:1.5}"""


def chart(results: list[dict[str, Any]]) -> str:
    """Horizontal bars: achieved GB/s per result; a dashed mark at its device's roofline."""
    if not results:
        return ""
    label_w, bar_w, row_h, top = 260, 520, 34, 30
    scale_max = max([r.get("achieved_gbps") or 0 for r in results] + [r.get("roofline_gbps") or 0 for r in results])
    scale_max = scale_max * 1.08 or 1.0
    height = top + row_h * len(results) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 200}" height="{height}" '
             'role="img" aria-label="achieved bandwidth vs roofline">',
             f'<text x="{label_w}" y="18" font-size="12">achieved GB/s (bar) vs device roofline (dashed)</text>']
    for i, r in enumerate(results):
        y = top + i * row_h
        got = r.get("achieved_gbps") or 0.0
        roof = r.get("roofline_gbps")
        w = bar_w * got / scale_max
        color = "#1a73e8" if r.get("gpu_kernels_in_use") else "#9aa0a6"
        label = f"{r.get('model')} · {r.get('format')} · {r.get('device')}"
        parts.append(f'<text x="{label_w - 8}" y="{y + 18}" font-size="12" text-anchor="end">'
                     f'{escape(label[:42])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 6}" width="{w:.1f}" height="18" fill="{color}"/>')
        frac = r.get("roofline_fraction")
        note = f"{got:.1f} GB/s · {r.get('decode_tok_s') or 0:.1f} tok/s" + (f" · {frac:.0%}" if frac is not None
                                                                                 else "")
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 19}" font-size="11">{escape(note)}</text>')
        if roof:
            x = label_w + bar_w * roof / scale_max
            parts.append(f'<line x1="{x:.1f}" y1="{y + 2}" x2="{x:.1f}" y2="{y + 28}" stroke="#d93025" '
                         f'stroke-width="2" stroke-dasharray="4,3"><title>roofline {roof} GB/s</title></line>')
    axis_y = top + row_h * len(results) + 6
    parts.append(f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + bar_w}" y2="{axis_y}" stroke="#555"/>')
    for k in range(5):
        v = scale_max * k / 4
        x = label_w + bar_w * k / 4
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 16}" font-size="10" text-anchor="middle">{v:.0f}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def to_html(report: dict[str, Any]) -> str:
    head, rows = summary_rows(report)
    results = report.get("results", [])
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8"><title>quantdeploy bench</title>',
           f"<style>{_CSS}</style></head><body>", "<h1>quantdeploy bench</h1>"]
    if report.get("command"):
        out.append(f"<pre>{escape(report['command'])}</pre>")
    cfg = report.get("config") or {}
    out.append(f"<p>{cfg.get('prompt_tokens')} prompt tokens, {cfg.get('new_tokens')} new tokens (EOS ignored, "
               f"greedy), {cfg.get('repeat')} repeats after a warm-up; medians. "
               f"Created {escape(str(report.get('created')))}.</p>")
    out.append(chart(results))
    out.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>")
    gpu_col = head.index("GPU kernels")
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            cls = f' class="{c}"' if i == gpu_col else ""
            cells.append(f"<td{cls}>{escape(c)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    out.append(serving_html(report))
    out.append("<h2>Kernels</h2><ul>")
    for r in results:
        yes = r.get("gpu_kernels_in_use")
        items = [f"<b>{escape(str(r.get('model')))}</b> ({escape(str(r.get('format')))}): GPU kernels in use: "
                 f"<span class=\"{'yes' if yes else 'no'}\">{'yes' if yes else 'no'}</span>: "
                 f"{escape(str(r.get('gpu_kernels_reason')))}"]
        kmap = (r.get("kernels") or {}).get("map") or {}
        sub = []
        if kmap:
            sub.append("layers: " + escape(", ".join(f"{k}: {v}" for k, v in kmap.items())))
        for f in r.get("fallbacks") or []:
            sub.append(f"fallback <code>{escape(f['id'])}</code>: {escape(f['message'])}. "
                       f"<b>Fix:</b> {escape(f['fix'])}")
        if sub:
            items.append("<ul>" + "".join(f"<li>{s}</li>" for s in sub) + "</ul>")
        out.append("<li>" + "".join(items) + "</li>")
    out.append("</ul>")
    req = report.get("requirements") or {}
    if req.get("require_gpu") or req.get("require_kernel") or req.get("failures"):
        out.append("<h2>Requirements</h2>")
        out.append("<p class=\"yes\">satisfied</p>" if req.get("satisfied") else
                   "<ul>" + "".join(f"<li class=\"no\">{escape(f)}</li>" for f in req.get("failures") or []) + "</ul>")
    out.append("<h2>Environment</h2><ul>" + "".join(f"<li>{escape(x)}</li>" for x in environment_lines(report))
               + "</ul></body></html>")
    return "\n".join(out) + "\n"
