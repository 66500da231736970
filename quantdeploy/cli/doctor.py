"""`quantdeploy doctor`: environment checks, each failure with the exact fix; exit 1 when one fails."""

from __future__ import annotations

import json
import sys
from typing import Annotated, List, Optional

import typer

from ..errors import QuantDeployError


class ChecksFailed(QuantDeployError):
    """One or more doctor checks failed (their fixes are printed above)."""


def register(app: typer.Typer) -> None:
    app.command("doctor", help="Check GPU, drivers, kernels, llama.cpp build, versions, disk and hub access; "
                "print the fix for each problem. Exit 1 when a check fails.")(doctor)


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    check: Annotated[Optional[List[str]], typer.Option(
        "--check", help="Run only this check (repeatable): torch-cuda, compute-capability, nvcc, machete-offline, "
        "llama-offload, gguf-smoke, versions, backends, disk, hub, hf-token.")] = None,
) -> None:
    from .. import doctor as doc

    results = doc.run_doctor(doc.default_probes(), only=check or None)
    if as_json:
        print(json.dumps({"checks": [c.to_dict() for c in results],
                          "ok": not any(c.status == "fail" for c in results)}, indent=2, default=str))
    else:
        sys.stdout.write(doc.render_text(results))
    sys.stdout.flush()
    failed = [c.name for c in results if c.status == "fail"]
    if failed:
        raise ChecksFailed(f"{len(failed)} check(s) failed: {', '.join(failed)} (fixes above)")
