"""das label end to end: a real local Ray cluster, a real S3 endpoint (moto), generated audio."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import soundfile as sf
from conftest import TEST_BATCH_SIZE, sine

from das_core.audio import info
from das_core.audio.windows import SAMPLE_RATE, window_count
from das_core.errors import CacheMismatchError
from das_core.errors import Refused as UsageError
from das_core.errors import RunFailed as JobFailed
from das_core.io import storage
from das_core.output.format import FILES_DIR
from das_core.output.manifest import RunManifest
from das_core.output.store import OutputStore
from das_core.scoring.cache import DriftCache
from jobs.label import LabelConfig, main, run

pytestmark = pytest.mark.integration    # Ray, S3 (moto) or subprocesses: `make test-fast` skips it

LABELS = ["siren", "dog_bark", "engine_idling", "white_noise"]

# name -> (seconds, rate, channels, format, subtype)
GOOD = {
    "short/blip.wav": (0.05, 16000, 1, "WAV", "PCM_16"),
    "short/three.flac": (3.0, 22050, 2, "FLAC", "PCM_16"),
    "short/nearly-ten.ogg": (9.99, 44100, 1, "OGG", "VORBIS"),
    "ten.wav": (10.0, 8000, 8, "WAV", "PCM_16"),
    "ten-and-half.flac": (10.5, 96000, 1, "FLAC", "PCM_24"),
    "eleven.wav": (11.0, 48000, 2, "WAV", "FLOAT"),
    "long/minute.flac": (65.0, 16000, 1, "FLAC", "PCM_16"),
}
# name -> error kind
BAD = {
    "bad/zero.wav": info.EMPTY,
    "bad/cut.flac": info.TRUNCATED,
    "bad/random.wav": info.NOT_AUDIO,
    "bad/notes.ogg": info.NOT_AUDIO,
    "bad/nan.wav": info.NON_FINITE,
}


def _encode(x, rate, fmt, subtype) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def make_archive() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    files = {}
    for i, (name, (seconds, rate, ch, fmt, sub)) in enumerate(GOOD.items()):
        x = sine(200 + 150 * i, seconds, rate, channels=ch, amp=0.25)
        x = x + 0.01 * rng.standard_normal(x.shape).astype(np.float32)
        files[name] = _encode(x, rate, fmt, sub)
    flac = _encode(sine(300, 5.0, 16000), 16000, "FLAC", "PCM_16")
    nan = sine(300, 2.0, 16000)
    nan[5000] = np.nan
    files.update({
        "bad/zero.wav": b"",
        "bad/cut.flac": flac[: len(flac) // 2],
        "bad/random.wav": rng.bytes(20000),
        "bad/notes.ogg": b"these are my notes, not an ogg file\n" * 50,
        "bad/nan.wav": _encode(nan, 16000, "WAV", "FLOAT"),
        "README.txt": b"not picked up: extension filter",
    })
    return files


def expected_windows(name: str) -> int:
    seconds = GOOD[name][0]
    return window_count(int(round(seconds * SAMPLE_RATE)))


@pytest.fixture(scope="module")
def s3_archive(s3_endpoint, ray_local):
    import boto3

    bucket = "das-label-archive"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    for name, data in make_archive().items():
        s3.put_object(Bucket=bucket, Key=f"archive/{name}", Body=data)
    return f"s3://{bucket}/archive"


@pytest.fixture(scope="module")
def cache_uri(tiny_ckpt, encoder, s3_archive):
    uri = s3_archive.replace("/archive", "/caches/urban.npz")
    DriftCache.build(encoder.embed_text, LABELS, ["traffic noise", "wind noise"], encoder_id=encoder.encoder_id,
                     encoder_name="tiny.pt").save(uri)
    return uri


def config(src, cache, ckpt, out, **kw) -> LabelConfig:
    kw.setdefault("batch_size", TEST_BATCH_SIZE)
    kw.setdefault("max_error_fraction", 1.0)
    kw.setdefault("progress_every_s", 1e9)
    return LabelConfig(input=src, cache=cache, checkpoint=ckpt, out=out, **kw)


def read(out: str, sub: str):
    store = OutputStore(out)
    if sub == "files":
        return store.read_files().to_pandas().sort_values("file_id").reset_index(drop=True)
    table = store.read_segments()
    return table.to_pandas().sort_values(["file_id", "segment"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def first_run(s3_archive, cache_uri, tiny_ckpt):
    out = s3_archive.replace("/archive", "/labels/run1")
    manifest = run(config(s3_archive, cache_uri, tiny_ckpt, out, files_per_unit=4))
    return out, manifest


def test_every_file_is_accounted_for(first_run):
    out, manifest = first_run
    files = read(out, "files")
    assert sorted(files.file_id) == sorted(list(GOOD) + list(BAD))
    for _, row in files.iterrows():
        if row.file_id in GOOD:
            assert row.status == "ok" and row.error is None, row.error
            assert row.n_segments == expected_windows(row.file_id)
            assert row.sample_rate == GOOD[row.file_id][1] and row.channels == GOOD[row.file_id][2]
            assert row.duration_s == pytest.approx(GOOD[row.file_id][0], abs=1e-3)
        else:
            assert row.status == "error" and row.n_segments == 0
            assert row.error_kind == BAD[row.file_id], row.error
            assert row.path in row.error
    counts = manifest["counts"]
    assert counts["files"] == len(GOOD) + len(BAD) == counts["ok"] + counts["error"]
    assert counts["errors_by_kind"] == {"empty": 1, "non_finite": 1, "not_audio": 2, "truncated": 1}
    assert manifest["status"] == "complete" and manifest["checkpoint"]["weights"] == "random"
    assert json.loads(storage.read_bytes(out + "/_manifest.json")) == manifest


def test_windows_and_labels(first_run):
    out, _ = first_run
    segs = read(out, "segments")
    files = read(out, "files")
    assert len(segs) == sum(expected_windows(n) for n in GOOD) == files.n_segments.sum()
    assert set(segs.file_id) == set(GOOD)
    for name in GOOD:
        rows = segs[segs.file_id == name]
        assert rows.segment.tolist() == list(range(expected_windows(name)))
        assert rows.start_s.tolist() == [10.0 * i for i in range(len(rows))]
    assert set(segs.label) <= set(LABELS) and set(segs.zs_label) <= set(LABELS)
    assert set(files.label.dropna()) <= set(LABELS)
    assert all(len(e) == 512 for e in segs.embedding)
    assert segs.snr_db.isna().all() and segs.seed.isna().all()
    # file label = max over windows of the window scores
    for name in GOOD:
        f = files[files.file_id == name].iloc[0]
        assert f.score == pytest.approx(max(max(s) for s in segs[segs.file_id == name].top_k_scores), abs=1e-6)


def test_scores_come_from_stored_embeddings(first_run, cache_uri):
    out, _ = first_run
    segs = read(out, "segments")
    cache = DriftCache.load(cache_uri)
    z = np.stack(segs.embedding.map(lambda e: np.asarray(e, dtype=np.float32)))
    np.testing.assert_array_equal(cache.scores(z).max(axis=1), segs.score.to_numpy())
    np.testing.assert_array_equal(cache.clean_scores(z).max(axis=1), segs.zs_score.to_numpy())


def test_two_runs_give_identical_results(first_run, s3_archive, cache_uri, tiny_ckpt, tmp_path):
    out, _ = first_run
    local_out = str(tmp_path / "run2")
    run(config(s3_archive, cache_uri, tiny_ckpt, local_out, files_per_unit=1, chunk_windows=3))
    a, b = read(out, "segments"), read(local_out, "segments")
    assert a.drop(columns=["embedding"]).equals(b.drop(columns=["embedding"]))
    assert all(np.array_equal(x, y) for x, y in zip(a.embedding, b.embedding))
    assert read(out, "files").equals(read(local_out, "files"))


def test_rerun_into_non_empty_output_is_refused(first_run, s3_archive, cache_uri, tiny_ckpt):
    out, _ = first_run
    with pytest.raises(UsageError, match="--resume.*--overwrite"):
        run(config(s3_archive, cache_uri, tiny_ckpt, out))
    with pytest.raises(UsageError, match="exclude each other"):
        run(config(s3_archive, cache_uri, tiny_ckpt, out, resume=True, overwrite=True))


def _as_if_killed(out: str, units: list[str]) -> None:
    """The state a kill leaves: the units' chunks written, their end parts not; the manifest still 'running'."""
    from das_core.output.format import part_name

    store = OutputStore(out)
    for unit in units:
        store.remove_part(FILES_DIR, part_name(unit, "end"))
    manifest = RunManifest.read(out).to_dict()
    RunManifest.from_dict({**manifest, "status": "running"}).write(out)


