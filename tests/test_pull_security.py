"""Security and access: names that could escape the store, a hub listing hostile file names, gated and private
repos (the token is used, never shown), 404s, offline mode, HF_ENDPOINT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli
from hubserver import HubServer, synthetic_gguf
from quantdeploy.errors import DownloadError
from quantdeploy.hub.safety import check_remote_path

OPEN = "test-org/open-GGUF"
GATED = "test-org/gated-GGUF"
PRIVATE = "test-org/private-GGUF"
TOKEN = "hf_secret_token_123"
WRONG = "hf_wrong_token_456"
HOSTILE = {
    "test-org/evil-dotdot": "../../escape-Q4_K_M.gguf",
    "test-org/evil-backslash": "sub\\..\\..\\escape-Q4_K_M.gguf",
    "test-org/evil-absolute": "/tmp/escape-Q4_K_M.gguf",
    "test-org/evil-control": "esc\x1b[2J-Q4_K_M.gguf",
}
NO_TOKEN = {"HF_TOKEN": ""}


@pytest.fixture(scope="module")
def hub():
    with HubServer() as h:
        small = {"m-Q4_K_M.gguf": synthetic_gguf("m", 64 << 10)}
        h.add_repo(OPEN, small)
        h.add_repo(GATED, small, token=TOKEN)
        h.add_repo(PRIVATE, small, token=TOKEN, private=True)
        for repo, evil in HOSTILE.items():
            h.add_repo(repo, {"ok-Q8_0.gguf": synthetic_gguf("ok", 1024), evil: synthetic_gguf("evil", 1024)})
        yield h


@pytest.fixture(autouse=True)
def _fresh(hub):
    hub.clear()


def pull_cli(hub, *args, env=None):
    return run_cli("pull", *args, "--endpoint", hub.url, env={**NO_TOKEN, **(env or {})})


@pytest.mark.parametrize("name", ["../etc:Q4_K_M", "org/..", "org/../x", "/abs/path", "org\\repo", "org/re\x01po",
                                  "org/repo:../../x", "org/repo:Q4_K_M/../../x", "org/repo/extra", "org/.hidden"])
def test_names_that_could_escape_the_store_are_rejected(hub, qd_home, name):
    assert_clean_error(pull_cli(hub, name), "invalid")
    assert hub.requests == []
    assert not (qd_home / "models").exists()


def test_revision_and_rm_names_are_checked(hub, qd_home):
    assert_clean_error(pull_cli(hub, OPEN, "--revision", "../../x"), "invalid revision")
    assert_clean_error(run_cli("rm", "../../etc"), "invalid repo id")
    assert hub.requests == []


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "a\\b", "C:/x", "a//b", "x\x00y", "./x", ""])
def test_unsafe_remote_paths(path):
    with pytest.raises(DownloadError):
        check_remote_path(path, "org/repo")


@pytest.mark.parametrize("repo", sorted(HOSTILE))
def test_a_hub_listing_hostile_file_names_is_refused(hub, qd_home, tmp_path, repo):
    proc = pull_cli(hub, f"{repo}:Q8_0")
    assert_clean_error(proc, "unsafe file name", "refusing")
    assert "\x1b" not in proc.stderr  # control characters are escaped, not echoed to the terminal
    assert hub.body_hits() == []
    assert not list(tmp_path.parent.rglob("escape-Q4_K_M.gguf")) and not Path("/tmp/escape-Q4_K_M.gguf").exists()


def test_gated_repo_needs_a_token_and_never_shows_it(hub, qd_home):
    assert_clean_error(pull_cli(hub, GATED), "gated or private", "--token", "HF_TOKEN")
    wrong = pull_cli(hub, GATED, "--token", WRONG)
    assert_clean_error(wrong, "gated or private")
    assert WRONG not in wrong.stdout + wrong.stderr
    hub.clear()
    ok = pull_cli(hub, GATED, env={"HF_TOKEN": TOKEN})
    assert ok.returncode == 0, ok.stderr
    assert TOKEN not in ok.stdout + ok.stderr
    manifest = next(qd_home.rglob("manifest.json")).read_text()
    assert TOKEN not in manifest
    cdn = [r for r in hub.requests if r[1].startswith("/cdn/")]
    hub_side = [r for r in hub.requests if "/resolve/" in r[1]]
    assert cdn and not any(r[2] for r in cdn)  # the token stays on the hub, not sent to the CDN
    assert hub_side and all(r[2] for r in hub_side)


def test_private_repo_without_token(hub, qd_home):
    assert_clean_error(pull_cli(hub, PRIVATE), "gated or private", "--token")
    ok = pull_cli(hub, PRIVATE, "--token", TOKEN)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("args, needles", [
    (["test-org/no-such-repo"], ["no repo", "test-org/no-such-repo"]),
    ([OPEN, "--revision", "v9"], ["no revision", "v9"]),
])
def test_not_found(hub, qd_home, args, needles):
    assert_clean_error(pull_cli(hub, *args), *needles)
    assert not (qd_home / "models").exists()


def test_offline_mode(hub, qd_home):
    offline = {"HF_HUB_OFFLINE": "1"}
    assert_clean_error(pull_cli(hub, OPEN, env=offline), "HF_HUB_OFFLINE", "not pulled")
    assert hub.requests == []
    first = pull_cli(hub, OPEN)
    assert first.returncode == 0, first.stderr
    hub.clear()
    again = pull_cli(hub, OPEN, env=offline)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]
    assert hub.requests == []


def test_hf_endpoint_and_credentials_in_the_url_stay_private(hub, qd_home):
    proc = run_cli("pull", OPEN, env={**NO_TOKEN, "HF_ENDPOINT": hub.url})
    assert proc.returncode == 0, proc.stderr
    assert hub.body_hits()
    run_cli("rm", OPEN)
    with_creds = hub.url.replace("http://", "http://mirror-user:s3cret-pass@")
    proc = run_cli("pull", OPEN, "--endpoint", with_creds, env=NO_TOKEN)
    assert proc.returncode == 0, proc.stderr
    assert "s3cret-pass" not in proc.stdout + proc.stderr
    [entry] = json.loads(run_cli("list", "--json").stdout)
    assert entry["source"] == hub.url and "s3cret" not in json.dumps(entry)
