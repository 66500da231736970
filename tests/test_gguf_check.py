"""A bad GGUF is caught by our validator before llama.cpp sees it: a clean error, never a segfault."""

from __future__ import annotations

import pytest

from quantdeploy.backends.gguf_check import validate_gguf
from quantdeploy.errors import InvalidModel


def test_real_file_metadata(gguf_path):
    info = validate_gguf(gguf_path)
    assert info["architecture"] == "gemma3"
    assert info["file_type_name"] == "Q4_K_M"
    assert info["block_count"] == 18 and info["context_length"] == 32768
    assert info["n_tensors"] > 100


@pytest.mark.parametrize("keep", [3, 24, 100_000, 200_000_000])
def test_truncated(tmp_path, gguf_path, keep):
    bad = tmp_path / "cut.gguf"
    with open(gguf_path, "rb") as src:
        bad.write_bytes(src.read(keep))
    with pytest.raises(InvalidModel, match="re-download"):
        validate_gguf(bad)


def test_garbage_after_magic(tmp_path):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 40)
    with pytest.raises(InvalidModel):
        validate_gguf(bad)


def test_not_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(InvalidModel, match="not a GGUF"):
        validate_gguf(bad)


def test_split_parts_must_all_exist(tmp_path, gguf_path):
    first = tmp_path / "m-00001-of-00002.gguf"
    first.symlink_to(gguf_path)
    with pytest.raises(InvalidModel, match="00002-of-00002"):
        validate_gguf(first)
