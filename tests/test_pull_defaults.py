"""What a pull takes when the user names no quant (GGUF) and which files travel with a GPTQ/AWQ checkpoint,
against the local Hub server with the real huggingface_hub client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli
from hubserver import HubServer, synthetic_gguf
from quantdeploy.backends.gguf_quants import default_quant, gguf_quants
from quantdeploy.hub.remote import RemoteFile

NO_Q4_K_M = "test-org/no-q4km-GGUF"  # Q4_K_S, Q8_0, Q2_K and an incomplete Q4_0
HIGH_ONLY = "test-org/q8-and-q2-GGUF"
SINGLE = "test-org/one-file-GGUF"  # one GGUF with no quant tag in its name
UNKNOWN = "test-org/two-untagged-GGUF"
CARD_REPO = "test-org/carded-GPTQ"
GPTQ_CONFIG = {"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}
CARD_FILES = ["LICENSE", "LICENSE.txt", "NOTICE", "README.md", "USE_POLICY.md"]


def _files(*names: str) -> list[RemoteFile]:
    return [RemoteFile(n, 100 * (i + 1), sha256=f"{i:064x}") for i, n in enumerate(names)]


@pytest.mark.parametrize("names, picked", [
    (("m-Q8_0.gguf", "m-Q4_K_M.gguf", "m-Q2_K.gguf"), "Q4_K_M"),
    (("m-Q8_0.gguf", "m-Q4_K_S.gguf", "m-Q4_0.gguf"), "Q4_K_S"),
    (("m-Q8_0.gguf", "m-Q4_0.gguf", "m-Q5_K_M.gguf"), "Q4_0"),
    (("m-Q8_0.gguf", "m-Q5_K_M.gguf", "m-Q2_K.gguf"), "Q5_K_M"),
    (("m-Q8_0.gguf", "m-Q2_K.gguf", "m-F16.gguf"), "Q8_0"),
    (("m-UD-Q4_K_XL.gguf", "m-Q8_0.gguf"), "UD-Q4_K_XL"),
    (("m-UD-Q4_K_M.gguf", "m-Q4_K_M.gguf"), "Q4_K_M"),
    (("m-BF16.gguf", "m-F32.gguf"), "BF16"),
    (("model.gguf",), "model"),
    (("m-Q4_K_M-00001-of-00002.gguf", "m-Q8_0.gguf"), "Q8_0"),  # an incomplete split set is never the default
    (("a.gguf", "b.gguf"), None),
])
def test_default_quant_preference(names, picked):
    hit = default_quant(gguf_quants(_files(*names)))
    assert (hit.tag if hit else None) == picked


# --- against the local Hub ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hub():
    with HubServer() as h:
        h.add_repo(NO_Q4_K_M, {"m-Q4_K_S.gguf": synthetic_gguf("s", 3072), "m-Q8_0.gguf": synthetic_gguf("8", 4096),
                               "m-Q2_K.gguf": synthetic_gguf("2", 2048),
                               "m-Q4_0-00001-of-00002.gguf": synthetic_gguf("0", 1024)})
        h.add_repo(HIGH_ONLY, {"m-Q8_0.gguf": synthetic_gguf("t8", 4096), "m-Q2_K.gguf": synthetic_gguf("t2", 2048)})
        h.add_repo(SINGLE, {"model.gguf": synthetic_gguf("one", 2048), "README.md": b"# one\n"})
        h.add_repo(UNKNOWN, {"a.gguf": synthetic_gguf("a", 2048), "b.gguf": synthetic_gguf("b", 1024)})
        card = {name: f"{name} text\n".encode() for name in CARD_FILES}
        h.add_repo(CARD_REPO, {**card, "config.json": json.dumps(GPTQ_CONFIG).encode(),
                               "model.safetensors": synthetic_gguf("w", 4096), "tokenizer.json": b"{}",
                               "pytorch_model.bin": b"PK\x03\x04" + bytes(64), "original/LICENSE": b"nested\n",
                               "quant_log.csv": b"layer,loss\n", "assets/logo.png": b"\x89PNG"})
        yield h


@pytest.fixture(autouse=True)
def _fresh(hub):
    hub.clear()


def pull_cli(hub, *args):
    return run_cli("pull", *args, "--endpoint", hub.url)


def fetched(hub) -> set[str]:
    return {h.path for h in hub.body_hits()}


@pytest.mark.parametrize("repo, quant, path", [
    (NO_Q4_K_M, "Q4_K_S", "m-Q4_K_S.gguf"),
    (HIGH_ONLY, "Q8_0", "m-Q8_0.gguf"),
])
def test_no_q4_k_m_picks_the_next_default_and_says_so(hub, qd_home, repo, quant, path):
    proc = pull_cli(hub, repo)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip().splitlines()[-1]).name == path
    said = [line for line in proc.stderr.splitlines() if "no Q4_K_M" in line]
    assert len(said) == 1 and f"pulling {quant}" in said[0], proc.stderr
    assert fetched(hub) == {path}
    # the pulled name carries the quant, and `org/repo` alone finds it again without the network
    [entry] = json.loads(run_cli("list", "--json").stdout)
    assert entry["name"] == f"{repo}:{quant}"
    hub.clear()
    again = pull_cli(hub, repo)
    assert again.returncode == 0 and fetched(hub) == set(), again.stderr


def test_list_marks_the_default_it_would_pull(hub, qd_home):
    proc = pull_cli(hub, NO_Q4_K_M, "--list")
    assert proc.returncode == 0, proc.stderr
    defaults = [line for line in proc.stdout.splitlines() if "(default)" in line]
    assert len(defaults) == 1 and "Q4_K_S" in defaults[0], proc.stdout


def test_a_single_untagged_gguf_is_the_default(hub, qd_home):
    proc = pull_cli(hub, SINGLE)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip().splitlines()[-1]).name == "model.gguf"


def test_no_quant_to_choose_lists_what_exists(hub, qd_home):
    assert_clean_error(pull_cli(hub, UNKNOWN), "name one", f"{UNKNOWN}:", "a (", "b (")
    assert fetched(hub) == set()
    assert not (qd_home / "models").exists()


def test_checkpoint_keeps_model_card_and_license(hub, qd_home):
    proc = pull_cli(hub, CARD_REPO)
    assert proc.returncode == 0, proc.stderr
    root = Path(proc.stdout.strip().splitlines()[-1])
    kept = sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".quantdeploy" not in p.parts)
    assert kept == sorted(CARD_FILES + ["config.json", "model.safetensors", "tokenizer.json"])
    assert (root / "LICENSE").read_text() == "LICENSE text\n"
    # --exclude still drops them
    hub.clear()
    other = qd_home / "other"
    proc = pull_cli(hub, CARD_REPO, "--exclude", "README*", "--local-dir", str(other))
    assert proc.returncode == 0, proc.stderr
    assert not (other / "README.md").exists() and (other / "LICENSE").is_file()
