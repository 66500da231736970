"""`quantdeploy doctor`: check that this machine can run the fast paths, and say how to fix what cannot.

probes.py gathers facts (each probe replaceable in tests); checks.py turns facts into ok / warn / fail / skip
with the exact fix.
"""

from __future__ import annotations

from ..errors import UsageError
from .checks import CHECKS, FAIL, Check
from .probes import Probes

__all__ = ["CHECKS", "Check", "Probes", "default_probes", "render_text", "run_doctor"]


def default_probes() -> Probes:
    return Probes()


def run_doctor(probes: Probes | None = None, only: list[str] | None = None) -> list[Check]:
    """Run the checks (all, or the named ones, in the documented order)."""
    probes = probes or default_probes()
    names = list(CHECKS)
    if only:
        unknown = [n for n in only if n not in CHECKS]
        if unknown:
            raise UsageError(f"unknown check '{unknown[0]}'; choose from: {', '.join(CHECKS)}")
        names = [n for n in names if n in only]
    out = []
    for name in names:
        try:
            out.append(CHECKS[name](probes))
        except Exception as e:  # a check that breaks must not hide the others
            out.append(Check(name, "warn", f"could not run this check ({type(e).__name__}: {str(e)[:200]})",
                             "rerun with QUANTDEPLOY_DEBUG=1 and report it"))
    return out


_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def render_text(checks: list[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{_MARK.get(c.status, c.status)}  {c.name.ljust(width)}  {c.summary}")
        if c.fix and c.status in ("warn", FAIL):
            lines.append(f"      {' ' * width}  fix: {c.fix}")
    n_fail = sum(c.status == FAIL for c in checks)
    n_warn = sum(c.status == "warn" for c in checks)
    lines.append(f"\n{len(checks)} checks: {n_fail} failed, {n_warn} warnings")
    return "\n".join(lines) + "\n"
