"""`quantdeploy hub` — not built yet (see the issue tracker)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
