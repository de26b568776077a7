"""das_core.io.storage: one spelling per location, umask-respecting atomic writes, listings, removal."""

from __future__ import annotations

import os
import stat

import pytest

from das_core.errors import Refused
from das_core.io import storage

pytestmark = pytest.mark.integration    # Ray, S3 (moto) or subprocesses: `make test-fast` skips it


# ----------------------------------------------------------------- file modes
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        target = tmp_path / "out" / "part-0.parquet"
        storage.write_bytes_atomic(str(target), b"data")
        storage.write_bytes_atomic(str(target), b"data again")      # replacing keeps the mode rule
        assert storage.default_file_mode() == 0o666 & ~umask
    finally:
        os.umask(previous)
    assert target.read_bytes() == b"data again"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["part-0.parquet"]      # no temporary left


def test_local_listing_skips_hidden_and_filters(tmp_path):
    for name in ("b.wav", "a.WAV", ".tmp-x.wav", "_manifest.json", "sub/c.flac", "notes.txt"):
        storage.write_bytes_atomic(str(tmp_path / name), b"")
    assert storage.list_files(str(tmp_path), (".wav", ".flac")) == [
        str(tmp_path / "a.WAV"), str(tmp_path / "b.wav"), str(tmp_path / "sub" / "c.flac")]


def test_locations_are_spelled_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("out/") == storage.absolute("./out") == str(tmp_path / "out")
    assert storage.absolute("~/x") == os.path.join(os.path.expanduser("~"), "x")
    assert storage.absolute("s3://b/p//") == "s3://b/p" and storage.absolute("s3://b") == "s3://b"
    with pytest.raises(Refused, match="an empty path"):
        storage.absolute(" ")                        # never silently the working folder
    assert storage.absolute_if_local("630k-audioset-best") == "630k-audioset-best"
    (tmp_path / "model.pt").write_bytes(b"x")
    assert storage.absolute_if_local("model.pt") == str(tmp_path / "model.pt")


def test_remove_takes_one_file_and_only_empty_folders_go(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    storage.remove(str(tmp_path / "d"))                  # a folder is never removed with what it holds
    assert (tmp_path / "d" / "f").exists()
    assert not storage.remove_empty_folder(str(tmp_path / "d"))
    storage.remove(str(tmp_path / "d" / "f"))
    assert storage.remove_empty_folder(str(tmp_path / "d")) and not (tmp_path / "d").exists()
    import inspect
    assert "recursive" not in inspect.signature(storage.remove).parameters
