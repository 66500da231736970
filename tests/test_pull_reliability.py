"""Reliability: resume after a dropped / reset connection, after Ctrl-C and after kill -9; 5xx retried; corrupted
bytes refused; disk space checked before starting; a second pull fetches nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_clean_error, run_cli
from hubserver import HubServer, synthetic_gguf

BIG = "test-org/resume-GGUF"  # one 24 MB file: big enough to stop mid-way, small enough to be quick
FILE = "resume-Q4_K_M.gguf"
SIZE = 24 << 20
HUGE = "test-org/huge-GGUF"


@pytest.fixture(scope="module")
def hub():
    with HubServer() as h:
        h.add_repo(BIG, {FILE: synthetic_gguf("resume", SIZE), "README.md": b"resume test\n"})
        h.add_repo(HUGE, {"huge-Q4_K_M.gguf": synthetic_gguf("huge", 1 << 20)})
        h.repos[HUGE].advertise["huge-Q4_K_M.gguf"] = 1 << 60  # the listing claims an impossible size
        yield h


@pytest.fixture(autouse=True)
def _fresh(hub):
    hub.clear()


def pull_cli(hub, name=BIG, *args):
    return run_cli("pull", name, "--endpoint", hub.url, *args)


def manifest(qd_home: Path) -> dict | None:
    p = qd_home / "models" / "test-org" / "resume-GGUF" / "Q4_K_M" / ".quantdeploy" / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else None


def partial_bytes(qd_home: Path) -> int:
    return sum(p.stat().st_size for p in qd_home.rglob("*.part"))


def assert_pulled_and_verified(hub, proc, qd_home):
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.read_bytes() == hub.repos[BIG].revisions["main"].files[FILE].data
    m = manifest(qd_home)
    assert m is not None and m["files"][0]["sha256"] == hub.repos[BIG].revisions["main"].files[FILE].sha256
    assert partial_bytes(qd_home) == 0


@pytest.mark.parametrize("kind", ["drop", "reset"])
def test_resume_after_mid_file_disconnect(hub, qd_home, kind):
    hub.fault(FILE, kind, 5 << 20)
    proc = pull_cli(hub)
    assert_pulled_and_verified(hub, proc, qd_home)
    first, second = hub.body_hits(FILE)
    assert first.start == 0 and 0 < second.start <= first.sent
    assert second.sent == SIZE - second.start  # the retry asks only for what is not on disk
    if kind == "drop":  # FIN after the data: all of it arrived and was kept, so nothing is fetched twice
        assert second.start == first.sent
    # (a reset also discards what sat in the socket buffers: those bytes were lost, and are fetched again)


def test_5xx_is_retried_with_backoff(hub, qd_home):
    hub.fault(FILE, "status", 503, times=2)
    proc = pull_cli(hub)
    assert_pulled_and_verified(hub, proc, qd_home)
    gets = [r for r in hub.requests if r[0] == "GET" and r[1].startswith("/cdn/")]
    assert len(gets) == 3
    assert hub.bytes_sent(FILE) == SIZE


def _stop_midway(hub, qd_home, sig) -> tuple[int, str, int]:
    hub.fault(FILE, "throttle", 8 << 20, times=None)  # ~3 s for the file
    env = dict(os.environ)
    env.pop("QUANTDEPLOY_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "quantdeploy", "pull", BIG, "--endpoint", hub.url], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while partial_bytes(qd_home) < (4 << 20) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    hub.clear()
    return proc.returncode, err, partial_bytes(qd_home)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_resume_after_interrupted_process(hub, qd_home, sig):
    rc, err, kept = _stop_midway(hub, qd_home, sig)
    assert 0 < kept < SIZE
    if sig == signal.SIGINT:
        assert rc == 130, err
        assert "interrupted" in err and "resume" in err and "Traceback" not in err
    else:
        assert rc == -signal.SIGKILL
    assert manifest(qd_home) is None  # not complete until verified ...
    [entry] = json.loads(run_cli("list", "--json").stdout)
    assert entry["complete"] is False and entry["status"].startswith("incomplete")
    proc = pull_cli(hub)  # ... and the next pull continues where this one stopped
    assert_pulled_and_verified(hub, proc, qd_home)
    [resumed] = hub.body_hits(FILE)
    assert resumed.start == kept and resumed.sent == SIZE - kept


def test_corrupted_bytes_fail_the_pull_and_are_not_kept(hub, qd_home):
    hub.fault(FILE, "corrupt", 12345, times=None)
    proc = pull_cli(hub)
    assert_clean_error(proc, "corrupted", "sha256", FILE)
    assert manifest(qd_home) is None
    assert partial_bytes(qd_home) == 0
    assert not list(qd_home.rglob(FILE))
    assert not [e for e in json.loads(run_cli("list", "--json").stdout) if e["complete"]]
    hub.clear()
    assert_pulled_and_verified(hub, pull_cli(hub), qd_home)


def test_disk_space_is_checked_before_downloading(hub, qd_home):
    assert_clean_error(pull_cli(hub, HUGE), "not enough disk space", "free")
    assert hub.body_hits() == []
    assert not (qd_home / "models").exists()


def test_pulling_twice_downloads_nothing(hub, qd_home):
    first = pull_cli(hub)
    assert_pulled_and_verified(hub, first, qd_home)
    assert hub.bytes_sent() == SIZE
    hub.clear()
    second = pull_cli(hub)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]
    assert "up to date" in second.stderr
    assert hub.body_hits() == []
    assert not any("/resolve/" in r[1] or r[1].startswith("/cdn/") for r in hub.requests)


def test_a_changed_file_is_fetched_again(hub, qd_home):
    assert_pulled_and_verified(hub, pull_cli(hub), qd_home)
    path = next(qd_home.rglob(FILE))
    path.write_bytes(b"truncated")
    [entry] = json.loads(run_cli("list", "--json").stdout)
    assert entry["status"].startswith("damaged")
    assert_clean_error(run_cli("inspect", f"{BIG}:Q4_K_M"), "damaged", "pull")
    hub.clear()
    assert_pulled_and_verified(hub, pull_cli(hub), qd_home)
    assert hub.bytes_sent(FILE) == SIZE


def test_two_pulls_of_the_same_model_at_once(hub, qd_home):
    hub.fault(FILE, "throttle", 16 << 20, times=None)
    cmd = [sys.executable, "-m", "quantdeploy", "pull", BIG, "--endpoint", hub.url]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while partial_bytes(qd_home) == 0 and time.time() < deadline:
        time.sleep(0.02)
    second = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    assert outs[0][0] == outs[1][0]  # same path
    assert "up to date" in outs[1][1]  # the second waited for the first, then found it done
    assert hub.bytes_sent(FILE) == SIZE
