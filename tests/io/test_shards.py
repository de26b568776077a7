"""Shards as input: WebDataset tar and Hugging Face Parquet, written by their own libraries; locally and on S3."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from conftest import CLIPS, label_run, read_output, write_hf_parquet, write_tar

from das_core.io.shards import Skips, parquet_members, tar_members, webdataset_key

pytestmark = pytest.mark.integration



def test_webdataset_key():
    assert webdataset_key("dir/sample001.flac") == "dir/sample001"
    assert webdataset_key("a.b.c.wav") == "a"


def test_tar_members_in_order_with_metadata_and_skips(tmp_path):
    shard = write_tar(tmp_path / "000.tar")
    skips = Skips({}, {})
    members, data = [], []
    for m in tar_members("000.tar", shard, (".flac",), True, skips):     # members are read while the shard is open
        members.append(m)
        with m.open() as f:
            data.append(f.read())
    assert [m.file_id for m in members] == ["000.tar/sample000.flac", "000.tar/sample001.flac",
                                            "000.tar/sample002.flac"]
    assert [m.key for m in members] == list(CLIPS)
    assert all("cc-by" in m.metadata for m in members)
    assert skips.counts == {"non-audio shard member": 6}
    assert data == list(CLIPS.values())


def test_hostile_tars(tmp_path):
    good = open(write_tar(tmp_path / "ok.tar", extra=False), "rb").read()
    (tmp_path / "cut.tar").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.tar").write_bytes(b"certainly not a tar archive" * 40)
    cut = list(tar_members("cut.tar", str(tmp_path / "cut.tar"), (".flac",), False, Skips({}, {})))
    assert cut[0].error is None and cut[-1].error is not None
    junk = list(tar_members("junk.tar", str(tmp_path / "junk.tar"), (".flac",), False, Skips({}, {})))
    assert len(junk) == 1 and junk[0].error[0] == "not_audio" and "junk.tar" in junk[0].error[1]


def test_a_truncated_member_is_its_truncated_error_without_a_traceback(tmp_path, capfd):
    import tarfile

    from das_core.audio.decode import AudioStream
    from das_core.errors import AudioDecodeError

    good = open(write_tar(tmp_path / "ok.tar", extra=False), "rb").read()
    with tarfile.open(tmp_path / "ok.tar") as tar:
        cut_member = tar.getmember("sample001.flac")
    (tmp_path / "cut.tar").write_bytes(good[: cut_member.offset_data + cut_member.size // 2])
    outcomes = {}
    for member in tar_members("cut.tar", str(tmp_path / "cut.tar"), (".flac",), False, Skips({}, {})):
        if member.open is None:
            outcomes[member.file_id] = member.error[0]
            continue
        try:
            with member.open() as f, AudioStream(f, member.path) as stream:
                sum(1 for _ in stream.windows())
            outcomes[member.file_id] = "ok"
        except AudioDecodeError as exc:
            outcomes[member.file_id] = exc.kind
            assert "ReadError" in str(exc) and "sample001.flac" in str(exc)
    assert outcomes["cut.tar/sample000.flac"] == "ok" and outcomes["cut.tar/sample001.flac"] == "truncated"
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out


def test_parquet_members(tmp_path):
    shard = write_hf_parquet(tmp_path / "train-00000.parquet", with_null=True)
    members = list(parquet_members("train-00000.parquet", shard, None, None))
    assert [m.file_id for m in members] == [f"train-00000.parquet#{i}" for i in range(4)]
    assert members[3].error[0] == "empty" and members[0].key == "sample000.flac"
    with members[0].open() as f:                  # cells are read one row group at a time, then held as bytes
        assert f.read() == CLIPS["sample000"]
    by_id = list(parquet_members("s", shard, "audio", "clip_id"))
    assert [m.file_id for m in by_id] == ["sample000", "sample001", "sample002", "nothing"]
    missing = list(parquet_members("s", shard, "sound", None))
    assert len(missing) == 1 and missing[0].error[0] == "unsupported" and "sound" in missing[0].error[1]


# ------------------------------------------------------------------ das label on shards (Ray)

def test_the_same_audio_gives_the_same_numbers_in_any_packing(ray_local, tiny_ckpt, small_cache, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for key, data in CLIPS.items():
        (plain / f"{key}.flac").write_bytes(data)
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "000.tar")
    hf = tmp_path / "hf" / "data"
    hf.mkdir(parents=True)
    write_hf_parquet(hf / "train-00000-of-00001.parquet")
    m_plain = label_run(plain, small_cache, tiny_ckpt, tmp_path / "out-plain")
    m_tar = label_run(shards, small_cache, tiny_ckpt, tmp_path / "out-tar", keep_metadata=True)
    m_hf = label_run(tmp_path / "hf", small_cache, tiny_ckpt, tmp_path / "out-hf")
    s_plain, f_plain = read_output(tmp_path / "out-plain")
    s_tar, f_tar = read_output(tmp_path / "out-tar")
    s_hf, f_hf = read_output(tmp_path / "out-hf")
    assert f_tar.column("file_id").to_pylist() == [f"000.tar/{k}.flac" for k in CLIPS]
    assert f_tar.column("key").to_pylist() == list(CLIPS)
    assert all("cc-by" in m for m in f_tar.column("metadata").to_pylist())
    assert f_hf.column("file_id").to_pylist() == [f"data/train-00000-of-00001.parquet#{i}" for i in range(3)]
    for segs in (s_tar, s_hf):
        assert segs.num_rows == s_plain.num_rows == 4
        np.testing.assert_array_equal(np.array(segs.column("embedding").to_pylist()),
                                      np.array(s_plain.column("embedding").to_pylist()))
        for col in ("label", "score", "top_k_scores", "zs_score", "segment", "start_s"):
            assert segs.column(col).equals(s_plain.column(col)), col
    for m in (m_tar, m_hf):
        assert m["counts"]["files"] == 3 == m["counts"]["ok"]
    assert m_tar["skipped"]["by_reason"]["non-audio shard member"] == 6
    assert m_plain["counts"]["segments"] == m_tar["counts"]["segments"] == m_hf["counts"]["segments"]


def test_hostile_shards_become_error_rows_and_the_rest_is_labelled(ray_local, tiny_ckpt, small_cache, tmp_path,
                                                                   s3_endpoint, bucket):
    import boto3

    good = open(write_tar(tmp_path / "good.tar", extra=False), "rb").read()
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.put_object(Bucket=bucket, Key="shards/a-good.tar", Body=good)
    s3.put_object(Bucket=bucket, Key="shards/b-cut.tar", Body=good[: len(good) * 2 // 3])
    s3.put_object(Bucket=bucket, Key="shards/c-junk.tar", Body=b"no tar here" * 100)
    corrupt = dict(CLIPS)
    corrupt["sample001"] = b"\x00" * 3000
    s3.put_object(Bucket=bucket, Key="shards/d-corrupt-member.tar",
                  Body=open(write_tar(tmp_path / "corrupt.tar", clips=corrupt, extra=False), "rb").read())
    write_hf_parquet(tmp_path / "null.parquet", with_null=True)
    s3.put_object(Bucket=bucket, Key="shards/e-null.parquet", Body=(tmp_path / "null.parquet").read_bytes())
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"text": ["no audio here"]}), buf)
    s3.put_object(Bucket=bucket, Key="shards/f-no-audio.parquet", Body=buf.getvalue())
    out = f"s3://{bucket}/labels"
    manifest = label_run(f"s3://{bucket}/shards", small_cache, tiny_ckpt, out)
    _, files = read_output(out)
    rows = {r["file_id"]: r for r in files.to_pylist()}
    assert [rows[f"a-good.tar/{k}.flac"]["status"] for k in CLIPS] == ["ok"] * 3
    assert rows["b-cut.tar/sample000.flac"]["status"] == "ok"
    cut_errors = [r for fid, r in rows.items() if fid.startswith("b-cut.tar") and r["status"] == "error"]
    assert cut_errors and all("b-cut.tar" in r["error"] for r in cut_errors)
    assert rows["c-junk.tar"]["error_kind"] == "not_audio" and "c-junk.tar" in rows["c-junk.tar"]["error"]
    assert rows["d-corrupt-member.tar/sample001.flac"]["status"] == "error"
    assert rows["d-corrupt-member.tar/sample000.flac"]["status"] == "ok"
    assert rows["d-corrupt-member.tar/sample002.flac"]["status"] == "ok"
    assert rows["e-null.parquet#3"]["error_kind"] == "empty"
    assert rows["f-no-audio.parquet"]["error_kind"] == "unsupported"
    assert manifest["counts"]["files"] == len(rows) == manifest["counts"]["ok"] + manifest["counts"]["error"]
    assert os.environ.get("AWS_ENDPOINT_URL_S3") == s3_endpoint
