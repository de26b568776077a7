"""das rescore: re-label stored embeddings on a real local Ray cluster, never touching audio or the model."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import BROKEN_WAV, label_run, read_output, write_clips

from das_core.clap import checkpoint as ckpt
from das_core.output.store import OutputStore
from das_core.output.tables import embeddings_to_numpy
from das_core.scoring.cache import DriftCache
from das_core.scoring.scorer import label_files, label_windows
from jobs.rescore import RescoreConfig, main
from jobs.rescore import run as rescore_run

pytestmark = pytest.mark.integration    # Ray, S3 (moto) or subprocesses: `make test-fast` skips it

LABELS = ["siren", "dog_bark", "engine_idling"]
OTHER_LABELS = ["bird_song", "rain", "car_horn", "speech"]
SCORE_COLUMNS = ("score", "top_k_scores", "zs_score")


def label(input_dir, cache_uri, checkpoint, out, resume=False, **kw) -> dict:
    return label_run(input_dir, cache_uri, checkpoint, out, resume=resume, files_per_unit=1, **kw)


def read(uri: str, sub: str):
    """The ``files`` or ``segments`` rows of an output, sorted (``conftest.read_output``)."""
    segments, files = read_output(uri)
    return files if sub == "files" else segments


def assert_same_labels(expected, actual) -> None:
    """Same rows, same labels and metadata; scores within 1e-6."""
    assert actual.schema.equals(expected.schema)
    assert actual.drop_columns(list(SCORE_COLUMNS)).equals(expected.drop_columns(list(SCORE_COLUMNS)))
    for name in SCORE_COLUMNS:
        a = actual.column(name).to_pylist()
        e = expected.column(name).to_pylist()
        assert [x is None for x in a] == [x is None for x in e]
        a = np.array([x for x in a if x is not None], dtype=np.float64)
        e = np.array([x for x in e if x is not None], dtype=np.float64)
        assert a.shape == e.shape
        if a.size:
            assert np.abs(a - e).max() <= 1e-6


@pytest.fixture(scope="module")
def cache_uri(make_cache) -> str:
    return make_cache(LABELS)


@pytest.fixture(scope="module")
def other_cache_uri(make_cache) -> str:
    """Another label set, other phrases and lam, same checkpoint."""
    return make_cache(OTHER_LABELS, ["rain noise", "wind noise"], lam=0.3)


@pytest.fixture(scope="module")
def labelled(make_label_output, cache_uri) -> str:
    """A das label output: 3 good files (one of 2 windows) and a broken one."""
    return make_label_output({"a.wav": (3.0, 16000, 440.0), "b.flac": (12.0, 22050, 880.0),
                              "sub/c.wav": (1.5, 8000, 300.0)}, cache_uri, broken={"broken.wav": BROKEN_WAV},
                             files_per_unit=1)


def test_rescore_with_the_same_cache_reproduces_the_labels(labelled, cache_uri, tmp_path, capsys):
    out = str(tmp_path / "rescored")
    assert main(["--embeddings", labelled, "--cache", cache_uri, "--out", out, "--run-id", "same"]) == 0
    summary = capsys.readouterr().out
    assert "das rescore: complete" in summary and "4 = 3 ok + 1 error" in summary and "rows/s" in summary
    run_dir = os.path.join(out, "run_id=same")
    # one output unit per committed label unit, with the same names
    assert OutputStore(run_dir).listing().committed_units() == OutputStore(labelled).listing().committed_units()
    assert_same_labels(read(labelled, "segments"), read(run_dir, "segments"))
    assert_same_labels(read(labelled, "files"), read(run_dir, "files"))
    files = read(run_dir, "files")
    broken = files.filter(files.column("status").to_numpy(zero_copy_only=False) == "error").to_pylist()
    assert len(broken) == 1 and broken[0]["path"].endswith("broken.wav") and broken[0]["label"] is None
    assert "broken.wav" in broken[0]["error"]
    label_manifest = json.load(open(os.path.join(labelled, "_manifest.json")))
    manifest = json.load(open(os.path.join(run_dir, "_manifest.json")))
    assert manifest["status"] == "complete" and manifest["job"] == "rescore" and manifest["run_id"] == "same"
    for key in ("files", "ok", "error", "segments", "errors_by_kind"):
        assert manifest["counts"][key] == label_manifest["counts"][key]
    assert manifest["counts"]["units"] == manifest["source"]["units_committed"] >= 1
    assert manifest["settings"]["checkpoint_fingerprint"] == label_manifest["settings"]["checkpoint_fingerprint"]
    assert manifest["cache"]["fingerprint"] == label_manifest["cache"]["fingerprint"]
    assert manifest["runs"][0]["segments_done"] == label_manifest["counts"]["segments"]


def test_rescore_with_a_new_cache_relabels_everything(labelled, other_cache_uri, tmp_path):
    out = str(tmp_path / "rescored")
    manifest = rescore_run(RescoreConfig(embeddings=labelled, cache=other_cache_uri, out=out, run_id="other",
                                         top_k=2))
    cache = DriftCache.load(other_cache_uri)
    assert manifest["cache"]["labels"] == OTHER_LABELS and manifest["settings"]["top_k"] == 2
    before, after = read(labelled, "segments"), read(os.path.join(out, "run_id=other"), "segments")
    # embeddings are not copied: readers follow the manifest to the label output's, float16 as stored
    assert after.column("embedding").equals(before.column("embedding"))
    on_disk = pq.read_table(os.path.join(out, "run_id=other", "segments"))
    assert "embedding" not in on_disk.column_names and manifest["embeddings"]["copied"] is False
    copied = rescore_run(RescoreConfig(embeddings=labelled, cache=other_cache_uri, out=out, run_id="copied",
                                       top_k=2, copy_embeddings=True))
    assert copied["embeddings"]["copied"] is True
    assert "embedding" in pq.read_table(os.path.join(out, "run_id=copied", "segments")).column_names
    assert read(os.path.join(out, "run_id=copied"), "segments").equals(after)
    emb = embeddings_to_numpy(after.column("embedding"))
    expected = label_windows(emb, cache, 2)
    assert after.column("label").to_pylist() == expected.label
    assert set(after.column("label").to_pylist()) <= set(OTHER_LABELS)
    assert all(len(row) == 2 for row in after.column("top_k_labels").to_pylist())
    np.testing.assert_allclose(after.column("score").to_numpy(), expected.score, atol=1e-6)
    assert after.column("zs_label").to_pylist() == expected.zs_label

    files = read(os.path.join(out, "run_id=other"), "files")
    ok = files.filter(files.column("status").to_numpy(zero_copy_only=False) == "ok")
    ids = ok.column("file_id").to_pylist()
    owner = np.array([ids.index(f) for f in after.column("file_id").to_pylist()])
    pooled = label_files(emb, owner, len(ids), cache, 2)
    assert ok.column("label").to_pylist() == pooled.label
    np.testing.assert_allclose(ok.column("score").to_numpy(), pooled.score, atol=1e-6)
    assert files.num_rows == read(labelled, "files").num_rows      # the error row is still there
    assert manifest["counts"]["error"] == 1


def test_a_cache_of_another_checkpoint_is_refused(labelled, cache_uri, other_ckpt, tmp_path, capsys):
    foreign = dataclasses.replace(DriftCache.load(cache_uri), encoder_id=ckpt.fingerprint(other_ckpt),
                                  encoder_name="tiny-transformer-seed1.pt")
    foreign_uri = str(tmp_path / "foreign.npz")
    foreign.save(foreign_uri)
    out = tmp_path / "rescored"
    assert main(["--embeddings", labelled, "--cache", foreign_uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    label_fp = json.load(open(os.path.join(labelled, "_manifest.json")))["settings"]["checkpoint_fingerprint"]
    assert "das rescore: error:" in err and foreign_uri in err and "cannot re-score" in err
    assert ckpt.fingerprint(other_ckpt) in err and label_fp in err and "das build-cache" in err
    assert not out.exists()                                          # refused before any work


def test_since_last_run_scores_only_the_new_rows(ray_local, tiny_ckpt, cache_uri, tmp_path):
    audio, out, rescored = tmp_path / "audio", tmp_path / "labels", str(tmp_path / "rescored")
    write_clips(audio, {"first.wav": (2.0, 16000, 500.0), "second.flac": (11.5, 16000, 700.0)})
    label(audio, cache_uri, tiny_ckpt, out, pack_rows=0)          # in small parts, as a run killed before packing
    first = rescore_run(RescoreConfig(embeddings=str(out), cache=cache_uri, out=rescored, run_id="day1",
                                      since_last_run=True))
    assert first["previous_run"] is None and first["counts"]["files"] == 2

    write_clips(audio, {"third.wav": (4.0, 16000, 900.0), "later/fourth.wav": (10.0, 16000, 1100.0)},
                broken={"fifth.wav": BROKEN_WAV})
    label(audio, cache_uri, tiny_ckpt, out, resume=True)
    label_listing = OutputStore(str(out)).listing()               # the units day1 covered are packed since
    assert len(label_listing.packs()) == 1 and set(label_listing.packed_units()) == set(
        label_listing.committed_units())
    second = rescore_run(RescoreConfig(embeddings=str(out), cache=cache_uri, out=rescored, run_id="day2",
                                       since_last_run=True))
    new_files = read(os.path.join(rescored, "run_id=day2"), "files")
    assert sorted(new_files.column("file_id").to_pylist()) == ["fifth.wav", "later/fourth.wav", "third.wav"]
    new_segments = read(os.path.join(rescored, "run_id=day2"), "segments")
    assert set(new_segments.column("file_id").to_pylist()) == {"later/fourth.wav", "third.wav"}
    assert second["previous_run"]["run_id"] == "day1"
    assert second["counts"]["units_skipped_before_watermark"] == first["counts"]["units"]
    assert second["counts"]["error"] == 1
    # the two runs together hold every label row exactly once, with the labels das label gave them
    all_label_parts = OutputStore(str(out)).listing().committed_units()
    assert second["watermark"]["units"] == all_label_parts
    old_files = read(os.path.join(rescored, "run_id=day1"), "files")
    assert sorted(old_files.column("file_id").to_pylist() + new_files.column("file_id").to_pylist()) == sorted(
        read(str(out), "files").column("file_id").to_pylist())
    labelled_new = read(str(out), "segments")
    labelled_new = labelled_new.filter(np.isin(labelled_new.column("file_id").to_numpy(zero_copy_only=False),
                                               ["third.wav", "later/fourth.wav"]))
    assert_same_labels(labelled_new, new_segments)

    nothing = rescore_run(RescoreConfig(embeddings=str(out), cache=cache_uri, out=rescored, run_id="day3",
                                        since_last_run=True))
    assert nothing["status"] == "complete" and nothing["counts"]["files"] == 0 and nothing["counts"]["units"] == 0
    assert nothing["previous_run"]["run_id"] == "day2" and nothing["watermark"]["units"] == all_label_parts

    # a label output replaced since (other run history) voids the watermark: everything is scored again
    manifest_path = out / "_manifest.json"
    label_manifest = json.loads(manifest_path.read_text())
    label_manifest["runs"][0]["started"] = "2000-01-01T00:00:00+00:00"
    manifest_path.write_text(json.dumps(label_manifest))
    again = rescore_run(RescoreConfig(embeddings=str(out), cache=cache_uri, out=rescored, run_id="day4",
                                      since_last_run=True))
    assert again["counts"]["files"] == 5 and again["counts"]["units_skipped_before_watermark"] == 0


def test_uncommitted_parts_are_ignored_and_damaged_parts_reported(labelled, cache_uri, tmp_path, capsys):
    copy = tmp_path / "labels"
    shutil.copytree(labelled, copy)
    some_part = sorted(os.listdir(copy / "segments"))[0]
    shutil.copy(copy / "segments" / some_part, copy / "segments" / "part-u00000099-c00000.parquet")
    manifest = rescore_run(RescoreConfig(embeddings=str(copy), cache=cache_uri, out=str(tmp_path / "a"), run_id="r"))
    assert manifest["source"]["units_uncommitted_ignored"] == 1
    assert manifest["counts"]["files"] == read(labelled, "files").num_rows
    assert "u00000099" not in OutputStore(str(tmp_path / "a" / "run_id=r")).listing().units("segments")

    (copy / "segments" / "part-u00000098-c00000.parquet").write_bytes(b"PAR1 not really")
    (copy / "files" / "part-u00000098-end.parquet").write_bytes(b"PAR1 not really")
    capsys.readouterr()
    assert main(["--embeddings", str(copy), "--cache", cache_uri, "--out", str(tmp_path / "b"), "--run-id", "r"]) == 1
    err = capsys.readouterr().err
    assert "das rescore: error:" in err and "part-u00000098-end.parquet" in err
    failed = json.load(open(tmp_path / "b" / "run_id=r" / "_manifest.json"))
    assert failed["status"] == "failed" and failed["counts"]["units_failed"] == 1
    assert "u00000098" not in failed["watermark"]["units"]
    assert failed["counts"]["files"] == read(labelled, "files").num_rows     # the good parts were still done


def test_an_existing_run_is_not_replaced_without_overwrite(labelled, cache_uri, tmp_path, capsys):
    out = str(tmp_path / "rescored")
    rescore_run(RescoreConfig(embeddings=labelled, cache=cache_uri, out=out, run_id="once"))
    assert main(["--embeddings", labelled, "--cache", cache_uri, "--out", out, "--run-id", "once"]) == 2
    assert "already holds a rescore run (status: complete)" in capsys.readouterr().err
    assert main(["--embeddings", labelled, "--cache", cache_uri, "--out", out, "--run-id", "once",
                 "--overwrite"]) == 0


def test_rescore_reads_and_writes_s3(labelled, cache_uri, bucket, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
    for root, _, names in os.walk(labelled):
        for name in names:
            local = os.path.join(root, name)
            s3.upload_file(local, bucket, "labels/" + os.path.relpath(local, labelled))
    s3.upload_file(cache_uri, bucket, "caches/labels.npz")
    manifest = rescore_run(RescoreConfig(embeddings=f"s3://{bucket}/labels/", cache=f"s3://{bucket}/caches/labels.npz",
                                         out=f"s3://{bucket}/rescored", run_id="s3"))
    assert manifest["status"] == "complete" and manifest["settings"]["embeddings"] == f"s3://{bucket}/labels"
    local = tmp_path / "fetched"
    for key in ("segments", "files"):
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"rescored/run_id=s3/{key}/")["Contents"]
        os.makedirs(local / key)
        for obj in listing:
            s3.download_file(bucket, obj["Key"], str(local / key / obj["Key"].rsplit("/", 1)[1]))
    # the run's manifest names where its embeddings are (the label output on S3): the reader joins them back
    s3.download_file(bucket, "rescored/run_id=s3/_manifest.json", str(local / "_manifest.json"))
    assert_same_labels(read(labelled, "segments"), read(str(local), "segments"))
    assert_same_labels(read(labelled, "files"), read(str(local), "files"))
    # the watermark works on S3 too: listing runs, reading the previous manifest
    again = rescore_run(RescoreConfig(embeddings=f"s3://{bucket}/labels", cache=f"s3://{bucket}/caches/labels.npz",
                                      out=f"s3://{bucket}/rescored/", run_id="s3-next", since_last_run=True))
    assert again["previous_run"]["run_id"] == "s3" and again["counts"]["units"] == 0
    assert again["counts"]["units_skipped_before_watermark"] == manifest["counts"]["units"]


def test_bad_arguments_are_one_line_exit_2(tmp_path, cache_uri, capsys):
    base = ["--embeddings", "e", "--cache", cache_uri, "--out", str(tmp_path / "o")]
    for extra, words in ((["--top-k", "0"], "--top-k"), (["--run-id", "../escape"], "--run-id")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "das rescore: error:" in err[0] and words in err[0]
    (tmp_path / "not-labels").mkdir()
    assert main(["--embeddings", str(tmp_path / "not-labels"), *base[2:]]) == 2
    assert "_manifest.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
