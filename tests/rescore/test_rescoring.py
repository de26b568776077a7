"""das_core.rescore without Ray: settings, the watermark, earlier runs, refusals before any part is read."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from das_core.errors import ConfigError, Refused
from das_core.output.format import files_schema, segments_schema
from das_core.output.manifest import RunManifest
from das_core.output.tables import (
    embedding_array,
    embeddings_to_numpy,
    labelled_columns,
    mean_embedding,
    mean_embeddings,
)
from das_core.rescore.config import RescoreConfig
from das_core.rescore.plan import Watermark, plan_rescore, previous_run
from das_core.rescore.unit import rescore_tables, rescore_units
from das_core.scoring.cache import DriftCache
from das_core.scoring.scorer import label_files, label_windows


def test_config_refuses_bad_settings_when_made():
    with pytest.raises(ConfigError, match="--top-k"):
        RescoreConfig(embeddings="e", cache="c", out="o", top_k=0)
    with pytest.raises(ConfigError, match="--run-id"):
        RescoreConfig(embeddings="e", cache="c", out="o", run_id="../escape")
    with pytest.raises(ConfigError, match="progress_every_s"):
        RescoreConfig(embeddings="e", cache="c", out="o", progress_every_s=0)
    assert RescoreConfig(embeddings="e", cache="c", out="o", run_id="2026-01-02.nightly_1", top_k=3).top_k == 3


def test_watermark_is_void_when_the_label_output_changed():
    now = Watermark("sha256:a", ("t1", "t2"))
    assert Watermark.from_dict({"checkpoint_fingerprint": "sha256:a", "label_runs_started": ["t1"],
                                "units": []}).void_reason(now) is None
    assert "replaced" in Watermark.from_dict({"checkpoint_fingerprint": "sha256:a", "label_runs_started": ["t0"],
                                              "units": []}).void_reason(now)
    assert "checkpoint" in Watermark.from_dict({"checkpoint_fingerprint": "sha256:b", "label_runs_started": ["t1"],
                                                "units": []}).void_reason(now)
    assert Watermark.from_dict({}).void_reason(now) == "it records no units"
    assert Watermark.from_dict(None).void_reason(now) == "it records no units"


def test_watermark_round_trips_and_describes_the_label_output():
    label = RunManifest(job="label", status="complete", settings={"checkpoint_fingerprint": "sha256:a"},
                        runs=({"started": "t1"}, {"started": "t2"}))
    mark = Watermark.of(label, "sha256:a", {"u00000002", "u00000001"})
    assert mark.to_dict() == {"checkpoint_fingerprint": "sha256:a", "label_runs_started": ["t1", "t2"],
                              "units": ["u00000001", "u00000002"], "n_units": 2}
    assert Watermark.from_dict(mark.to_dict()) == mark
    assert mark.void_reason(Watermark.of(label, "sha256:a")) is None


def _write_run(out, run_id: str, status: str, finished: str, embeddings: str = "/labels") -> None:
    RunManifest(job="rescore", status=status, settings={"embeddings": embeddings}, runs=({"finished": finished},),
                extra={"run_id": run_id}).write(str(out / f"run_id={run_id}"))


def test_previous_run_is_the_last_complete_run_of_the_same_embeddings(tmp_path):
    assert previous_run(str(tmp_path / "nothing"), "/labels", "now") is None
    _write_run(tmp_path, "a", "complete", "2026-01-01T00:00:00+00:00")
    _write_run(tmp_path, "b", "complete", "2026-01-03T00:00:00+00:00")
    _write_run(tmp_path, "c", "failed", "2026-01-04T00:00:00+00:00")
    _write_run(tmp_path, "d", "complete", "2026-01-05T00:00:00+00:00", embeddings="/other")
    (tmp_path / "run_id=e").mkdir()
    (tmp_path / "run_id=e" / "_manifest.json").write_text("{not json")        # skipped with a warning
    (tmp_path / "unrelated").mkdir()
    assert previous_run(str(tmp_path), "/labels", "now").get("run_id") == "b"
    assert previous_run(str(tmp_path), "/labels", "b").get("run_id") == "a"      # never the run itself


def test_not_a_label_output_is_refused_before_anything_is_read(tmp_path, small_cache):
    (tmp_path / "not-labels").mkdir()
    with pytest.raises(Refused, match="_manifest.json"):
        plan_rescore(RescoreConfig(embeddings=str(tmp_path / "not-labels"), cache=small_cache,
                                   out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def label_unit(cache: DriftCache, dim: int | None = None) -> tuple[pa.Table, pa.Table]:
    """A label unit as stored: a.wav (2 windows), b.wav (1 window) and c.wav, which failed to decode; its window
    embeddings a FixedSizeList of ``dim`` (format 3), or a list (format 2) where ``dim`` is None."""
    emb = np.random.default_rng(0).standard_normal((3, cache.dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    segments = pa.table({"file_id": ["a", "a", "b"], "path": ["a.wav", "a.wav", "b.wav"],
                         "segment": pa.array([0, 1, 0], pa.int32()), "start_s": [0.0, 10.0, 0.0],
                         "end_s": [10.0, 12.0, 5.0], **labelled_columns(None, 3),
                         "embedding": embedding_array(emb, 3, np.arange(3), "float16", dim),
                         "snr_db": pa.nulls(3, pa.float64()), "seed": pa.nulls(3, pa.int64()),
                         "noise_source": pa.nulls(3, pa.string())}, schema=segments_schema("float16", dim))
    files = pa.Table.from_pylist([
        {"file_id": "a", "path": "a.wav", "status": "ok", "n_segments": 2, "duration_s": 12.0},
        {"file_id": "b", "path": "b.wav", "status": "ok", "n_segments": 1, "duration_s": 5.0},
        {"file_id": "c", "path": "c.wav", "status": "error", "error": "c.wav: not audio", "error_kind": "decode",
         "n_segments": 0}], schema=files_schema())
    return segments, files


@pytest.mark.parametrize("fixed", [True, False], ids=["format3", "format2"])
def test_rescore_tables_labels_the_stored_embeddings_and_keeps_error_rows(small_cache, fixed):
    cache = DriftCache.load(small_cache)
    segments, files = label_unit(cache, cache.dim if fixed else None)
    new_segments, new_files = rescore_tables(segments, files, cache, 2)
    emb = embeddings_to_numpy(segments.column("embedding"))          # float16 as stored, scored as float32
    expected = label_windows(emb, cache, 2)
    assert new_segments.column("label").to_pylist() == expected.label
    np.testing.assert_allclose(new_segments.column("score").to_numpy(), expected.score, atol=1e-6)
    # a format 2 unit's list<float16> comes out as this das's FixedSizeList<float16, D>, the same values
    assert new_segments.schema.field("embedding").type == pa.list_(pa.float16(), cache.dim)
    assert new_segments.column("embedding").cast(segments.schema.field("embedding").type).equals(
        segments.column("embedding"))
    rows = {r["file_id"]: r for r in new_files.to_pylist()}
    assert [rows["a"]["label"], rows["b"]["label"]] == label_files(emb, np.array([0, 0, 1]), 2, cache, 2).label
    assert rows["c"]["status"] == "error" and rows["c"]["label"] is None and rows["c"]["error"] == "c.wav: not audio"


def test_rescore_tables_refuses_a_damaged_unit(small_cache):
    cache = DriftCache.load(small_cache)
    segments, files = label_unit(cache)
    with pytest.raises(ValueError, match="damaged"):
        rescore_tables(segments.slice(0, 2), files, cache, 2)          # b.wav lost its window


def test_rescoring_a_pack_of_units_at_once_gives_each_unit_the_rows_it_gets_alone(small_cache):
    """``rescore_units`` builds a pack's rows in one pass: each unit's rows are those of that unit rescored
    alone, byte for byte, even where two units hold the same file id, a unit holds no windows, or a file's
    windows are out of order."""
    cache = DriftCache.load(small_cache)
    segments, files = label_unit(cache, cache.dim)
    shuffled = segments.take([2, 1, 0])                                 # b, then a's windows backwards
    no_windows = files.filter(pc.equal(files.column("status"), "error"))
    units = [("u1", segments, files), ("u2", None, no_windows), ("u3", shuffled, files)]
    together = rescore_units(units, cache, 2)
    for (unit, seg, fil), (name, new_seg, new_fil) in zip(units, together):
        alone_seg, alone_fil = rescore_tables(seg if seg is not None else segments.slice(0, 0), fil, cache, 2)
        assert name == unit and new_seg.equals(alone_seg) and new_fil.equals(alone_fil)
    assert together[0][1].equals(together[2][1]) and together[0][2].equals(together[2][2])
    assert together[0][2].column("file_id").to_pylist() == ["a", "b", "c"]
    assert together[0][2].column("n_segments").to_pylist() == [2, 1, 0]
    assert together[0][1].column("segment").to_pylist() == [0, 1, 0]


def test_a_files_embedding_is_the_normalised_mean_of_its_windows_however_many_files_are_built_with_it():
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((40, 16)).astype(np.float16).astype(np.float32)
    owner = rng.integers(0, 12, 40)                                    # files of 0 to many windows, interleaved
    together = mean_embeddings(emb, owner, 13)
    for f in range(13):
        alone = mean_embedding(emb[owner == f]) if (owner == f).any() else np.zeros(16)
        assert np.array_equal(together[f], alone), f                    # the same bits, not just close
    assert not together[12].any()                                       # a file of no windows: zeros
