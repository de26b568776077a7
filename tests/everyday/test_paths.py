"""Issue 20, items 1 and 2 and self-ingestion: paths as a person types them, and the user's files in OUT.

Every command runs in a working folder of its own with relative paths (``archive``, ``out``, ``cache.npz``,
``model.pt``). A run made that way must resume, report, search and rescore as one made with absolute paths;
an ``--out`` that overlaps what das reads is refused before any work; and no file das did not write is ever
deleted or changed, whatever the command or option.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import TEST_BATCH_SIZE

from das_core.output.format import FILES_DIR
from das_core.output.store import OutputStore
from everyday.conftest import das, seed_user_files, snapshot

pytestmark = pytest.mark.integration

N_INPUTS = 6                      # the workdir's archive: five clips and a broken file


@pytest.fixture
def user(workdir, tiny_ckpt, small_cache) -> Path:
    """The working folder, with the checkpoint and the cache beside the archive, as a user keeps them."""
    os.symlink(tiny_ckpt, workdir / "model.pt")
    shutil.copy(small_cache, workdir / "cache.npz")
    return workdir


def label_args(*extra: str) -> list[str]:
    return ["label", "--input", "archive", "--cache", "cache.npz", "--checkpoint", "model.pt",
            "--max-error-fraction", "0.5", "--batch-size", str(TEST_BATCH_SIZE), *extra]


def kept(folder, seeded: dict[str, str]) -> None:
    """Every seeded file of the user's is still there, byte for byte."""
    now = snapshot(folder)
    assert {rel: now.get(rel) for rel in seeded} == seeded


def assert_no_row_doubled(out: Path) -> pa.Table:
    """Exactly one ``files/`` row per input and no (file_id, segment) twice, read by das's reader from a
    relative spelling of OUT; returns the files rows."""
    cwd = os.getcwd()
    os.chdir(out.parent)
    try:
        store = OutputStore(out.name)
        files, segments = store.read_files(), store.read_segments(columns=["file_id", "segment"])
    finally:
        os.chdir(cwd)
    assert len(files) == N_INPUTS and len(set(files.column("file_id").to_pylist())) == N_INPUTS
    pairs = Counter(zip(segments.column("file_id").to_pylist(), segments.column("segment").to_pylist()))
    assert pairs and max(pairs.values()) == 1
    return files


def manifest(folder: Path) -> dict:
    return json.loads((folder / "_manifest.json").read_text())


@pytest.mark.slow
def test_a_relative_out_resumes_reports_searches_and_rescores_and_the_users_files_stay(user):
    out = user / "out"
    seeded = seed_user_files(out)
    archive = snapshot(user / "archive")

    first = das(label_args("--out", "out", "--files-per-unit", "1", "--pack-rows", "0"), user)   # small parts
    assert first.rc == 0, first.out
    kept(out, seeded)
    assert_no_row_doubled(out)
    recorded = manifest(out)
    assert recorded["settings"]["input"] == str(user / "archive")          # recorded absolute
    assert recorded["cache"]["uri"] == str(user / "cache.npz") and recorded["checkpoint"]["uri"] == str(
        user / "model.pt")
    assert json.loads((out / "report" / "_report.json").read_text())["files"]

    # an interrupted unit: its commit mark gone. --resume must see the 5 others as committed
    (out / FILES_DIR / "part-u00000001-end.parquet").unlink()
    resumed = das(label_args("--out", "out/", "--files-per-unit", "1", "--resume"), user)
    assert resumed.rc == 0, resumed.out
    assert "resuming: 5 of 6 unit(s) committed" in resumed.out, resumed.out
    assert_no_row_doubled(out)
    assert sorted(n for n in os.listdir(out / FILES_DIR) if n.endswith(".parquet")) == [
        "part-u00000000-u00000005.parquet"]                                   # finished: one pack, nothing staged
    again = das(label_args("--out", "./out", "--resume"), user)
    assert again.rc == 0 and "nothing to do: all 6 unit(s)" in again.out, again.out
    kept(out, seeded)

    report = das(["report", "out"], user)
    assert report.rc == 0 and f"written to {out / 'report' / 'report.md'}" in report.out, report.out
    md = (out / "report" / "report.md").read_text()
    assert f"- files: {N_INPUTS} = 5 ok + 1 error" in md and "6 committed unit(s)" in md, md
    assert "the manifest counts" not in md

    search = das(["search", "--embeddings", "out", "--checkpoint", "model.pt", "--text", "siren", "--top", "2"], user)
    assert search.rc == 0 and re.search(r"das search: 2 match\(es\) for 1 query over 6 unit\(s\)", search.out), \
        search.out

    rescored = user / "rescored"
    rescore_user = seed_user_files(rescored)                        # in OUT, and in the run's own folder
    run_user = seed_user_files(rescored / "run_id=r1")
    for extra in ([], ["--overwrite"]):
        run = das(["rescore", "--embeddings", "out", "--cache", "cache.npz", "--out", "rescored", "--run-id", "r1",
                   *extra], user)
        assert run.rc == 0, run.out
        assert manifest(rescored / "run_id=r1")["counts"]["files"] == N_INPUTS
        assert manifest(rescored / "run_id=r1")["settings"]["embeddings"] == str(out)
        kept(rescored, rescore_user)
        kept(rescored / "run_id=r1", run_user)
        assert (rescored / "run_id=r1" / "report" / "report.md").exists()

    overwritten = das(label_args("--out", "out", "--overwrite", "--no-report"), user)
    assert overwritten.rc == 0, overwritten.out
    kept(out, seeded)
    assert_no_row_doubled(out)
    assert not (out / "report" / "report.md").exists()        # das's report went with --overwrite; the user's stays
    assert snapshot(user / "archive") == archive