def test_resume_after_interruption_gives_exactly_the_uninterrupted_rows(first_run, s3_archive, cache_uri,
                                                                       tiny_ckpt, tmp_path):
    out = str(tmp_path / "interrupted")
    run(config(s3_archive, cache_uri, tiny_ckpt, out, files_per_unit=3, pack_rows=0))    # killed before any pack
    store = OutputStore(out)
    units = store.listing().committed_units()
    assert len(units) == 4
    _as_if_killed(out, units[1:3])
    partial = set(store.read_files().column("file_id").to_pylist())
    assert 0 < len(partial) < len(GOOD) + len(BAD)
    with pytest.raises(UsageError):
        run(config(s3_archive, cache_uri, tiny_ckpt, out))
    manifest = run(config(s3_archive, cache_uri, tiny_ckpt, out, resume=True, files_per_unit=64))
    assert manifest["runs"][-1]["files_to_do"] == len(GOOD) + len(BAD) - len(partial)
    assert manifest["runs"][-1]["units_to_do"] == 2 and manifest["status"] == "complete"
    ref_out, ref_manifest = first_run
    a, b = read(ref_out, "segments"), read(out, "segments")
    assert len(b) == len(a) and not b.duplicated(["file_id", "segment"]).any()
    assert a.drop(columns=["embedding"]).equals(b.drop(columns=["embedding"]))
    assert all(np.array_equal(x, y) for x, y in zip(a.embedding, b.embedding))
    assert read(ref_out, "files").equals(read(out, "files"))
    assert manifest["counts"] == ref_manifest["counts"]
    assert not store.listing().units(FILES_DIR) and set(store.listing().packed_units()) == set(units)   # all packed
    # resuming a finished run does nothing and leaves it as it was
    again = run(config(s3_archive, cache_uri, tiny_ckpt, out + "/", resume=True))
    assert again == manifest == RunManifest.read(out).to_dict()


