"""A pull on a machine that cannot resolve the hub's name fails at once with one line (a name that does not resolve
is not a transient error to back off from), says first what it pulls and from where, and a model pulled earlier
still works."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli
from hubserver import HubServer, synthetic_gguf

REPO = "test-org/offline-GGUF"
NOWHERE = "http://hub.quantdeploy-test.invalid"  # .invalid never resolves (RFC 2606)


@pytest.fixture(scope="module")
def hub():
    with HubServer() as h:
        h.add_repo(REPO, {"m-Q2_K.gguf": synthetic_gguf("offline", 4096)})
        yield h


@pytest.mark.parametrize("command", [["pull", REPO, "--endpoint", NOWHERE], ["chat", REPO, "--prompt", "hi"],
                                     ["pull", REPO, "--list", "--endpoint", NOWHERE]],
                         ids=["pull", "chat", "list"])
def test_a_host_that_does_not_resolve_fails_at_once(qd_home, command):
    proc = run_cli(*command, env={"HF_ENDPOINT": NOWHERE}, timeout=120)
    assert_clean_error(proc, "does not resolve", "hub.quantdeploy-test.invalid", "HF_HUB_OFFLINE=1")
    assert "retrying" not in proc.stderr, proc.stderr
    assert not (qd_home / "models").exists()


def test_pull_says_what_and_from_where_first(hub, qd_home):
    proc = run_cli("pull", REPO, "--endpoint", hub.url)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"pulling {REPO} from {hub.url}", proc.stderr
    assert any(line.startswith(f"{REPO}:Q2_K (gguf): 1 of 1 files") for line in lines), proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])

    # pulled earlier: an unresolvable hub does not stop a pull of the same name from answering
    again = run_cli("pull", REPO, "--endpoint", NOWHERE, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "does not resolve" in again.stderr and "retrying" not in again.stderr
    assert again.stdout.strip().splitlines()[-1] == str(path)
