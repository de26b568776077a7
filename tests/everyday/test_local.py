"""Small jobs without a cluster, through the real ``das`` command: a tiny archive is labelled, searched and
re-scored in the das process (Ray is not even imported) and gives what ``--ray`` gives."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
from conftest import TEST_BATCH_SIZE, write_clips

from das_core.output.manifest import RunManifest
from everyday.conftest import das

pytestmark = pytest.mark.integration

CLIPS = {"a.wav": (1.0, 16000, 440.0), "b.wav": (0.14, 22050, 880.0), "c.wav": (12.0, 44100, 330.0, 0.1)}


def imported_ray(output: str) -> list[str]:
    """The Ray modules a command imported, from its ``PYTHONPROFILEIMPORTTIME`` lines."""
    names = [line.rsplit("|", 1)[-1].strip() for line in output.splitlines() if line.startswith("import time:")]
    return [n for n in names if n == "ray" or n.startswith("ray.")]


def importtime_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, small_cache, tiny_ckpt):
    """A tiny archive labelled by a plain ``das label`` (no --local, no --ray); (folder, the command's result)."""
    root = tmp_path_factory.mktemp("everyday-local")
    write_clips(root / "archive", CLIPS, broken={"broken.wav": b"RIFF\x00\x00\x00\x00WAVEfmt not a wav"})
    result = das(["label", "--input", "archive", "--cache", small_cache, "--checkpoint", tiny_ckpt, "--out",
                  str(root / "out"), "--max-error-fraction", "0.5", "--batch-size", str(TEST_BATCH_SIZE)], root,
                 env=importtime_env())
    return root, result


def test_a_tiny_archive_is_labelled_in_the_das_process(labelled):
    root, result = labelled
    assert result.rc == 0, result.out
    assert "engine: local (small job)" in result.out
    assert imported_ray(result.out) == [], "das label imported Ray for a small job"
    manifest = RunManifest.read(str(root / "out"))
    assert manifest.status == "complete" and [r["engine"] for r in manifest.runs] == ["local"]
    assert manifest.counts["files"] == len(CLIPS) + 1 and manifest.counts["error"] == 1
    files = pq.read_table(root / "out" / "files")
    assert sorted(files.column("file_id").to_pylist()) == sorted([*CLIPS, "broken.wav"])


@pytest.mark.slow
def test_search_here_finds_what_search_on_ray_finds(labelled, tiny_ckpt):
    root, _ = labelled
    args = ["search", "--embeddings", str(root / "out"), "--checkpoint", tiny_ckpt, "--text", "siren",
            "--text", "dog barking", "--top", "3"]
    here = das([*args, "--out", str(root / "hits-here.parquet")], root, env=importtime_env())
    assert here.rc == 0, here.out
    assert "engine: local (small job)" in here.out and imported_ray(here.out) == []
    on_ray = das([*args, "--ray", "--out", str(root / "hits-ray.parquet")], root, env=importtime_env())
    assert on_ray.rc == 0, on_ray.out
    assert "engine: ray (--ray)" in on_ray.out and imported_ray(on_ray.out)
    hits = pq.read_table(root / "hits-here.parquet")
    assert hits.num_rows == 6
    assert hits.equals(pq.read_table(root / "hits-ray.parquet"))


@pytest.mark.slow
def test_rescore_here_writes_what_rescore_on_ray_writes(labelled, small_cache):
    root, _ = labelled
    args = ["rescore", "--embeddings", str(root / "out"), "--cache", small_cache, "--out", str(root / "rescored"),
            "--no-report"]
    here = das([*args, "--run-id", "here"], root, env=importtime_env())
    assert here.rc == 0, here.out
    assert imported_ray(here.out) == []
    on_ray = das([*args, "--run-id", "ray", "--ray"], root)
    assert on_ray.rc == 0, on_ray.out
    for run_id, engine in (("here", "local"), ("ray", "ray")):
        assert [r["engine"] for r in RunManifest.read(str(root / "rescored" / f"run_id={run_id}")).runs] == [engine]
    for folder, keys in (("segments", ["file_id", "segment"]), ("files", ["file_id"])):
        tables = [pq.read_table(root / "rescored" / f"run_id={r}" / folder).sort_by([(k, "ascending") for k in keys])
                  for r in ("here", "ray")]
        assert tables[0].num_rows and tables[0].equals(tables[1]), folder


@pytest.mark.parametrize("flags, cause", [(["--local", "--num-gpus", "2"], "--num-gpus 2 asks for more"),
                                          (["--local", "--actors", "2"], "--actors 2 asks for more"),
                                          (["--local", "--ray"], "--local and --ray exclude each other")])
def test_local_with_what_needs_ray_is_refused(workdir, small_cache, tiny_ckpt, flags, cause):
    result = das(["label", "--input", "archive", "--cache", small_cache, "--checkpoint", tiny_ckpt, "--out", "out",
                  *flags], workdir)
    assert result.rc == 2
    assert cause in result.error_line("das label")
    assert not (workdir / "out").exists()
    assert result.wall < 60
