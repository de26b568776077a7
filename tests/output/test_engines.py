"""Query engines read a run's folders directly, with no cast: pyarrow, pandas, Polars and DuckDB (format 3), the
schema metadata of every part, and format 2 runs (list<float16> embeddings) still read, rescore and resume."""

from __future__ import annotations

import json
import os
import shutil

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import BROKEN_WAV, label_run, read_output

from das_core import __version__
from das_core.output.format import END_TAG, FILES_DIR, SEGMENTS_DIR, parse_pack_name, part_metadata, part_name
from das_core.output.manifest import RunManifest
from das_core.output.store import OutputStore
from das_core.output.tables import embeddings_to_numpy
from das_core.scoring.cache import DriftCache
from das_core.search.config import SearchConfig
from jobs.rescore import RescoreConfig
from jobs.rescore import run as rescore_run
from jobs.search import run as search_run

pytestmark = pytest.mark.integration    # a label run on Ray

LABELS = ["siren", "dog_bark", "engine_idling"]
CLIPS = {"a.wav": (3.0, 16000, 440.0), "b.flac": (25.0, 22050, 880.0), "sub/c.wav": (12.0, 8000, 300.0)}


@pytest.fixture(scope="module")
def cache_uri(make_cache) -> str:
    return make_cache(LABELS)


@pytest.fixture(scope="module")
def labelled(make_label_output, cache_uri) -> str:
    """A label run of 3 good files (6 windows) and a broken one, two units of two files."""
    return make_label_output(CLIPS, cache_uri, seed=5, broken={"broken.wav": BROKEN_WAV}, files_per_unit=2)


def as_format2(out: str, dest: str) -> str:
    """A copy of the run ``out`` at ``dest`` as das wrote it in format 2: one Parquet part per unit and folder
    (no packs), list<float16> embeddings, no schema metadata, ``format_version`` 2 in the manifest."""
    shutil.copytree(out, dest)
    store = OutputStore(dest)
    listing = store.listing()
    for folder, tag in ((SEGMENTS_DIR, 0), (FILES_DIR, END_TAG)):
        for unit, table in store.read_by_unit(listing.committed_units(), folder, listing):
            i = table.schema.get_field_index("embedding")
            table = table.set_column(i, "embedding", table.column("embedding").cast(pa.list_(pa.float16())))
            store.write_part(folder, part_name(unit, tag), table.replace_schema_metadata(None))
        for name in listing.names[folder]:
            if parse_pack_name(name):
                os.remove(os.path.join(dest, folder, name))
    manifest = RunManifest.read(dest).to_dict()
    RunManifest.from_dict({**manifest, "format_version": 2}).write(dest)
    return dest


def test_segments_and_files_read_in_every_engine_without_a_cast(labelled, cache_uri):
    segments, files = read_output(labelled)
    dim = DriftCache.load(cache_uri).dim
    n = len(segments)
    matrix = embeddings_to_numpy(segments.column("embedding"))
    assert matrix.shape == (n, dim) and n == 6

    table = pq.read_table(os.path.join(labelled, "segments"))                              # pyarrow
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), dim) and len(table) == n
    assert pq.read_table(os.path.join(labelled, "files")).schema.field("embedding").type == pa.list_(pa.float16())

    frame = pd.read_parquet(os.path.join(labelled, "segments"))                             # pandas
    assert len(frame) == n and all(len(e) == dim for e in frame["embedding"])
    assert len(pd.read_parquet(os.path.join(labelled, "files"))) == 4

    polars_segments = pl.read_parquet(os.path.join(labelled, "segments", "*.parquet"))     # Polars: an Array
    assert polars_segments.schema["embedding"] == pl.Array(pl.Float16, dim)
    by_key = polars_segments.sort(["file_id", "segment"])
    np.testing.assert_array_equal(by_key["embedding"].to_numpy().astype(np.float32), matrix)
    files_frame = pl.scan_parquet(os.path.join(labelled, "files", "*.parquet")).collect()
    assert files_frame.height == 4 and files_frame.filter(pl.col("status") == "error")["embedding"].null_count() == 1


def test_duckdb_ranks_windows_by_list_cosine_similarity_and_joins_their_files(labelled):
    segments, files = read_output(labelled)
    matrix = embeddings_to_numpy(segments.column("embedding")).astype(np.float64)
    query = matrix[3]
    vector = ", ".join(repr(float(x)) for x in query)
    dim = len(query)
    rows = duckdb.sql(f"""
        SELECT s.file_id, s.segment, f.path, f.duration_s,
               list_cosine_similarity(s.embedding, [{vector}]::FLOAT[{dim}]) AS similarity
        FROM read_parquet('{labelled}/segments/*.parquet') AS s
        JOIN read_parquet('{labelled}/files/*.parquet') AS f USING (file_id)
        ORDER BY similarity DESC, s.file_id, s.segment
        LIMIT 100""").fetchall()
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    expected = unit @ (query.astype(np.float32).astype(np.float64) / np.linalg.norm(query))
    ids, segment = segments.column("file_id").to_pylist(), segments.column("segment").to_pylist()
    assert len(rows) == len(segments)
    assert (rows[0][0], rows[0][1]) == (ids[3], segment[3])
    got = {(r[0], r[1]): r[4] for r in rows}
    for i in range(len(ids)):
        assert got[(ids[i], segment[i])] == pytest.approx(expected[i], abs=1e-5)
    paths = dict(zip(files.column("file_id").to_pylist(), files.column("path").to_pylist()))
    assert all(r[2] == paths[r[0]] for r in rows)


