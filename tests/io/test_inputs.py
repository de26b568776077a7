"""What to label (``das_core.io.inputs``): folder listings, manifests, extensions, shard kinds."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from das_core.errors import InputError
from das_core.io.inputs import (
    AUDIO_EXTENSIONS,
    DAS_OUTPUT,
    DEFAULT_EXTENSIONS,
    SHARD_EXTENSIONS,
    list_input_table,
    member_extensions,
    normalise_extensions,
    normalise_uri,
    shard_kind,
    shard_kinds,
)


def test_shard_kinds_agree_with_shard_kind():
    paths = ["a.TAR", "b.flac", "c.tar.gz", "x/y.tar", "d.parquet", "e.Parquet.wav", "plain"]
    assert shard_kinds(pa.array(paths)).to_pylist() == [shard_kind(p) for p in paths]
    assert shard_kinds(pa.array(paths)).to_pylist()[:5] == ["tar", None, None, "tar", "parquet"]


def test_extensions_and_uris_are_normalised(tmp_path, monkeypatch):
    assert normalise_extensions(" WAV, .flac,,ogg ") == (".wav", ".flac", ".ogg")
    with pytest.raises(InputError, match="no audio extensions"):
        normalise_extensions(" , ")
    monkeypatch.chdir(tmp_path)
    assert normalise_uri("archive/") == normalise_uri("./archive") == str(tmp_path / "archive")
    assert normalise_uri("s3://bucket/prefix/") == "s3://bucket/prefix"


def test_folder_listing_skips_hidden_and_foreign_files_and_counts_them(tmp_path):
    for rel in ("a.wav", "sub/b.FLAC", ".hidden.wav", "_tmp/c.wav", "notes.txt", "shards/s-0.tar"):
        os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * 3)
    table, skipped = list_input_table(str(tmp_path), (".wav", ".flac"))
    assert table.column("file_id").to_pylist() == ["a.wav", "sub/b.FLAC"]
    assert table.column("size").to_pylist() == [3, 3]
    assert skipped.as_dict()["by_reason"] == {"extension": 2, "hidden": 2}
    table, _ = list_input_table(str(tmp_path))              # the default extensions include shards
    assert table.column("file_id").to_pylist() == ["a.wav", "shards/s-0.tar", "sub/b.FLAC"]
    assert table.column("shard").to_pylist() == [None, "tar", None]
    with pytest.raises(InputError, match="no audio files"):
        list_input_table(str(tmp_path / "sub"), (".ogg",))


def test_manifest_paths_are_taken_from_its_folder_and_ids_must_be_unique(tmp_path):
    manifest = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": ["b.wav", "/abs/a.wav", "s3://bucket/c.tar"], "id": ["b", "a", "c"]}), manifest)
    table, _ = list_input_table(str(manifest))
    rows = table.to_pylist()
    assert [r["path"] for r in rows] == ["/abs/a.wav", str(tmp_path / "b.wav"), "s3://bucket/c.tar"]
    assert [r["file_id"] for r in rows] == ["a", "b", "c"] and rows[2]["shard"] == "tar"
    (tmp_path / "dup.csv").write_text("path,id\nx.wav,1\ny.wav,1\n")
    with pytest.raises(InputError, match="id '1' appears more than once"):
        list_input_table(str(tmp_path / "dup.csv"))
    (tmp_path / "empty.csv").write_text("path\nx.wav\n  \n")
    with pytest.raises(InputError, match="row 2: empty path"):
        list_input_table(str(tmp_path / "empty.csv"))
    (tmp_path / "nopath.csv").write_text("file\nx.wav\n")
    with pytest.raises(InputError, match="no 'path' column"):
        list_input_table(str(tmp_path / "nopath.csv"))


def test_extensions_keep_parquet_and_tar_shards_out_unless_listed(tmp_path):
    for rel in ("a.wav", "hf/train-0.parquet", "wds/s-0.tar"):
        os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    table, skipped = list_input_table(str(tmp_path), normalise_extensions("wav"))
    assert table.column("file_id").to_pylist() == ["a.wav"]
    assert skipped.as_dict()["by_reason"] == {"extension": 2}
    table, _ = list_input_table(str(tmp_path), normalise_extensions("parquet"))
    assert table.column("file_id").to_pylist() == ["hf/train-0.parquet"]
    assert table.column("shard").to_pylist() == ["parquet"]
    assert member_extensions(normalise_extensions("tar")) == AUDIO_EXTENSIONS      # members are never shards
    assert member_extensions(normalise_extensions("tar,flac")) == (".flac",)
    assert set(SHARD_EXTENSIONS) <= set(DEFAULT_EXTENSIONS)


def test_a_das_output_under_the_input_is_skipped_and_counted(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    for run, job in (("old-labels", "label"), ("nightly/run_id=r1", "rescore"), ("not-das", None)):
        for rel in ("segments/part-u00000000-c00000.parquet", "files/part-u00000000-end.parquet", "x.wav"):
            os.makedirs(os.path.dirname(tmp_path / run / rel), exist_ok=True)
            (tmp_path / run / rel).write_bytes(b"x")
        (tmp_path / run / "_manifest.json").write_text(json.dumps({"job": job}) if job else "{}")
    table, skipped = list_input_table(str(tmp_path))
    assert table.column("file_id").to_pylist() == ["a.wav", "not-das/files/part-u00000000-end.parquet",
                                                   "not-das/segments/part-u00000000-c00000.parquet",
                                                   "not-das/x.wav"]
    assert skipped.as_dict()["by_reason"] == {DAS_OUTPUT: 8, "hidden": 1}
    with pytest.raises(InputError, match="is the output of a das run"):
        list_input_table(str(tmp_path / "old-labels"))


@pytest.mark.parametrize("table, message", [
    (pa.table({"path": [1, 2, 3]}), "path column must be text"),
    (pa.table({"path": [["a.wav"], ["b.wav"]]}), "path column must be text"),
    (pa.table({"path": pa.array([None, None], pa.null())}), "path column must be text"),
    (pa.table({"file": ["a.wav"]}), "no 'path' column"),
    (pa.table({"x": [1.0, 2.0], "y": ["a", "b"]}), "no 'path' column"),
    (pa.table({"path": pa.array([], pa.string())}), "lists no files"),
    (None, "cannot be read"),
])
def test_a_manifest_of_the_wrong_shape_is_refused_in_one_line(tmp_path, table, message):
    manifest = tmp_path / "list.parquet"
    if table is None:
        manifest.write_bytes(b"PAR1 not really Parquet PAR1")
    else:
        pq.write_table(table, manifest)
    with pytest.raises(InputError, match=message) as refused:
        list_input_table(str(manifest))
    assert "\n" not in str(refused.value) and str(manifest) in str(refused.value)


def test_a_manifest_path_column_of_dictionary_text_is_read(tmp_path):
    manifest = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": pa.array(["b.wav", "a.wav"]).dictionary_encode()}), manifest)
    assert list_input_table(str(manifest))[0].column("file_id").to_pylist() == ["a.wav", "b.wav"]
