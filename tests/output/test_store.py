"""The output format (``das_core.output``: format, tables, store): part names, the commit rule, columns, encoding."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from das_core.output.format import (
    END_TAG,
    FILES_DIR,
    FILES_SCHEMA,
    PIECES_DIR,
    SEGMENTS_DIR,
    PartFormat,
    pack_name,
    parse_pack_name,
    parse_part_name,
    part_metadata,
    part_name,
    run_metadata,
    table_to_bytes,
)
from das_core.output.store import OutputStore
from das_core.output.tables import count_outcomes, embedding_array, embeddings_to_numpy


def test_part_names_round_trip_and_foreign_names_are_not_parts():
    assert part_name("u00000007", 3) == "part-u00000007-c00003.parquet"
    assert parse_part_name(part_name("u00000007", 3)) == ("u00000007", "c00003")
    assert parse_part_name(part_name("u00000007", END_TAG)) == ("u00000007", "end")
    for name in ("part-0.parquet", ".tmp-part-u00000001-end.parquet", "part-u1-end.parquet.bak"):
        assert parse_part_name(name) is None
    assert parse_part_name(pack_name("u00000002", "u00000009")) == ("u00000002", "u00000009")   # a pack: das's own
    assert parse_pack_name(pack_name("u00000002", "u00000009")) == ("u00000002", "u00000009")
    assert parse_pack_name(part_name("u00000002", END_TAG)) is None


def test_only_units_with_an_end_part_are_committed_and_removing_units_takes_all_their_parts(tmp_path):
    store = OutputStore(str(tmp_path))
    empty = pa.table({"x": [1]})
    for folder, unit, tag in ((SEGMENTS_DIR, "u00000000", 0), (FILES_DIR, "u00000000", 0),
                              (FILES_DIR, "u00000000", END_TAG), (SEGMENTS_DIR, "u00000001", 0),
                              (FILES_DIR, "u00000001", 0)):
        store.write_part(folder, part_name(unit, tag), empty)
    (tmp_path / FILES_DIR / "notes.parquet").write_bytes(b"not a part")
    listing = store.listing()
    assert listing.committed_units() == ["u00000000"]
    assert listing.legacy_parts() == ["notes.parquet"]
    assert store.remove_units({"u00000001"}, listing) == 2
    assert sorted(store.listing().names[SEGMENTS_DIR]) == [part_name("u00000000", 0)]


def test_embeddings_are_stored_plain_with_nulls_where_a_row_has_none():
    emb = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    column = embedding_array(emb, 3, np.array([0, 2]), "float16")
    assert column.null_count == 1 and column[1].as_py() is None
    table = pa.table({"file_id": ["a", "b", "c"], "embedding": column})
    meta = pq.ParquetFile(io.BytesIO(table_to_bytes(table))).metadata.row_group(0)
    by_path = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert by_path["embedding.list.element"].compression == "UNCOMPRESSED"
    assert by_path["file_id"].compression == "SNAPPY"
    assert by_path["file_id"].is_stats_set and not by_path["embedding.list.element"].is_stats_set
    back = embeddings_to_numpy(pq.read_table(io.BytesIO(table_to_bytes(table.filter(column.is_valid())))
                                             ).column("embedding"))
    np.testing.assert_array_equal(back, emb.astype(np.float16).astype(np.float32))


def test_text_columns_are_dictionary_encoded_only_in_parts_of_many_rows():
    from das_core.output.format import DICTIONARY_MIN_ROWS

    def encodings(n: int) -> tuple[str, ...]:
        """The Parquet encodings of the label column of an n-row part."""
        table = pa.table({"label": pa.array([f"class {i % 7}" for i in range(n)], pa.string())})
        data = table_to_bytes(table)
        assert pq.read_table(io.BytesIO(data)).equals(table) and data == table_to_bytes(table)
        return pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0).column(0).encodings

    assert not any("DICTIONARY" in e for e in encodings(DICTIONARY_MIN_ROWS - 1))
    assert any("DICTIONARY" in e for e in encodings(DICTIONARY_MIN_ROWS))


def test_outcome_counts():
    files = pa.table({"status": ["ok", "error", "ok", "error"], "error_kind": [None, "corrupt", None, "empty"],
                      "n_segments": [3, 0, 2, 0]})
    assert count_outcomes(files) == {"files": 4, "ok": 2, "error": 2, "segments": 5,
                                     "errors_by_kind": {"corrupt": 1, "empty": 1}}


def test_a_relative_store_sees_the_same_parts_as_an_absolute_one(tmp_path, monkeypatch):
    store = OutputStore(str(tmp_path / "out"))
    store.write_part(FILES_DIR, part_name("u00000000", END_TAG), FILES_SCHEMA.empty_table())
    monkeypatch.chdir(tmp_path)
    for spelling in ("out", "out/", "./out"):
        relative = OutputStore(spelling)
        assert relative.uri == store.uri
        assert relative.listing().committed_units() == ["u00000000"]


def test_remove_all_takes_only_what_das_wrote(tmp_path):
    store = OutputStore(str(tmp_path))
    user = {"segments/seg1.wav": b"RIFF", "files/interview.oga": b"OggS", "files/notes.parquet": b"PAR1",
            "_work/notes.txt": b"notes", "report/field_report.mp3": b"ID3", "report/report.md": b"mine",
            "notes.txt": b"more"}
    for rel, data in user.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    assert not store.has_output()                        # a user's files are not das output
    empty = pa.table({"x": [1]})
    for folder, tag in ((SEGMENTS_DIR, 0), (FILES_DIR, 0), (FILES_DIR, END_TAG), (PIECES_DIR, 0)):
        store.write_part(folder, part_name("u00000000", tag), empty)
    (tmp_path / "_work" / "units.parquet").write_bytes(b"das's unit table")
    (tmp_path / "_manifest.json").write_text('{"job": "label"}')
    (tmp_path / "report" / "_report.json").write_text('{"files": ["a.png", "../notes.txt", "report.md"]}')
    (tmp_path / "report" / "a.png").write_bytes(b"das's figure")
    (tmp_path / SEGMENTS_DIR / ".tmp-abc").write_bytes(b"a killed writer's")
    assert store.has_output()
    assert store.remove_all() == 10    # 4 parts, a temporary, 2 recorded report files, the record, units, manifest
    left = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert left == set(user) - {"report/report.md"}     # report.md was on das's record: das wrote it last
    assert not (tmp_path / PIECES_DIR).exists()          # emptied, so removed; the others still hold user files


def test_labelled_columns_place_each_row_where_asked():
    from das_core.output.tables import labelled_columns
    from das_core.scoring.scorer import Labelled

    lab = Labelled(("a", "b", "c"), np.array([[2, 0], [1, 2]]), np.array([[0.9, 0.5], [0.8, 0.1]], np.float32),
                   np.array([0, 1]), np.array([0.4, 0.3], np.float32))
    in_order = labelled_columns(lab, 2)
    assert in_order["top_k_labels"].to_pylist() == [["c", "a"], ["b", "c"]]
    assert in_order["zs_label"].to_pylist() == ["a", "b"] and in_order["top_k_probs"].null_count == 2
    swapped = labelled_columns(lab, 2, np.array([1, 0]))
    assert swapped["label"].to_pylist() == ["b", "c"]
    assert swapped["score"].to_pylist() == in_order["score"].to_pylist()[::-1]
    spread = labelled_columns(lab, 3, np.array([0, 2]))
    assert spread["top_k_scores"].to_pylist()[1] is None and spread["label"].to_pylist() == ["c", None, "b"]
    for name, column in in_order.items():
        assert column.type == spread[name].type


def test_fixed_size_embeddings_are_stored_plain_and_come_back_as_a_matrix_from_any_slice():
    emb = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    column = embedding_array(emb, 5, np.arange(5), "float16", 4)
    assert column.type == pa.list_(pa.float16(), 4) and column.null_count == 0
    table = pa.table({"embedding": column})
    meta = pq.ParquetFile(io.BytesIO(table_to_bytes(table))).metadata.row_group(0)
    assert meta.column(0).path_in_schema == "embedding.list.element"
    assert meta.column(0).compression == "UNCOMPRESSED" and not meta.column(0).is_stats_set
    back = pq.read_table(io.BytesIO(table_to_bytes(table))).column("embedding")
    assert back.type == column.type
    stored = emb.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(embeddings_to_numpy(back), stored)
    chunked = pa.chunked_array([column.slice(1, 2), column.slice(4)])          # offsets into one buffer
    np.testing.assert_array_equal(embeddings_to_numpy(chunked), stored[[1, 2, 4]])
    assert embeddings_to_numpy(column.slice(5)).shape == (0, 4)
    legacy = embedding_array(emb, 5, np.arange(5), "float16")                 # format 2: list<float16>
    assert legacy.type == pa.list_(pa.float16())
    np.testing.assert_array_equal(embeddings_to_numpy(legacy.slice(3)), stored[3:])
    with_null = embedding_array(emb[:2], 3, np.array([0, 2]), "float16", 4)
    assert with_null.type == column.type and with_null[1].as_py() is None
    np.testing.assert_array_equal(embeddings_to_numpy(with_null.filter(with_null.is_valid())), stored[:2])
    with pytest.raises(ValueError, match=r"1 of 3 embedding\(s\) are null"):
        embeddings_to_numpy(with_null)


def test_parts_carry_the_run_metadata_and_the_same_rows_give_the_same_bytes(tmp_path):
    metadata = run_metadata("label", ("siren", "dög bark"), 0.25, "ckpt-fp", "s3://models/clap.pt", "cache-fp",
                            "0.1.0")
    part = PartFormat("float32", 4, metadata)
    table = part.segments.empty_table()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert part.files.field("embedding").type == pa.list_(pa.float32())          # null in error rows
    data = table_to_bytes(table)
    assert data == table_to_bytes(part.segments.empty_table())
    (tmp_path / "copied.parquet").write_bytes(data)
    expected = {"job": "label", "labels": ["siren", "dög bark"], "lam": 0.25, "checkpoint_fingerprint": "ckpt-fp",
                "checkpoint_uri": "s3://models/clap.pt", "cache_fingerprint": "cache-fp", "das_version": "0.1.0",
                "format_version": 3}
    assert part_metadata(str(tmp_path / "copied.parquet")) == expected
    assert part_metadata(part.files) == expected
    assert pq.read_metadata(tmp_path / "copied.parquet").metadata[b"das.lam"] == b"0.25"
    assert part_metadata(FILES_SCHEMA) == {}                                      # a format 2 part says nothing
