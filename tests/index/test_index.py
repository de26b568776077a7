"""das index and das search with it, on a small label run, through the real ``das`` command (relative paths).

One label run (module fixture) is indexed and searched; the staleness test then extends that run by a
``--resume`` over a larger archive, so it runs last in the module and the others only read the run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import label_run, write_clips
from everyday.conftest import das

from das_core.index.build import load_index, unit_rows
from das_core.index.record import IndexRecord
from das_core.output.store import OutputStore
from das_core.output.tables import embeddings_to_numpy
from das_core.search.config import SearchConfig
from jobs.rescore import RescoreConfig
from jobs.rescore import run as rescore
from jobs.search import run as search

integration = pytest.mark.integration

CLIPS = {f"c{i}.wav": (3.0 + 7 * i, 16000, 200.0 + 90 * i, 0.1) for i in range(4)}
MORE = {f"later/m{i}.wav": (12.0, 16000, 700.0 + 50 * i, 0.1) for i in range(2)}
QUERIES = ["a siren", "a dog barking"]


@pytest.fixture(scope="module")
def root(tmp_path_factory, small_cache, tiny_ckpt):
    """A working folder with ``archive/`` labelled into ``out/`` (one file a unit) and both levels indexed."""
    folder = tmp_path_factory.mktemp("index-run")
    write_clips(folder / "archive", CLIPS)
    shutil.copy(small_cache, folder / "cache.npz")
    shutil.copy(tiny_ckpt, folder / "ckpt.pt")
    label_run(folder / "archive", str(folder / "cache.npz"), str(folder / "ckpt.pt"), folder / "out", local=True,
              files_per_unit=1)
    for level in ("segment", "file"):
        result = das(["index", "out", "--level", level], folder)
        assert result.rc == 0, result.out
        assert "built (no index yet)" in result.out
    return folder


def searched(root, level: str = "segment", exact: bool = False, top: int = 5):
    """``das search``'s matches, in this process (the command's own library call), for ``QUERIES``."""
    config = SearchConfig(embeddings=str(root / "out"), checkpoint=str(root / "ckpt.pt"), texts=QUERIES,
                          level=level, top=top, local=True, exact=exact)
    return search(config).to_pylist()


def same_matches(found: list[dict], exact: list[dict]) -> None:
    """The same windows in the same ranks, and scores equal to the scan's to float32 rounding."""
    assert [(m["query"], m["rank"], m["file_id"], m["start_s"]) for m in found] == \
        [(m["query"], m["rank"], m["file_id"], m["start_s"]) for m in exact]
    assert all(abs(a["score"] - b["score"]) < 1e-6 for a, b in zip(found, exact))


@integration
def test_index_record_and_search_through_das(root):
    record = json.loads((root / "out" / "_index" / "segment" / "index.json").read_text())
    assert record["library"] == "faiss" and record["level"] == "segment"
    assert sorted(record["units"]) == [f"u{i:08d}" for i in range(len(CLIPS))]
    assert record["rows"] == sum(n for _, n in record["units"].values()) == pq.read_table(
        root / "out" / "segments", columns=["file_id"]).num_rows
    assert record["parameters"]["factory"] == "IVF1,SQfp16"       # a tiny run: one list, every row probed
    results = {}
    for flags in ([], ["--exact"]):
        name = f"{'exact' if flags else 'index'}.parquet"
        result = das(["search", "--embeddings", "out", "--checkpoint", "ckpt.pt", "--text", QUERIES[0], "--top", "4",
                      "--local", "--out", name, *flags], root)
        assert result.rc == 0, result.out
        assert ("index: IVF1,SQfp16" in result.out) is not bool(flags)
        results[name] = pq.read_table(root / name).to_pylist()
    assert len(results["exact.parquet"]) == 4
    same_matches(results["index.parquet"], results["exact.parquet"])


@integration
def test_recall_against_exact_at_both_levels(root):
    for level in ("segment", "file"):
        found, exact = searched(root, level), searched(root, level, exact=True)
        assert len(exact) == len(QUERIES) * min(5, 2 * len(CLIPS) if level == "segment" else len(CLIPS))
        same_matches(found, exact)


@integration
def test_the_index_holds_the_stored_embeddings_exactly(root):
    """What the re-ranking reads back is each unit's stored float16 embedding, bit for bit, in index order."""
    record = IndexRecord.read(str(root / "out"), "segment")
    index = load_index(str(root / "out"), record)
    for unit, (first, rows) in record.units.items():
        stored = embeddings_to_numpy(unit_rows(OutputStore(str(root / "out")), unit, "segment").column("embedding"))
        assert np.array_equal(index.reconstruct_batch(np.arange(first, first + rows)), stored)


