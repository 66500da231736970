"""The local store: list / rm, pulled names as MODEL everywhere (pulled on first use), --local-dir, and the
progress a person sees on a terminal."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from conftest import REPO, assert_clean_error, run_cli
from hubserver import GGUF_REPO, HubServer, gguf_repo, synthetic_gguf

SMALL = "test-org/small-GGUF"  # synthetic Q2_K and Q8_0 only: quick, never loaded


@pytest.fixture(scope="module")
def hub(gguf_path):
    with HubServer() as h:
        h.add_repo(GGUF_REPO, gguf_repo(gguf_path))
        h.add_repo(SMALL, {"s-Q2_K.gguf": synthetic_gguf("s2", 8 << 20), "s-Q8_0.gguf": synthetic_gguf("s8", 12 << 20)})
        yield h


@pytest.fixture(autouse=True)
def _fresh(hub):
    hub.clear()


def pull_cli(hub, *args):
    return run_cli("pull", *args, "--endpoint", hub.url)


def listing() -> list[dict]:
    proc = run_cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_list_and_rm(hub, qd_home):
    empty = run_cli("list")
    assert empty.returncode == 0 and "no models pulled" in empty.stderr and empty.stdout == ""
    for tag in ("Q2_K", "Q8_0"):
        assert pull_cli(hub, f"{SMALL}:{tag}").returncode == 0
    rows = listing()
    assert [r["name"] for r in rows] == [f"{SMALL}:Q2_K", f"{SMALL}:Q8_0"]
    q8 = rows[1]
    assert q8["complete"] and q8["status"] == "ok" and q8["format"] == "gguf" and q8["quant"] == "Q8_0"
    assert q8["commit"] == hub.repos[SMALL].revisions["main"].commit
    assert q8["files"] == [{"path": "s-Q8_0.gguf", "size": 12 << 20, "lfs": True,
                            "sha256": hub.repos[SMALL].revisions["main"].files["s-Q8_0.gguf"].sha256,
                            "blob_id": hub.repos[SMALL].revisions["main"].files["s-Q8_0.gguf"].blob_id}]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", q8["pulled_at"])
    assert Path(q8["path"]).is_file()
    table = run_cli("list").stdout
    assert f"{SMALL}:Q8_0" in table and "12.6 MB" in table

    # no Q4_K_M and two variants: the bare repo name is ambiguous, and says which names exist
    assert_clean_error(run_cli("rm", SMALL), "several variants", f"{SMALL}:Q2_K", f"{SMALL}:Q8_0")
    proc = run_cli("rm", f"{SMALL}:q8_0")
    assert proc.returncode == 0 and "removed" in proc.stdout
    assert not Path(q8["dir"]).exists()
    assert [r["name"] for r in listing()] == [f"{SMALL}:Q2_K"]
    assert run_cli("rm", SMALL).returncode == 0  # now unambiguous
    assert listing() == [] and not (qd_home / "models" / "test-org").exists()
    assert_clean_error(run_cli("rm", SMALL), "no pulled model", "quantdeploy list")


def test_a_repo_id_not_yet_pulled_is_pulled_on_first_use(hub, qd_home):
    proc = run_cli("inspect", GGUF_REPO, "--json", env={"HF_ENDPOINT": hub.url})
    assert proc.returncode == 0, proc.stderr
    assert f"pulling {GGUF_REPO} from" in proc.stderr and f"{GGUF_REPO}:Q4_K_M (gguf)" in proc.stderr  # on stderr
    info = json.loads(proc.stdout)  # ... and stdout stays clean
    assert info["format"] == "gguf" and info["name"] == GGUF_REPO
    assert Path(info["path"]).name == "gemma-3-270m-Q4_K_M.gguf"
    assert [r["name"] for r in listing()] == [f"{GGUF_REPO}:Q4_K_M"]
    hub.clear()
    again = run_cli("inspect", f"{GGUF_REPO}:q4_k_m", "--json", env={"HF_ENDPOINT": hub.url})
    assert again.returncode == 0 and "pulling" not in again.stderr
    assert hub.requests == []


def test_resolve_model_api(hub, qd_home, monkeypatch):
    import quantdeploy

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    spec = quantdeploy.resolve_model(f"{SMALL}:Q2_K")
    assert spec.format == "gguf"
    assert spec.path == qd_home / "models" / "test-org" / "small-GGUF" / "Q2_K" / "s-Q2_K.gguf"
    from quantdeploy.errors import UsageError

    with pytest.raises(UsageError, match="--format gptq"):
        quantdeploy.resolve_model(f"{SMALL}:Q2_K", fmt="gptq")


def test_local_dir(hub, qd_home, tmp_path):
    target = tmp_path / "models" / "small"
    proc = pull_cli(hub, f"{SMALL}:Q2_K", "--local-dir", str(target))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(target / "s-Q2_K.gguf")
    assert (target / ".quantdeploy" / "manifest.json").is_file()
    assert listing() == []  # outside the store
    hub.clear()
    again = pull_cli(hub, f"{SMALL}:Q2_K", "--local-dir", str(target))
    assert again.returncode == 0 and hub.body_hits() == []


def test_progress_bars_on_a_terminal(hub, qd_home):
    pexpect = pytest.importorskip("pexpect")
    hub.fault("s-Q8_0.gguf", "throttle", 6 << 20, times=None)  # ~2 s, so the bars get drawn
    env = {k: v for k, v in os.environ.items() if k != "QUANTDEPLOY_DEBUG"}
    child = pexpect.spawn(sys.executable, ["-m", "quantdeploy", "pull", f"{SMALL}:Q8_0", "--endpoint", hub.url],
                          cwd=str(REPO), env=env, encoding="utf-8", timeout=120, dimensions=(40, 160))
    child.expect(r"MB/s")  # TransferSpeedColumn
    child.expect(pexpect.EOF)
    child.close()
    out = child.before
    assert child.exitstatus == 0, out
    assert "total" in out and "s-Q8_0.gguf" in out
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)  # the terminal's escape codes (cursor, colours)
    last = [line for line in plain.replace("\r", "\n").splitlines() if line.strip()][-1]
    assert last.strip().endswith("s-Q8_0.gguf") and Path(last.strip()).is_file()


def test_a_new_commit_fetches_only_what_changed(hub, qd_home):
    before = pull_cli(hub, f"{SMALL}:Q2_K")
    assert before.returncode == 0, before.stderr
    old_commit = listing()[0]["commit"]
    files = {p: f.data for p, f in hub.repos[SMALL].revisions["main"].files.items()}
    try:
        hub.add_repo(SMALL, {**files, "README.md": b"a new commit that does not touch the Q2_K file\n"})
        hub.clear()
        same = pull_cli(hub, f"{SMALL}:Q2_K")
        assert same.returncode == 0 and hub.body_hits() == []
        [entry] = listing()
        assert entry["commit"] != old_commit and entry["commit"] == hub.repos[SMALL].revisions["main"].commit

        new_bytes = synthetic_gguf("s2-v2", 8 << 20)
        hub.add_repo(SMALL, {**files, "s-Q2_K.gguf": new_bytes})
        hub.clear()
        changed = pull_cli(hub, f"{SMALL}:Q2_K")
        assert changed.returncode == 0, changed.stderr
        assert [h.path for h in hub.body_hits()] == ["s-Q2_K.gguf"]
        assert Path(changed.stdout.strip().splitlines()[-1]).read_bytes() == new_bytes
    finally:
        hub.add_repo(SMALL, files)
