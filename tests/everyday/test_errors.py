"""Everyday failures through the real ``das`` command: one line naming the path and the cause, the exit status
of the README's rule (2 refused, 1 failed), no traceback, bounded time; refusals come before the model loads.

A full disk and a read-only folder are real where this machine lets the tests mount a small tmpfs (root in a
container usually may); elsewhere the full disk falls back to das's test switch ``DAS_TEST_FAIL_WRITE`` and the
read-only cases are skipped.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TEST_BATCH_SIZE

from das_core.output.store import OutputStore
from everyday.conftest import das, snapshot

pytestmark = pytest.mark.integration


@contextmanager
def tmpfs(folder: Path, size_kib: int, read_only: bool = False):
    """A real tmpfs of ``size_kib`` at ``folder`` (read-only with ``read_only``), or None where mounting is not
    permitted; unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kib}k" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                             capture_output=True, timeout=30).returncode == 0
    try:
        yield folder if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def label_args(out, tiny_ckpt, small_cache, *extra) -> list[str]:
    return ["label", "--input", "archive", "--cache", small_cache, "--checkpoint", tiny_ckpt, "--out", out,
            "--max-error-fraction", "1", "--no-report", "--batch-size", str(TEST_BATCH_SIZE), *extra]


# ------------------------------------------------------------------ outputs that cannot be written

@pytest.mark.slow
def test_a_full_disk_during_label_is_one_line_and_resume_completes(workdir, tiny_ckpt, small_cache):
    env = dict(os.environ)
    with tmpfs(workdir / "disk", 40) as disk:
        if disk is None:                   # no mount here: das's own switch fails the same write with ENOSPC
            out, env["DAS_TEST_FAIL_WRITE"] = workdir / "out", "part-u00000001"
        else:
            out = disk / "out"
        failed = das(label_args(out, tiny_ckpt, small_cache, "--files-per-unit", "1"), workdir, env=env)
        line = failed.error_line("das label")
        assert failed.rc == 1, failed.out
        assert "cannot write " + str(out) in line and "No space left on device" in line, line
        assert "--resume" in line and "UserCodeException" not in line and "internal error" not in line
        assert failed.wall < 150
        if disk is not None:
            subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True, timeout=30)
        env.pop("DAS_TEST_FAIL_WRITE", None)
        resumed = das(label_args(out, tiny_ckpt, small_cache, "--files-per-unit", "1", "--resume"), workdir, env=env)
        assert resumed.rc == 0, resumed.out
        files = OutputStore(str(out)).read_files()
        assert len(files) == 6 and len(set(files.column("file_id").to_pylist())) == 6      # none lost or doubled


def test_an_output_that_cannot_be_made_is_refused_before_work(workdir, tiny_ckpt, small_cache):
    result = das(label_args("/proc/das-out", tiny_ckpt, small_cache), workdir)
    line = result.error_line("das label")
    assert result.rc == 2 and "--out /proc/das-out: cannot create /proc/das-out (" in line, result.out
    assert "Errno" not in line and "model" not in result.out.lower()
    assert result.wall < 60


def test_a_read_only_output_is_refused_before_work(workdir, tiny_ckpt, small_cache):
    with tmpfs(workdir / "ro", 64, read_only=True) as ro:
        if ro is None:
            pytest.skip("mounting a read-only tmpfs is not permitted here")
        before = snapshot(workdir / "archive")
        rescore = das(["rescore", "--embeddings", "labels", "--cache", small_cache, "--out", ro], workdir)
        line = rescore.error_line("das rescore")
        assert rescore.rc == 2 and f"--out {ro}: cannot write in it (read-only file system)" in line, rescore.out
        label = das(label_args(ro / "labels", tiny_ckpt, small_cache), workdir)
        line = label.error_line("das label")
        assert label.rc == 2 and f"cannot create {ro / 'labels'} (read-only file system)" in line, label.out
        search = das(["search", "--embeddings", "labels", "--checkpoint", tiny_ckpt, "--text", "siren",
                      "--out", ro / "hits.parquet"], workdir)
        assert search.rc == 2 and "(read-only file system)" in search.error_line("das search"), search.out
        assert snapshot(workdir / "archive") == before


@pytest.mark.slow
def test_a_write_failing_during_rescore_is_one_line_with_its_path(workdir, tiny_ckpt, small_cache):
    assert das(label_args("labels", tiny_ckpt, small_cache), workdir).rc == 0
    env = dict(os.environ, DAS_TEST_FAIL_WRITE="segments/part-")      # das's switch: that write hits ENOSPC
    # absolute paths: relative ones are item 1's (paths resolved at the edge)
    result = das(["rescore", "--embeddings", workdir / "labels", "--cache", small_cache, "--out", workdir / "rescored",
                  "--run-id", "r1", "--no-report"], workdir, env=env)
    line = result.error_line("das rescore")
    assert result.rc == 1, result.out
    assert f"cannot write {workdir / 'rescored' / 'run_id=r1' / 'segments'}/part-" in line, line
    assert "(No space left on device)" in line and "internal error" not in line