@integration
def test_refusals_in_one_line(root, tmp_path):
    (tmp_path / "music").mkdir()
    (tmp_path / "music" / "song.mp3").write_bytes(b"ID3 not das's")
    line = das(["index", "music"], tmp_path).error_line("das index")
    assert "_manifest.json" in line and "not the output of `das label`" in line
    (tmp_path / "empty").mkdir()
    shutil.copy(root / "out" / "_manifest.json", tmp_path / "empty" / "_manifest.json")
    assert "no committed unit yet" in das(["index", "empty"], tmp_path).error_line("das index")
    rescore(RescoreConfig(embeddings=str(root / "out"), cache=str(root / "cache.npz"), out=str(tmp_path / "rs"),
                          run_id="r1", local=True, report=False))
    line = das(["index", "rs/run_id=r1"], tmp_path).error_line("das index")
    assert "holds no embeddings of its own" in line and f"das index {root / 'out'}" in line


@integration
def test_rows_files_hold_many_units_and_hits_read_their_row_groups(root, tmp_path, monkeypatch, caplog):
    """Rows files are cut by rows, not units (here every 3 rows, in groups of 2), named by their first id; a
    search reads its hits' rows back through them; an index of an older das (a rows file per unit) is not used
    by search and is rebuilt by `das index`."""
    from das_core.index import build

    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    monkeypatch.setattr(build, "ROWS_PER_FILE", 3)
    monkeypatch.setattr(build, "ROWS_GROUP", 2)
    record, added, why = build.build_index(str(out), "segment", rebuild=True)
    assert why == "--rebuild" and len(added) == len(CLIPS)
    names = sorted(n for n in os.listdir(out / "_index" / "segment") if n.startswith("rows-"))
    assert names == [f"rows-{first:012d}.parquet" for first, _ in record.rows_files]
    assert 1 < len(names) < len(CLIPS) and sum(n for _, n in record.rows_files) == record.rows
    assert pq.ParquetFile(out / "_index" / "segment" / names[0]).num_row_groups == 2
    config = SearchConfig(embeddings=str(out), checkpoint=str(root / "ckpt.pt"), texts=QUERIES, top=8, local=True)
    same_matches(search(config).to_pylist(), searched(root, top=8, exact=True))
    old = json.loads((out / "_index" / "segment" / "index.json").read_text())
    old["rows_files"] = []
    (out / "_index" / "segment" / "index.json").write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING, logger="das.search"):
        same_matches(search(config).to_pylist(), searched(root, top=8, exact=True))
    assert "is not used: an older das built it" in caplog.text
    assert build.build_index(str(out), "segment")[2] == "an older das built it (one rows file per unit)"
    monkeypatch.setattr(build, "HNSW_LISTS", 1)          # a large index's centres, searched through HNSW
    record = build.build_index(str(out), "segment", rebuild=True)[0]
    assert record.parameters["factory"] == "IVF1_HNSW32,SQfp16"
    same_matches(search(config).to_pylist(), searched(root, top=8, exact=True))


@integration
def test_stale_index_is_scanned_then_refreshed_and_overwrite_removes_it(root, caplog):
    write_clips(root / "archive", MORE, seed=5)
    label_run(root / "archive", str(root / "cache.npz"), str(root / "ckpt.pt"), root / "out", local=True,
              files_per_unit=1, resume=True)
    with caplog.at_level(logging.WARNING, logger="das.search"):
        stale = searched(root)
    assert "is stale: 2 of 6 committed unit(s) were committed after it was built" in caplog.text
    exact = searched(root, exact=True)
    assert any(m["file_id"].startswith("later/") for m in exact)
    same_matches(stale, exact)
    result = das(["index", "out"], root)
    assert result.rc == 0 and "refreshed: 2 unit(s) added" in result.out, result.out
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="das.search"):
        same_matches(searched(root), exact)
    assert "stale" not in caplog.text
    (root / "out" / "_index" / "segment" / "notes.txt").write_text("the user's")
    label_run(root / "archive", str(root / "cache.npz"), str(root / "ckpt.pt"), root / "out", local=True,
              files_per_unit=1, overwrite=True)
    assert sorted(os.listdir(root / "out" / "_index")) == ["segment"]
    assert os.listdir(root / "out" / "_index" / "segment") == ["notes.txt"]
