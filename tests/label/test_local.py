"""Small jobs without a cluster (``label.local``, ``runtime.engine``): the same rows as Ray, resume, budget."""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pytest
from conftest import label_run, read_output, write_clips

from das_core.errors import EngineRefused, RunFailed
from das_core.label.config import LabelConfig
from das_core.output.format import END_TAG, FILES_DIR, SEGMENTS_DIR, part_name
from das_core.output.manifest import RunManifest
from das_core.output.store import OutputStore
from das_core.runtime import engine
from das_core.runtime.engine import LOCAL, RAY

LONG = {"long.wav": (35.0, 16000, 440.0, 0.05)}          # 4 windows: two chunks of 2, pieces across them
CLIPS = {**LONG, "a.wav": (1.0, 22050, 880.0), "b.wav": (12.0, 44100, 330.0, 0.1), "c.flac": (0.4, 8000, 220.0)}
BROKEN = {"broken.wav": b"RIFF\x00\x00\x00\x00WAVEfmt not a wav"}
SMALL = {"chunk_windows": 2, "batch_size": 2, "files_per_unit": 2}


def _units(files: list[int], sizes: list[int | None], shards: list[str | None] | None = None) -> pa.Table:
    n = len(files)
    return pa.table({"unit": [f"u{i}" for i in range(n)], "file_ids": [[f"f{j}" for j in range(k)] for k in files],
                     "bytes": pa.array(sizes, pa.int64()), "shard": pa.array(shards or [None] * n, pa.string())})


# ------------------------------------------------------------------ the choice (no Ray, no model)


def test_small_label_jobs_run_here_and_large_ones_on_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(engine, "ray_in_this_process", lambda: False)    # other tests may have started Ray here
    small = _units([3, 2], [10 * 2**20, 5])
    assert engine.choose(False, False, engine.label_too_big(small, 0.0, 1)) == (LOCAL, "small job")
    assert engine.choose(False, False, engine.label_too_big(small, 1.0, 1))[0] == LOCAL      # one GPU in-process
    assert engine.choose(False, False, engine.label_too_big(small, 2.0, 2))[0] == RAY
    many = _units([64, 1], [1, 1])
    assert "65 files to do (> 64)" in engine.choose(False, False, engine.label_too_big(many, 0.0, 1))[1]
    big = _units([1], [engine.LOCAL_MAX_BYTES + 1])
    assert engine.choose(False, False, engine.label_too_big(big, 0.0, 1))[0] == RAY
    unknown_shard = _units([1], [None], ["tar"])
    assert engine.choose(False, False, engine.label_too_big(unknown_shard, 0.0, 1)) == (RAY, "shards of unknown size")
    assert engine.choose(True, False, engine.label_too_big(many, 0.0, 1)) == (LOCAL, "--local")
    assert engine.choose(False, True, None) == (RAY, "--ray")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert engine.choose(False, False, None) == (RAY, "RAY_ADDRESS is set")
    assert engine.choose(True, False, None)[0] == LOCAL
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(engine, "ray_in_this_process", lambda: True)
    assert engine.choose(False, False, None) == (RAY, "Ray is already running in this process")


def test_rescore_and_search_threshold():
    assert engine.segments_too_many(engine.LOCAL_MAX_SEGMENTS) is None
    assert "stored windows" in engine.segments_too_many(engine.LOCAL_MAX_SEGMENTS + 1)
    assert engine.segments_too_many(None) is not None


@pytest.mark.parametrize("kw, message", [({"local": True, "ray": True}, "--local and --ray exclude each other"),
                                         ({"local": True, "num_gpus": 2.0}, "--num-gpus 2 asks for more"),
                                         ({"local": True, "actors": 2}, "--actors 2 asks for more")])
def test_local_refuses_what_needs_ray(kw, message):
    with pytest.raises(EngineRefused, match=message):
        LabelConfig(input="in", cache="c.npz", checkpoint="x.pt", out="out", **kw)


# ------------------------------------------------------------------ the same rows as Ray

@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("local-archive")
    write_clips(folder, CLIPS, seed=3, broken=BROKEN)
    return str(folder)


@pytest.fixture(scope="module")
def local_out(archive, small_cache, tiny_ckpt, tmp_path_factory) -> str:
    """A local run left in small parts (--pack-rows 0, what a run killed before any pack leaves)."""
    out = str(tmp_path_factory.mktemp("local") / "out")
    label_run(archive, small_cache, tiny_ckpt, out, local=True, pack_rows=0, **SMALL)
    return out


def _assert_same(out: str, reference: str) -> None:
    (segments, files), (ref_segments, ref_files) = read_output(out), read_output(reference)
    assert segments.num_rows == ref_segments.num_rows and files.num_rows == ref_files.num_rows
    for name in ref_segments.column_names:     # every column, the embedding bytes included
        assert segments.column(name).equals(ref_segments.column(name)), name
    for name in ref_files.column_names:
        assert files.column(name).equals(ref_files.column(name)), name
    assert segments.equals(ref_segments) and files.equals(ref_files)