def test_duckdb_ranks_files_once_their_null_rows_are_out_of_the_vector(labelled):
    """files/ has a null embedding in each error row. DuckDB 2.0.1's list_cosine_similarity refuses a vector
    holding one even behind WHERE; rebuilding the list (list_transform) makes the same query run."""
    _, files = read_output(labelled)
    ok = files.filter(pc.equal(files.column("status"), "ok"))
    matrix = embeddings_to_numpy(ok.column("embedding")).astype(np.float64)
    vector = ", ".join(repr(float(x)) for x in matrix[0])
    similarity = f"list_cosine_similarity({{}}, [{vector}]::FLOAT[{matrix.shape[1]}])"
    query = (f"SELECT file_id, {{}} AS similarity FROM read_parquet('{labelled}/files/*.parquet') "
             "WHERE status = 'ok' ORDER BY similarity DESC")
    with pytest.raises(duckdb.InvalidInputException, match="can not contain NULL values"):
        duckdb.sql(query.format(similarity.format("embedding"))).fetchall()
    rows = duckdb.sql(query.format(similarity.format("list_transform(embedding, lambda x: x)"))).fetchall()
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    expected = dict(zip(ok.column("file_id").to_pylist(), unit @ unit[0]))
    assert rows[0][0] == ok.column("file_id")[0].as_py() and len(rows) == len(expected)
    assert all(r[1] == pytest.approx(expected[r[0]], abs=1e-5) for r in rows)


def test_every_part_says_what_made_it(labelled, cache_uri, tmp_path):
    cache = DriftCache.load(cache_uri)
    manifest = RunManifest.read(labelled)
    expected = {"job": "label", "labels": list(cache.labels), "lam": cache.lam,
                "checkpoint_fingerprint": manifest.checkpoint_fingerprint, "checkpoint_uri": manifest.checkpoint_uri,
                "cache_fingerprint": cache.fingerprint, "das_version": __version__, "format_version": 3}
    names = [(folder, name) for folder in (SEGMENTS_DIR, FILES_DIR)
             for name in sorted(os.listdir(os.path.join(labelled, folder)))]
    assert len(names) == 2                   # the run's one pack: its segments file and its files file
    copied = shutil.copy(os.path.join(labelled, *names[0]), tmp_path / "away.parquet")
    assert part_metadata(copied) == expected
    for folder, name in names:
        assert part_metadata(os.path.join(labelled, folder, name)) == expected, name
    kv = dict(duckdb.sql(f"SELECT decode(key), decode(value) FROM parquet_kv_metadata('{copied}')").fetchall())
    assert json.loads(kv["das.labels"]) == LABELS and kv["das.job"] == "label"


def test_a_format2_run_still_searches_and_rescores_into_format3(labelled, cache_uri, tiny_ckpt, tmp_path):
    old = as_format2(labelled, str(tmp_path / "old"))
    assert pq.read_table(os.path.join(old, "segments")).schema.field("embedding").type == pa.list_(pa.float16())
    search = {"checkpoint": tiny_ckpt, "texts": ["a siren"], "top": 4, "local": True}
    assert search_run(SearchConfig(embeddings=old, **search)).equals(
        search_run(SearchConfig(embeddings=labelled, **search)))

    before, _ = read_output(labelled)
    dim = DriftCache.load(cache_uri).dim
    for copy in (True, False):           # embeddings written in format 3, or read back from the format 2 run
        run_id = f"copy-{copy}"
        rescore_run(RescoreConfig(embeddings=old, cache=cache_uri, out=str(tmp_path / "rescored"), run_id=run_id,
                                  local=True, copy_embeddings=copy))
        run_dir = os.path.join(tmp_path, "rescored", f"run_id={run_id}")
        segments = pq.read_table(os.path.join(run_dir, "segments"))
        assert ("embedding" in segments.column_names) == copy
        if copy:
            assert segments.schema.field("embedding").type == pa.list_(pa.float16(), dim)
        meta = part_metadata(segments.schema)
        assert meta["job"] == "rescore" and meta["format_version"] == 3 and meta["labels"] == LABELS
        assert RunManifest.read(run_dir).format_version == 3
        after, files = read_output(run_dir)
        assert after.column("label").equals(before.column("label"))
        np.testing.assert_array_equal(embeddings_to_numpy(after.column("embedding")),
                                      embeddings_to_numpy(before.column("embedding")))
        assert len(files) == 4 and os.path.exists(os.path.join(run_dir, "report", "report.md"))


def test_a_format2_run_resumes_in_its_own_format(labelled, cache_uri, tiny_ckpt, tmp_path):
    old = as_format2(labelled, str(tmp_path / "old"))
    store = OutputStore(old)
    unit = store.listing().committed_units()[-1]
    store.remove_part(FILES_DIR, f"part-{unit}-end.parquet")                 # as if interrupted before its commit
    label_run(os.path.join(os.path.dirname(labelled), "audio"), cache_uri, tiny_ckpt, old, resume=True,
              files_per_unit=2)
    assert RunManifest.read(old).format_version == 2
    segments = pq.read_table(os.path.join(old, "segments"))                  # one type in every part
    assert segments.schema.field("embedding").type == pa.list_(pa.float16())
    redone = [n for n in os.listdir(os.path.join(old, FILES_DIR)) if unit in n]
    # the redone unit ends in the run's tail pack, beside the format 2 unit: no format 3 metadata in it
    assert redone and all(part_metadata(os.path.join(old, FILES_DIR, n)).get("format_version", 2) == 2
                          for n in redone)
    assert read_output(old)[0].equals(read_output(as_format2(labelled, str(tmp_path / "again")))[0])
