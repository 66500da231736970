"""`quantdeploy pull`, `quantdeploy list`, `quantdeploy rm`: the local model store."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..errors import UsageError
from .common import FormatOpt

NameArg = Annotated[str, typer.Argument(
    help="org/repo or org/repo:TAG: a branch, tag or commit of the repo, else a variant inside it (a GGUF quant such "
         "as Q4_K_M).", show_default=False)]


def register(app: typer.Typer) -> None:
    app.command("pull", help="Download a quantized model from the Hugging Face Hub or a mirror (HF_ENDPOINT): only "
                             "the quant you ask for, resumable, sha256-verified. Prints the local path last.")(pull)
    app.command("list", help="List pulled models.")(list_models)
    app.command("rm", help="Remove a pulled model (or an unfinished pull) from the store.")(rm)


def pull(
    name: NameArg,
    fmt: FormatOpt = None,
    include: Annotated[Optional[List[str]], typer.Option(
        "--include", help="Also fetch files matching GLOB (repeatable), e.g. '*.bin' or 'README.md'.")] = None,
    exclude: Annotated[Optional[List[str]], typer.Option(
        "--exclude", help="Skip files matching GLOB (repeatable); --include wins.")] = None,
    revision: Annotated[Optional[str], typer.Option(
        "--revision", help="Branch, tag or commit, e.g. gptq-4bit-32g-actorder_True.")] = None,
    endpoint: Annotated[Optional[str], typer.Option(
        "--endpoint", help="Hub or mirror URL (default: HF_ENDPOINT, then https://huggingface.co).")] = None,
    token: Annotated[Optional[str], typer.Option(
        "--token", help="Token for gated or private repos (default: HF_TOKEN, then `hf auth login`).",
        show_default=False)] = None,
    local_dir: Annotated[Optional[Path], typer.Option(
        "--local-dir", help="Pull into this directory instead of the store.")] = None,
    list_only: Annotated[bool, typer.Option(
        "--list", help="Show the variants (GGUF quants) or the files a pull fetches, with sizes, and the branches; "
                       "download nothing.",
    )] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    from ..hub.progress import make_progress
    from ..hub.pull import PullRequest, pull as do_pull

    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint must be an http(s) URL, e.g. https://hf-mirror.com (got '{endpoint}')")
    if list_only:
        _print_listing(name, revision=revision, fmt=fmt, endpoint=endpoint, token=token)
        return
    req = PullRequest(name=name, fmt=fmt, include=list(include or []), exclude=list(exclude or []),
                      revision=revision, endpoint=endpoint, token=token, local_dir=local_dir)
    try:
        result = do_pull(req, progress=make_progress(quiet))
    except KeyboardInterrupt:
        print(f"interrupted: the partial download is kept; run `quantdeploy pull {name}` again to resume",
              file=sys.stderr)
        raise typer.Exit(130) from None
    print(result.model_path)


def _print_listing(name: str, *, revision, fmt, endpoint, token) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..hub.listing import list_repo
    from ..hub.remote import Hub
    from ..units import human_bytes
    from ..settings import get_settings

    settings = get_settings()
    listing = list_repo(Hub(endpoint or settings.hf_endpoint, token or settings.hf_token), name,
                        revision=revision, fmt=fmt)
    variants = any(o.files != [o.label] for o in listing.offers)  # GGUF quants: a tag and its files
    t = Table("variant" if variants else "file", "size", "files" if variants else "", box=None)
    for o in listing.offers:
        label = f"{o.label} (default)" if o.default else o.label
        t.add_row(label, human_bytes(o.size), ", ".join(o.files) if variants else "")
    console = Console(width=200)
    console.print(f"{listing.repo_id}@{listing.revision}: {listing.format.upper()}, commit {listing.commit[:12]}",
                  markup=False, highlight=False)
    console.print(t)
    if listing.branches:
        console.print(f"branches: {', '.join(listing.branches)} (pull one with --revision BRANCH)")


def list_models(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..hub.store import store_from_settings
    from ..units import human_bytes

    rows = [e.as_dict() for e in store_from_settings().entries()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no models pulled yet; try `quantdeploy pull org/repo:Q4_K_M`", file=sys.stderr)
        return
    t = Table("name", "format", "size", "pulled", "status", "path", box=None)
    for r in rows:
        t.add_row(r["name"], r["format"] or "", human_bytes(r["size_bytes"]), (r["pulled_at"] or "-")[:16],
                  r["status"].split(":")[0], r["path"])
    Console(width=250).print(t)


def rm(name: NameArg) -> None:
    from ..hub.store import store_from_settings
    from ..units import human_bytes

    entry = store_from_settings().remove(name)
    print(f"removed {entry.name} ({human_bytes(entry.size)}) from {entry.root}")
