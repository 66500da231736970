"""The serving section of the reports (`bench --concurrency`): one table row per model and level, and for HTML
two SVG line charts against the number of concurrent clients (aggregate output tok/s; TTFT p95)."""

from __future__ import annotations

from html import escape
from typing import Any

HEAD = ["model", "format", "clients", "requests", "failed", "output tok/s", "TTFT p50 ms", "TTFT p95 ms",
        "ITL p50 ms", "ITL p95 ms", "TPOT p50 ms"]
COLORS = ["#1a73e8", "#d93025", "#188038", "#f29900", "#9334e6", "#12b5cb", "#5f6368"]


def served(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report.get("results", []) if r.get("serving")]


def _num(v: Any, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for r in served(report):
        for lv in r["serving"]["levels"]:
            out.append([str(r.get("model")), str(r.get("format")), str(lv["concurrency"]), str(lv["requests"]),
                        str(lv["failed"]), _num(lv["output_tok_s"]), _num(lv["ttft_ms"]["p50"], ".0f"),
                        _num(lv["ttft_ms"]["p95"], ".0f"), _num(lv["itl_ms"]["p50"]), _num(lv["itl_ms"]["p95"]),
                        _num(lv["tpot_ms"]["p50"])])
    return out


def _setup(report: dict[str, Any]) -> str:
    cfg = report.get("config") or {}
    return (f"`quantdeploy serve` with --max-concurrency set to the highest level; N clients each stream "
            f"{cfg.get('requests_per_client')} completions one after the other: about {cfg.get('prompt_tokens')} "
            f"prompt tokens (no shared prefixes), {cfg.get('new_tokens')} new tokens (EOS ignored, greedy). "
            "Output tok/s: all tokens over the level's wall time; TTFT, ITL (gap between streamed chunks) and TPOT "
            "(per-request mean time per token after the first) measured at the client.")


def to_markdown(report: dict[str, Any]) -> list[str]:
    body = rows(report)
    if not body:
        return []
    out = ["", "## Serving: concurrent streaming clients", "", _setup(report), "",
           "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    for r in served(report):
        for lv in r["serving"]["levels"]:
            for e in lv.get("errors") or []:
                out.append(f"- {r.get('model')}, {lv['concurrency']} clients: {e}")
    return out


def line_chart(series: list[tuple[str, list[tuple[int, float | None]]]], title: str) -> str:
    """One polyline per series over the levels (evenly spaced, labelled with N); the y axis starts at 0."""
    levels = sorted({n for _, pts in series for n, _ in pts})
    values = [v for _, pts in series for _, v in pts if v is not None]
    if not levels or not values:
        return ""
    left, width, top, height = 60, 520, 30, 220
    y_max = max(values) * 1.1 or 1.0

    def x(n: int) -> float:
        return left + (width * levels.index(n) / (len(levels) - 1) if len(levels) > 1 else width / 2)

    def y(v: float) -> float:
        return top + height * (1 - v / y_max)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 220}" height="{top + height + 50}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="18" font-size="12">{escape(title)}</text>',
             f'<line x1="{left}" y1="{top + height}" x2="{left + width}" y2="{top + height}" stroke="#555"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + height}" stroke="#555"/>']
    tick = ".0f" if y_max >= 100 else ".1f"
    for k in range(5):
        v = y_max * k / 4
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{v:{tick}}</text>')
    for n in levels:
        parts.append(f'<text x="{x(n):.1f}" y="{top + height + 16}" font-size="10" text-anchor="middle">{n}</text>')
    parts.append(f'<text x="{left + width / 2}" y="{top + height + 34}" font-size="11" text-anchor="middle">'
                 "concurrent clients</text>")
    for i, (label, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        known = [(n, v) for n, v in pts if v is not None]
        coords = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in known)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        for n, v in known:
            parts.append(f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="3" fill="{color}"><title>{escape(label)}: '
                         f"{n} clients, {v:.1f}</title></circle>")
        ly = top + 14 + 16 * i
        parts.append(f'<rect x="{left + width + 14}" y="{ly - 9}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{left + width + 30}" y="{ly}" font-size="11">{escape(label[:30])}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def to_html(report: dict[str, Any]) -> str:
    body = rows(report)
    if not body:
        return ""
    results = served(report)

    def series(key: str, sub: str | None = None) -> list[tuple[str, list[tuple[int, float | None]]]]:
        return [(f"{r.get('model')} · {r.get('format')}",
                 [(lv["concurrency"], lv[key][sub] if sub else lv[key]) for lv in r["serving"]["levels"]])
                for r in results]

    out = ["<h2>Serving: concurrent streaming clients</h2>", f"<p>{escape(_setup(report).replace('`', ''))}</p>",
           line_chart(series("output_tok_s"), "aggregate output tokens/s"),
           line_chart(series("ttft_ms", "p95"), "time to first token, p95 (ms)"),
           "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in HEAD) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in body]
    out.append("</table>")
    errors = [f"{r.get('model')}, {lv['concurrency']} clients: {e}" for r in results for lv in r["serving"]["levels"]
              for e in lv.get("errors") or []]
    if errors:
        out.append("<ul>" + "".join(f'<li class="no">{escape(e)}</li>' for e in errors) + "</ul>")
    return "\n".join(out)
