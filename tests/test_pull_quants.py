"""GGUF quant selection: tags from file names, split parts, --list, include/exclude, and the Done-when flow
(`pull REPO:Q8_0` then `chat REPO:Q8_0 --prompt ...`) against the local Hub server."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli
from hubserver import GGUF_REPO, HubServer, gguf_repo
from quantdeploy.errors import ModelNotFound
from quantdeploy.backends.gguf_quants import gguf_quants, quant_tag, select_quant
from quantdeploy.hub.remote import RemoteFile



@pytest.mark.parametrize("name, tag", [
    ("gemma-3-270m-it-Q4_K_M.gguf", "Q4_K_M"),
    ("model.q4_k_m.gguf", "Q4_K_M"),
    ("Llama-3.2-1B-Instruct-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
    ("gemma-3-270m-it-ud-q2_k_xl.gguf", "UD-Q2_K_XL"),
    ("x-IQ4_XS.gguf", "IQ4_XS"),
    ("x-iq2_xxs.gguf", "IQ2_XXS"),
    ("x-IQ1_M.gguf", "IQ1_M"),
    ("x-IQ4_NL.gguf", "IQ4_NL"),
    ("x-Q8_0.gguf", "Q8_0"),
    ("x-Q3_K_L.gguf", "Q3_K_L"),
    ("x-Q4_0_4_4.gguf", "Q4_0_4_4"),
    ("x-f16.gguf", "F16"),
    ("x-fp16.gguf", "F16"),
    ("x-BF16.gguf", "BF16"),
    ("x-TQ1_0.gguf", "TQ1_0"),
    ("gpt-oss-20b-MXFP4_MOE.gguf", "MXFP4_MOE"),
    ("Q6_K/x-Q6_K-00001-of-00003.gguf", "Q6_K"),
    ("Q4_K_M/model-00002-of-00002.gguf", "Q4_K_M"),
    ("qwen2.5-7b-instruct-q5_k_m-00001-of-00002.gguf", "Q5_K_M"),
    ("model.gguf", None),
])
def test_quant_tag_from_file_name(name, tag):
    assert quant_tag(name) == tag


def _files(*names: str) -> list[RemoteFile]:
    return [RemoteFile(n, 100 * (i + 1), sha256=f"{i:064x}") for i, n in enumerate(names)]


def test_groups_split_parts_and_skips_projectors():
    quants = gguf_quants(_files("m-Q8_0.gguf", "Q6_K/m-Q6_K-00002-of-00002.gguf", "Q6_K/m-Q6_K-00001-of-00002.gguf",
                                "mmproj-F16.gguf", "README.md", "imatrix.gguf"))
    assert set(quants) == {"Q8_0", "Q6_K"}
    assert [f.path for f in quants["Q6_K"].files] == ["Q6_K/m-Q6_K-00001-of-00002.gguf",
                                                       "Q6_K/m-Q6_K-00002-of-00002.gguf"]
    assert quants["Q6_K"].model_file.endswith("00001-of-00002.gguf")
    assert quants["Q6_K"].size == 200 + 300


@pytest.mark.parametrize("requested, picked", [
    (None, "Q4_K_M"), ("q4_k_m", "Q4_K_M"), ("Q4_K_XL", "UD-Q4_K_XL"), ("ud-q4_k_xl", "UD-Q4_K_XL"),
    ("q8_0", "Q8_0"),
])
def test_select_quant(requested, picked):
    quants = gguf_quants(_files("m-Q4_K_M.gguf", "m-UD-Q4_K_XL.gguf", "m-Q8_0.gguf"))
    assert select_quant(quants, requested, "org/m").tag == picked


def test_plain_tag_beats_ud_variant():
    quants = gguf_quants(_files("m-UD-Q4_K_XL.gguf", "m-Q4_K_XL.gguf"))
    assert select_quant(quants, "Q4_K_XL", "org/m").tag == "Q4_K_XL"


@pytest.mark.parametrize("names, requested, needles", [
    (("m-a.gguf", "m-b.gguf"), None, ["name one", "m-a", "m-b"]),
    (("m-Q8_0.gguf",), "Q5_K_S", ["no quant 'Q5_K_S'", "Q8_0"]),
    (("m-Q6_K-00001-of-00003.gguf", "m-Q6_K-00003-of-00003.gguf"), "Q6_K", ["incomplete", "00002-of-00003"]),
    (("README.md",), None, ["no GGUF"]),
])
def test_select_quant_errors_say_what_exists(names, requested, needles):
    with pytest.raises(ModelNotFound) as e:
        select_quant(gguf_quants(_files(*names)), requested, "org/m")
    for n in needles:
        assert n in str(e.value)


# --- against the local Hub ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hub(gguf_path):
    with HubServer() as h:
        h.add_repo(GGUF_REPO, gguf_repo(gguf_path))
        yield h


@pytest.fixture(autouse=True)
def _fresh(hub):
    hub.clear()


def pull_cli(hub, *args, env=None):
    return run_cli("pull", *args, "--endpoint", hub.url, env=env)


def fetched(hub) -> set[str]:
    return {h.path for h in hub.body_hits()}


def test_pull_q8_0_then_chat(hub, qd_home):
    """The Done-when flow. Q8_0 is a real GGUF (llama.cpp requantized the embedded Q4_K_M to Q8_0)."""
    proc = pull_cli(hub, f"{GGUF_REPO}:Q8_0")
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.name == "gemma-3-270m-Q8_0.gguf"
    assert str(qd_home) in str(path)
    assert fetched(hub) == {"gemma-3-270m-Q8_0.gguf"}  # only that quant came over the wire
    hub.clear()
    chat = run_cli("chat", f"{GGUF_REPO}:Q8_0", "--prompt", "Name a color.", "-n", "12", "-t", "0", "-v")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip()
    assert "Traceback" not in chat.stderr
    assert "gguf" in chat.stderr  # the -v stats line: it ran on the GGUF backend
    assert hub.requests == []  # a pulled name never touches the network


def test_no_tag_pulls_q4_k_m(hub, qd_home):
    from quantdeploy.hub import PullRequest, pull
    from quantdeploy.hub.progress import Quiet

    result = pull(PullRequest(GGUF_REPO, endpoint=hub.url), progress=Quiet())
    assert result.name == f"{GGUF_REPO}:Q4_K_M"
    assert result.model_path.name == "gemma-3-270m-Q4_K_M.gguf"
    assert result.manifest["quant"] == "Q4_K_M" and result.manifest["format"] == "gguf"
    assert fetched(hub) == {"gemma-3-270m-Q4_K_M.gguf"}


def test_split_quant_in_a_folder(hub, qd_home):
    proc = pull_cli(hub, f"{GGUF_REPO}:q6_k")
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.name == "gemma-3-270m-Q6_K-00001-of-00003.gguf"
    assert sorted(p.name for p in path.parent.glob("*.gguf")) == [
        f"gemma-3-270m-Q6_K-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    assert fetched(hub) == {f"Q6_K/gemma-3-270m-Q6_K-{i:05d}-of-00003.gguf" for i in (1, 2, 3)}


def test_ud_variant_and_case(hub, qd_home):
    proc = pull_cli(hub, f"{GGUF_REPO}:q4_k_xl")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith("gemma-3-270m-UD-Q4_K_XL.gguf")
    proc = pull_cli(hub, f"{GGUF_REPO}:bf16")
    assert proc.returncode == 0, proc.stderr
    assert fetched(hub) == {"gemma-3-270m-UD-Q4_K_XL.gguf", "gemma-3-270m-bf16.gguf"}


@pytest.mark.parametrize("tag, needles", [
    ("Q3_K_S", ["no quant 'Q3_K_S'", "Q4_K_M", "Q8_0", "IQ4_XS"]),
    ("Q5_K_M", ["incomplete", "00002-of-00002"]),
])
def test_missing_or_incomplete_quant(hub, qd_home, tag, needles):
    assert_clean_error(pull_cli(hub, f"{GGUF_REPO}:{tag}"), *needles)
    assert fetched(hub) == set()
    assert not (qd_home / "models").exists()  # nothing half-written


def test_list_shows_quants_with_sizes_and_downloads_nothing(hub, qd_home):
    proc = pull_cli(hub, GGUF_REPO, "--list")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for tag in ("Q4_K_M (default)", "Q8_0", "Q2_K", "IQ4_XS", "UD-Q4_K_XL", "BF16", "Q6_K", "Q5_K_M"):
        assert tag in out, out
    assert "253.1 MB" in out  # the Q4_K_M size
    assert "mmproj" not in out
    assert fetched(hub) == set()
    assert not (qd_home / "models").exists()


def test_include_adds_and_exclude_cannot_break_the_quant(hub, qd_home):
    proc = pull_cli(hub, f"{GGUF_REPO}:Q2_K", "--include", "README.md", "--include", "mmproj-*")
    assert proc.returncode == 0, proc.stderr
    root = Path(proc.stdout.strip().splitlines()[-1]).parent
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        "README.md", "gemma-3-270m-Q2_K.gguf", "mmproj-F16.gguf"]
    assert_clean_error(pull_cli(hub, f"{GGUF_REPO}:Q6_K", "--exclude", "*00002-of-*"), "--exclude", "00002-of-00003")


def test_format_mismatch(hub, qd_home):
    assert_clean_error(pull_cli(hub, f"{GGUF_REPO}:Q2_K", "--format", "gptq"), "--format gptq", "GGUF repo")
    assert_clean_error(pull_cli(hub, f"{GGUF_REPO}:Q2_K", "--format", "exl2"), "unknown format", "gguf")
    assert fetched(hub) == set()
