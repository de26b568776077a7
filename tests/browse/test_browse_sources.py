"""Which audio ``das browse`` serves: the input rule (``InputGuard``) for each kind of input, and a run's input
found through its manifest (a rescore run's through its label output's). No server, no Ray."""

from __future__ import annotations

import os

import pytest

from das_core.browse.engine import TextEncoder
from das_core.browse.sources import FOLDER, LIST, ONE_FILE, InputGuard, run_input
from das_core.errors import SourceRefused
from das_core.output.manifest import RunManifest


@pytest.fixture
def archive(tmp_path):
    """input/ with a.wav, a tar shard and a symlink out to secret.wav beside the input."""
    (tmp_path / "input" / "sub").mkdir(parents=True)
    for name in ("input/a.wav", "input/sub/b.wav", "input/s.tar", "secret.wav"):
        (tmp_path / name).write_bytes(b"RIFF")
    os.symlink(tmp_path / "secret.wav", tmp_path / "input" / "link.wav")
    os.symlink(tmp_path, tmp_path / "input" / "up")
    return tmp_path


def _refused(guard: InputGuard, path: str) -> bool:
    try:
        guard.check(path)
    except SourceRefused:
        return True
    return False


def test_a_local_folder_serves_what_resolves_inside_it_only(archive):
    guard = InputGuard(str(archive / "input"))
    assert guard.kind == FOLDER
    inside = [archive / "input" / "a.wav", archive / "input" / "sub" / "b.wav", archive / "input" / "s.tar" / "m.wav"]
    assert all(guard.check(str(p)) == str(p) for p in inside)
    outside = [str(archive / "secret.wav"), str(archive / "input" / "link.wav"), str(archive / "input" / "up" /
               "secret.wav"), str(archive / "input" / ".." / "secret.wav"), "input/a.wav", "../secret.wav",
               str(archive / "input2" / "a.wav"), "s3://bucket/input/a.wav", "", str(archive / "input") + "\0x"]
    assert [p for p in outside if not _refused(guard, p)] == []


def test_an_s3_prefix_serves_its_bucket_and_prefix_only():
    guard = InputGuard("s3://archive/field/2024", FOLDER)
    assert guard.check("s3://archive/field/2024/a.flac") and guard.check("s3://archive/field/2024/s.tar/m.flac")
    for path in ("s3://other/field/2024/a.flac", "s3://archive/field/2024-b/a.flac", "s3://archive/field/a.flac",
                 "s3://archive/field/2024/../2023/a.flac", "/field/2024/a.flac", "s3://archive/field/2024"):
        assert _refused(guard, path), path


@pytest.mark.integration
def test_an_s3_input_is_a_prefix_or_one_object(s3_endpoint, bucket):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=bucket, Key="field/one.wav", Body=b"RIFF")
    assert InputGuard(f"s3://{bucket}/field").kind == FOLDER
    one = InputGuard(f"s3://{bucket}/field/one.wav")
    assert one.kind == ONE_FILE and one.check(f"s3://{bucket}/field/one.wav")
    assert _refused(one, f"s3://{bucket}/field/one.wav2") and _refused(one, f"s3://{bucket}/field/two.wav")


def test_a_path_list_serves_the_listed_paths_and_their_shards_members(archive):
    listed = archive / "list.csv"
    listed.write_text(f"path\ninput/a.wav\n{archive / 'input' / 's.tar'}\n")
    guard = InputGuard(str(listed))
    assert guard.kind == LIST
    assert guard.check(str(archive / "input" / "a.wav")) and guard.check(str(archive / "input" / "s.tar" / "x.wav"))
    for path in (str(archive / "input" / "sub" / "b.wav"), str(archive / "secret.wav"), "input/a.wav"):
        assert _refused(guard, path), path


def test_a_single_file_input_serves_that_file_only(archive):
    guard = InputGuard(str(archive / "input" / "s.tar"))
    assert guard.kind == ONE_FILE
    assert guard.check(str(archive / "input" / "s.tar" / "m.wav"))
    assert _refused(guard, str(archive / "input" / "a.wav"))


def test_a_rescore_runs_input_is_its_label_outputs(tmp_path):
    label = RunManifest("label", "complete", settings={"input": "s3://archive/field/"})
    label.write(str(tmp_path / "labels"))
    rescore = RunManifest("rescore", "complete", settings={"embeddings": str(tmp_path / "labels")})
    assert run_input(str(tmp_path / "r"), rescore) == "s3://archive/field"


def test_without_its_checkpoint_text_queries_say_why(tmp_path):
    gone = RunManifest("label", "complete", checkpoint={"uri": str(tmp_path / "moved.pt")})
    assert "not there" in TextEncoder(str(tmp_path), gone, None).available()
    assert "--checkpoint" in TextEncoder(str(tmp_path), RunManifest("label", "complete"), None).available()
