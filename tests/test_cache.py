"""File digests that key the artifact cache: files and saved-model folders."""

from __future__ import annotations

from pathlib import Path

from rtq.cache import file_digest


def test_a_folder_digest_follows_its_files_not_its_name(tmp_path: Path) -> None:
    """A Hugging Face model folder keys the cache by its contents: renaming the folder keeps the key,
    changing one byte of one file changes it."""
    first = tmp_path / "a"
    (first / "sub").mkdir(parents=True)
    (first / "config.json").write_text("{}")
    (first / "sub" / "model.safetensors").write_bytes(b"\x00" * 64)
    before = file_digest(first)
    second = tmp_path / "b"
    first.rename(second)
    assert file_digest(second) == before and len(before) == 64
    (second / "sub" / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")
    assert file_digest(second) != before
    assert file_digest(second / "config.json") != before
