"""Issue 20, items 3, 5 and 7 through the real ``das`` command: one run per --out (the lease), manifests that
tell the truth (failed, interrupted, never left running) and an error budget that fits small archives."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TEST_BATCH_SIZE, write_clips

from das_core.clap.encoder import DEFAULT_BATCH_SIZE
from everyday.conftest import REPO, das

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOCK = "_lock.json"


def label_args(tiny_ckpt: str, small_cache: str, out: str = "labels", inp: str = "archive",
               batch_size: int = TEST_BATCH_SIZE) -> list[str]:
    return ["label", "--input", inp, "--out", out, "--cache", small_cache, "--checkpoint", tiny_ckpt,
            "--no-report", "--files-per-unit", "2", "--batch-size", str(batch_size)]


def manifest(folder: Path) -> dict:
    return json.loads((folder / "_manifest.json").read_text())


def background(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(check, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"das ended ({proc.returncode}) before the awaited state:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the run's state")
        time.sleep(0.1)


def running(out: Path) -> bool:
    try:
        return manifest(out)["status"] == "running"
    except (FileNotFoundError, ValueError):
        return False


def test_a_second_writer_is_refused_at_once_naming_the_first(workdir, tiny_ckpt, small_cache):
    # das label's own batch size: passes of 16 windows keep the first run long enough to meet
    first = background(label_args(tiny_ckpt, small_cache, batch_size=DEFAULT_BATCH_SIZE) + ["--ray"], workdir)
    try:
        wait_for(lambda: (workdir / "labels" / LOCK).exists(), first)
        holder = json.loads((workdir / "labels" / LOCK).read_text())
        for second in (label_args(tiny_ckpt, small_cache, batch_size=DEFAULT_BATCH_SIZE),
                       label_args(tiny_ckpt, small_cache, batch_size=DEFAULT_BATCH_SIZE) + ["--resume"],
                       ["rescore", "--embeddings", "elsewhere", "--cache", small_cache, "--out", "labels"]):
            r = das(second, workdir, timeout=60)
            prog = "das " + second[0]
            line = r.error_line(prog)
            assert r.rc == 2 and r.wall < 30, r.out
            for part in (f"labels is in use by another run (run {holder['run_id']}", "das label",
                         f"host {socket.gethostname()}", f"pid {first.pid}", "since", "last heartbeat",
                         "another --out"):
                assert part in line, line
        out, _ = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out
    m = manifest(workdir / "labels")
    assert m["status"] == "complete" and len(m["runs"]) == 1 and m["runs"][0]["finished"]
    assert m["runs"][0]["run_id"] == holder["run_id"]
    assert not (workdir / "labels" / LOCK).exists()


def test_a_stale_lock_is_taken_over_and_two_bad_files_of_eighteen_do_not_fail_the_run(tmp_path, tiny_ckpt,
                                                                                     small_cache):
    write_clips(tmp_path / "archive", {f"clip{i:02d}.wav": (0.5, 16000, 200.0 + 50 * i) for i in range(16)},
                broken={"bad1.wav": b"RIFF\x00\x00\x00\x00WAVEfmt not a wav", "bad2.wav": b"not audio at all"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / LOCK).write_text(json.dumps({
        "run_id": "20260101T000000Z-dead00", "command": "das label", "host": socket.gethostname(), "pid": dead.pid,
        "started": "2026-01-01T00:00:00+00:00", "heartbeat": "2026-01-01T00:00:00+00:00",
        "heartbeat_unix": time.time() - 7200}))
    r = das(label_args(tiny_ckpt, small_cache), tmp_path, timeout=240)
    assert r.rc == 0, r.out
    assert "Traceback" not in r.out
    assert re.search(r"took over the lock on \S*/labels from run 20260101T000000Z-dead00.*no longer exists", r.out)
    files_in = next(line for line in r.out.splitlines() if "files in:" in line)
    assert files_in.split("files in:")[1].split() == ["18", "=", "16", "ok", "+", "2", "error"], files_in
    errors = next(line for line in r.out.splitlines() if line.strip().startswith("errors:"))
    assert "bad1.wav" in errors and "bad2.wav" in errors, errors         # bad files named plainly
    m = manifest(tmp_path / "labels")
    assert m["status"] == "complete" and m["counts"]["error"] == 2 and m["counts"]["files"] == 18
    assert not (tmp_path / "labels" / LOCK).exists()


def test_a_refused_start_is_recorded_failed_and_the_next_plain_run_says_what_to_do(workdir, tiny_ckpt,
                                                                                   small_cache):
    r = das(label_args(tiny_ckpt, small_cache) + ["--num-gpus", "1", "--ray"], workdir, timeout=240)
    line = r.error_line("das label")
    assert r.rc == 2 and "1 GPU(s)" in line, r.out
    m = manifest(workdir / "labels")
    assert m["status"] == "failed" and "1 GPU(s)" in m["runs"][-1]["reason"]
    assert not (workdir / "labels" / LOCK).exists()
    again = das(label_args(tiny_ckpt, small_cache), workdir, timeout=120)
    line = again.error_line("das label")
    assert again.rc == 2 and "holds a failed run" in line and "1 GPU(s)" in line, again.out
    assert "pass --resume to continue it" in line and "--overwrite to start again" in line


def test_an_interrupted_run_is_recorded_interrupted(workdir, tiny_ckpt, small_cache):
    # a long recording keeps the run busy well past the Ctrl-C, on a fast machine too
    write_clips(workdir / "archive", {"long.wav": (900.0, 16000, 500.0)})
    proc = background(label_args(tiny_ckpt, small_cache), workdir)
    try:
        wait_for(lambda: running(workdir / "labels"), proc)
        time.sleep(2)
        assert proc.poll() is None, "the run ended before the Ctrl-C; the test needs a longer input"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    # -2: CPython ends by SIGINT (the shell shows 130 too) when the Ctrl-C landed inside exec()ed code, as
    # dataclasses' generated methods are during an import, even though das handled it
    assert proc.returncode in (130, -2), out
    assert "Traceback" not in out and "das label: error: interrupted" in out, out
    m = manifest(workdir / "labels")
    assert m["status"] == "interrupted" and m["runs"][-1]["reason"].startswith("interrupted"), m["runs"]
    assert not (workdir / "labels" / LOCK).exists()
    again = das(label_args(tiny_ckpt, small_cache), workdir, timeout=120)
    line = again.error_line("das label")
    assert again.rc == 2 and "holds an interrupted run" in line and "pass --resume to continue it" in line


def test_tar_shards_are_counted_on_one_scale_and_a_fraction_of_one_never_fails(tmp_path, tiny_ckpt, small_cache):
    from conftest import CLIPS, write_tar

    shards = tmp_path / "shards"
    shards.mkdir()
    good = Path(write_tar(tmp_path / "good.tar", extra=False)).read_bytes()
    (shards / "a-good.tar").write_bytes(good)
    (shards / "b-cut.tar").write_bytes(good[: len(good) * 2 // 3])
    (shards / "c-junk.tar").write_bytes(b"no tar here" * 100)
    corrupt = dict(CLIPS, sample001=b"\x00" * 3000)
    (shards / "d-corrupt.tar").write_bytes(Path(write_tar(tmp_path / "corrupt.tar", clips=corrupt,
                                                          extra=False)).read_bytes())
    r = das(label_args(tiny_ckpt, small_cache, inp="shards") + ["--max-error-fraction", "1"], tmp_path, timeout=240)
    assert r.rc == 0, r.out
    files_in = next(line for line in r.out.splitlines() if "files in:" in line)
    numbers = [int(n) for n in re.findall(r"-?\d+", files_in)]
    assert all(n >= 0 for n in numbers) and "not done" not in files_in, files_in
    total, ok, error = numbers
    m = manifest(tmp_path / "labels")
    assert (total, ok, error) == (m["counts"]["files"], m["counts"]["ok"], m["counts"]["error"])
    assert total == ok + error and error >= 3 and ok >= 6