def test_resume_with_other_settings_is_refused(first_run, s3_archive, cache_uri, tiny_ckpt):
    out, _ = first_run
    with pytest.raises(UsageError, match="different settings.*top_k"):
        run(config(s3_archive, cache_uri, tiny_ckpt, out, resume=True, top_k=2))


def test_overwrite_replaces(s3_archive, cache_uri, tiny_ckpt, tmp_path):
    out = str(tmp_path / "ow")
    os.makedirs(out + "/segments")
    open(out + "/segments/part-0123456789abcdef0123.parquet", "wb").write(b"stale")     # a das 0.1 part
    open(out + "/segments/part-stale.parquet", "wb").write(b"the user's")                # not das's: kept
    open(out + "/_manifest.json", "w").write("{}")
    single = s3_archive + "/short/three.flac"
    run(config(single, cache_uri, tiny_ckpt, out, overwrite=True))
    assert sorted(os.listdir(out + "/segments")) == ["part-stale.parquet", "part-u00000000-u00000000.parquet"]
    assert read(out, "files").file_id.tolist() == ["three.flac"]


def test_mismatched_cache_is_refused_before_any_work(s3_archive, other_ckpt, cache_uri, tmp_path):
    out = str(tmp_path / "never")
    with pytest.raises(CacheMismatchError, match="rebuild it"):
        run(config(s3_archive, cache_uri, other_ckpt, out))
    assert not os.path.exists(out)