# ------------------------------------------------------------------ inputs that are not what they should be

def test_a_like_file_that_is_missing_or_not_audio_is_refused_before_the_model(workdir, tiny_ckpt):
    (workdir / "notes.wav").write_bytes(b"these are notes, not audio" * 10)
    for like, cause in (("nope.wav", "cannot read it (no such file or directory)"),
                        ("notes.wav", "not audio das can decode (not_audio")):
        result = das(["search", "--embeddings", "labels", "--checkpoint", tiny_ckpt, "--like", like], workdir)
        line = result.error_line("das search")
        assert result.rc == 2 and f"{like}: {cause}" in line and "--like /" in line    # made absolute, result.out
        assert "Errno" not in line and result.wall < 30         # the model (about 10 s) was never loaded


def test_report_of_a_folder_that_is_not_a_das_output_says_what_to_give(workdir):
    result = das(["report", "archive"], workdir)
    line = result.error_line("das report")
    assert result.rc == 2, result.out
    assert "archive is not a das label or das rescore output (no _manifest.json)" in line
    assert "give the --out folder of a das label run, or a das rescore run folder OUT/run_id=ID" in line
    assert "needs one" not in line
    assert not (workdir / "archive" / "report").exists()


@pytest.mark.parametrize("table, cause", [
    (pa.table({"path": [1, 2, 3]}), "the path column must be text (it holds int64)"),
    (pa.table({"path": [["a.wav"], ["b.wav"]]}), "the path column must be text"),
    (pa.table({"file": ["archive/a.wav"]}), "has no 'path' column"),
    (pa.table({"path": pa.array([], pa.string())}), "lists no files"),
])
def test_a_manifest_of_the_wrong_shape_is_refused_in_one_line(workdir, tiny_ckpt, small_cache, table, cause):
    pq.write_table(table, workdir / "list.parquet")
    args = label_args("labels", tiny_ckpt, small_cache)
    args[args.index("archive")] = "list.parquet"
    result = das(args, workdir)
    assert result.rc == 2 and cause in result.error_line("das label"), result.out
    assert not (workdir / "labels" / "segments").exists()


def test_top_k_above_the_class_count_is_refused(workdir, tiny_ckpt, small_cache):
    result = das(label_args("labels", tiny_ckpt, small_cache, "--top-k", "10000"), workdir)
    line = result.error_line("das label")
    assert result.rc == 2 and "--top-k 10000 is more than the 3 classes of the drift cache" in line, result.out
    assert "give --top-k 3 or less" in line and not (workdir / "labels" / "segments").exists()


@pytest.mark.slow
def test_a_truncated_tar_member_is_its_row_and_no_traceback(workdir, tiny_ckpt, small_cache):
    shard = io.BytesIO()
    with tarfile.open(fileobj=shard, mode="w") as tar:
        for name in ("a.wav", "b.wav", "e.wav"):
            tar.add(workdir / "archive" / name, arcname=f"clip-{name}")
    data = shard.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        cut = tar.getmember("clip-b.wav")
    (workdir / "shards").mkdir()
    (workdir / "shards" / "cut.tar").write_bytes(data[: cut.offset_data + cut.size // 2])
    args = label_args("labels", tiny_ckpt, small_cache)
    args[args.index("archive")] = "shards"
    result = das(args, workdir)
    # exit 1 or 0: whether a shard's member errors exceed the error budget is item 5's (one counting scale)
    assert result.rc in (0, 1), result.out
    assert "Traceback" not in result.out and "ReadError" not in result.out.replace("(ReadError", "")
    rows = {r["file_id"]: r for r in OutputStore(str(workdir / "labels")).read_files().to_pylist()}
    assert rows["cut.tar/clip-a.wav"]["status"] == "ok"
    assert rows["cut.tar/clip-b.wav"]["error_kind"] == "truncated", rows
    assert "clip-b.wav" in rows["cut.tar/clip-b.wav"]["error"]


def test_a_broken_noise_recording_is_refused_before_any_work(workdir, tiny_ckpt, small_cache):
    # the archive folder holds broken.wav: as a noise folder it would end the run half-way on the encoder
    r = das(label_args("labels", tiny_ckpt, small_cache, "--snr-db", "10", "--noise", "archive"), workdir)
    line = r.error_line("das label")
    assert r.rc == 2 and "--noise:" in line and "broken.wav" in line and "truncated" in line, r.out
    assert not (workdir / "labels").exists()