def test_an_out_that_overlaps_what_das_reads_is_refused_before_any_work(user):
    os.symlink(user / "archive", user / "link")
    (user / "noise").mkdir()
    before = snapshot(user)
    cases = [
        (label_args("--out", "archive"), "das label", "is the same location as --input"),
        (label_args("--out", "archive/labels"), "das label", "is inside --input"),
        (label_args("--out", "."), "das label", "contains --input"),
        (label_args("--out", "link/labels"), "das label", "is inside --input"),          # through a symlink
        (label_args("--out", "noise/labels", "--snr-db", "0", "--noise", "noise"), "das label", "inside --noise"),
        (["rescore", "--embeddings", "out", "--cache", "cache.npz", "--out", "out"], "das rescore",
         "is the same location as --embeddings"),
        (["rescore", "--embeddings", "out", "--cache", "cache.npz", "--out", "out/rescored"], "das rescore",
         "is inside --embeddings"),
        (["evaluate", "--dataset", "esc50", "--root", "archive", "--noise-root", "noise", "--checkpoint", "model.pt",
          "--out", "archive/eval"], "das evaluate", "is inside --root"),
    ]
    for args, prog, words in cases:
        result = das(args, user, timeout=60)
        assert result.rc == 2, result.out
        line = result.error_line(prog)
        assert words in line and "choose an --out" in line, line
    assert snapshot(user) == before                            # nothing written, nothing removed


def test_listing_skips_das_output_and_keeps_to_the_extensions(user):
    previous = user / "archive" / "old labels"                # a das output that ended up under the input
    (previous / "segments").mkdir(parents=True)
    (previous / "segments" / "part-u00000000-c00000.parquet").write_bytes(b"PAR1")
    (previous / "report.wav").write_bytes(b"RIFF")
    (previous / "_manifest.json").write_text(json.dumps({"job": "label", "status": "complete"}))
    (user / "archive" / "table.parquet").write_bytes(b"PAR1 not audio")
    (user / "archive" / "shard.tar").write_bytes(b"not a tar")

    plain = das(label_args("--out", "out", "--dry-run"), user)
    assert plain.rc == 0, plain.out
    assert f"inputs:    {N_INPUTS + 2} file(s)" in plain.out and "das output 3" in plain.out, plain.out

    only_audio = das(label_args("--out", "out", "--dry-run", "--extensions", "wav,flac"), user)
    assert only_audio.rc == 0, only_audio.out
    assert f"inputs:    {N_INPUTS} file(s)" in only_audio.out and "extension 2" in only_audio.out, only_audio.out
    assert not (user / "out").exists()


def test_s3_prefixes_that_overlap_are_refused_by_path_components(user, s3_endpoint, bucket):
    b = f"s3://{bucket}"
    cases = [
        (label_args("--out", f"{b}/archive/labels"), "das label", "is inside --input"),
        (label_args("--out", f"{b}/archive/"), "das label", "is the same location as --input"),
        (label_args("--out", b), "das label", "contains --input"),
        (["rescore", "--embeddings", f"{b}/labels/", "--cache", "cache.npz", "--out", f"{b}/labels/rescored"],
         "das rescore", "is inside --embeddings"),
    ]
    for args, prog, words in cases:
        args = [f"{b}/archive" if a == "archive" else a for a in args]
        result = das(args, user, timeout=60)
        assert result.rc == 2, result.out
        line = result.error_line(prog)
        assert words in line and "choose an --out" in line, line
    sibling = [f"{b}/archive" if a == "archive" else a for a in label_args("--out", f"{b}/archive2")]
    result = das(sibling, user, timeout=120)                  # archive2 is not inside archive: not refused for that
    assert result.rc == 2 and "choose an --out" not in result.out, result.out
    assert f"input {b}/archive does not exist" in result.error_line("das label")