def test_noise_mixing_is_applied_and_recorded(s3_archive, cache_uri, tiny_ckpt, encoder, tmp_path, first_run):
    from das_core.audio.decode import AudioStream
    from das_core.audio.noise import NoiseBank
    from das_core.audio.windows import quantize_int16, segment

    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):
        sf.write(noise_dir / f"n{i}.wav", (0.2 * rng.standard_normal(16000 * (i + 1))).astype(np.float32), 16000)
    out = str(tmp_path / "noisy")
    src = str(tmp_path / "clips")
    os.makedirs(src)
    archive = make_archive()
    for name in ("short/three.flac", "eleven.wav"):
        open(os.path.join(src, name.split("/")[-1]), "wb").write(archive[name])
    run(config(src, cache_uri, tiny_ckpt, out, snr_db=5.0, noise=str(noise_dir), seed=3))
    segs = read(out, "segments")
    assert (segs.snr_db == 5.0).all() and (segs.seed == 3).all()
    assert segs.noise_source.str.contains(r"n\d\.wav@\d+\.\d{3}s").all()
    # the stored embedding is the clean window mixed at 5 dB with the recorded noise choice
    bank = NoiseBank(sorted(str(p) for p in noise_dir.iterdir()))
    row = segs[(segs.file_id == "eleven.wav") & (segs.segment == 0)].iloc[0]
    with AudioStream(archive["eleven.wav"], "eleven.wav") as stream:
        w = next(segment(stream.mono48k()))
    mixed = bank.mix(w.real, 5.0, seed=3, clip_id="eleven.wav", segment=0)
    assert row.noise_source.startswith(mixed.noise_uri)
    want = encoder.embed_audio_int16(quantize_int16(mixed.samples)[None])[0]
    np.testing.assert_allclose(np.asarray(row.embedding, dtype=np.float32), want, atol=2e-3)
    clean = read(first_run[0], "segments")
    clean_row = clean[(clean.file_id == "eleven.wav") & (clean.segment == 0)].iloc[0]
    assert not np.array_equal(np.asarray(clean_row.embedding), np.asarray(row.embedding))


def test_manifest_input_with_missing_object(s3_archive, cache_uri, tiny_ckpt, tmp_path):
    import pyarrow as pa

    manifest = s3_archive.replace("/archive", "/lists/todo.parquet")
    table = pa.table({"path": ["archive/ten.wav", "archive/gone.wav"], "id": ["clip-1", "clip-2"]})
    from das_core.io.storage import write_bytes_atomic
    from das_core.output.format import table_to_bytes
    write_bytes_atomic(manifest, table_to_bytes(table))
    # relative paths are taken from the manifest's folder: s3://bucket/lists/archive/... does not exist
    out = str(tmp_path / "from-manifest")
    table = pa.table({"path": [s3_archive + "/ten.wav", s3_archive + "/gone.wav"], "id": ["clip-1", "clip-2"]})
    write_bytes_atomic(manifest, table_to_bytes(table))
    m = run(config(manifest, cache_uri, tiny_ckpt, out))
    files = read(out, "files")
    assert files.file_id.tolist() == ["clip-1", "clip-2"]
    assert files.status.tolist() == ["ok", "error"] and files.error_kind.tolist()[1] == info.MISSING
    assert m["counts"]["errors_by_kind"] == {"missing": 1}


def test_error_budget_fails_the_job_but_keeps_rows(s3_archive, cache_uri, tiny_ckpt, tmp_path):
    out = str(tmp_path / "budget")
    with pytest.raises(JobFailed, match="failed to decode"):
        run(config(s3_archive + "/bad", cache_uri, tiny_ckpt, out, max_error_fraction=0.5, min_errors_to_fail=1))
    files = read(out, "files")
    assert len(files) >= 3 and (files.status == "error").all()
    assert RunManifest.read(out).to_dict()["status"] == "failed"


def test_cli_refuses_bad_arguments(capsys, tiny_ckpt, cache_uri, tmp_path):
    (tmp_path / "in").mkdir()
    common = ["--input", str(tmp_path / "in"), "--cache", cache_uri, "--checkpoint", tiny_ckpt, "--out",
              str(tmp_path / "o")]
    assert main(common + ["--snr-db", "5"]) == 2
    assert "--snr-db and --noise go together" in capsys.readouterr().err
    assert main(common) == 2
    assert "no audio files under" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "--max-error-fraction" in capsys.readouterr().out