@pytest.mark.integration
@pytest.mark.slow
def test_local_and_ray_write_the_same_rows(ray_local, archive, small_cache, tiny_ckpt, local_out, tmp_path):
    on_ray = str(tmp_path / "ray")
    label_run(archive, small_cache, tiny_ckpt, on_ray, ray=True, pack_rows=2, **SMALL)     # packed by pack tasks
    listing = OutputStore(on_ray).listing()
    assert len(listing.packs(FILES_DIR)) >= 2 and not listing.units(FILES_DIR) and not listing.units(SEGMENTS_DIR)
    _assert_same(local_out, on_ray)
    segments, files = read_output(local_out)
    assert files.num_rows == len(CLIPS) + len(BROKEN)
    assert files.filter(pa.compute.equal(files.column("file_id"), "broken.wav")).column("status").to_pylist() == \
        ["error"]
    assert segments.filter(pa.compute.equal(segments.column("file_id"), "long.wav")).num_rows == 4
    assert [r["engine"] for r in RunManifest.read(local_out).runs] == [LOCAL]
    assert [r["engine"] for r in RunManifest.read(on_ray).runs] == [RAY]
    # a Ray run that lost its last range (pack and all) is completed in this process with the same rows
    store = OutputStore(on_ray)
    *_, last = listing.packs(FILES_DIR)[-1]
    for folder in (SEGMENTS_DIR, FILES_DIR):
        if last in listing.names[folder]:
            store.remove_part(folder, last)
    label_run(archive, small_cache, tiny_ckpt, on_ray, resume=True, local=True, **SMALL)
    _assert_same(on_ray, local_out)
    assert [r["engine"] for r in RunManifest.read(on_ray).runs] == [RAY, LOCAL]


@pytest.mark.integration
def test_resume_after_an_interrupted_local_run(archive, small_cache, tiny_ckpt, local_out, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(local_out, out)
    store = OutputStore(out)
    committed = sorted(store.listing().committed_units())
    assert len(committed) >= 3
    for unit in committed[:1] + committed[-1:]:     # the unit of long.wav is last (sorted by path)
        os.remove(store.path(FILES_DIR, part_name(unit, END_TAG)))
    assert len(store.listing().committed_units()) == len(committed) - 2
    manifest = label_run(archive, small_cache, tiny_ckpt, out, resume=True, local=True, **SMALL)
    _assert_same(out, local_out)
    assert manifest["counts"]["files"] == len(CLIPS) + len(BROKEN)
    assert [r["engine"] for r in manifest["runs"]] == [LOCAL, LOCAL]
    assert manifest["runs"][-1]["units_to_do"] == 2
    listing = store.listing()           # resumed to the end: every unit packed, nothing left in small parts
    assert set(listing.packed_units()) == set(committed) and not listing.units(FILES_DIR)


@pytest.mark.integration
def test_error_budget_stops_a_local_run_early(small_cache, tiny_ckpt, tmp_path):
    src = tmp_path / "in"
    write_clips(src, {f"z{i}.wav": (1.0, 16000, 300.0 + i) for i in range(4)},
                broken={f"a-bad{i}.wav": BROKEN["broken.wav"] for i in range(5)})    # listed first
    out = str(tmp_path / "out")
    with pytest.raises(RunFailed, match="stopping early"):
        label_run(src, small_cache, tiny_ckpt, out, local=True, files_per_unit=1, max_error_fraction=0.0)
    manifest = RunManifest.read(out)
    assert manifest.status == "failed" and manifest.counts["files"] < 9 and manifest.counts["ok"] == 0
    assert manifest.runs[-1]["engine"] == LOCAL


@pytest.mark.integration
def test_a_file_that_kills_the_decoder_is_one_error_row_in_a_local_run(archive, small_cache, tiny_ckpt, local_out,
                                                                      tmp_path, monkeypatch):
    """The decoder runs in a child process: its death costs that file one ``decoder_crash`` row, not the run."""
    from das_core.audio.info import DECODER_CRASH

    monkeypatch.setenv("DAS_TEST_CRASH_ON", "b.wav")           # the decoding process SIGKILLs itself there
    out = str(tmp_path / "out")
    manifest = label_run(archive, small_cache, tiny_ckpt, out, local=True, **SMALL)
    (segments, files), (ref_segments, ref_files) = read_output(out), read_output(local_out)
    crashed = files.filter(pa.compute.equal(files.column("file_id"), "b.wav")).to_pylist()
    assert len(crashed) == 1 and crashed[0]["error_kind"] == DECODER_CRASH and crashed[0]["status"] == "error"
    others = pa.compute.not_equal(files.column("file_id"), "b.wav")
    assert files.filter(others).select(["file_id", "status", "label", "embedding"]).equals(
        ref_files.filter(pa.compute.not_equal(ref_files.column("file_id"), "b.wav")).select(
            ["file_id", "status", "label", "embedding"]))
    assert segments.equals(ref_segments.filter(pa.compute.not_equal(ref_segments.column("file_id"), "b.wav")))
    assert manifest["counts"]["files"] == len(CLIPS) + len(BROKEN) and manifest["status"] == "complete"
