"""--resume refuses a change of encoder device type (cpu / cuda), through the real ``das`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import soundfile as sf
from conftest import TEST_BATCH_SIZE, sine

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _das(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_resume_refuses_another_device_type(tmp_path, tiny_ckpt):
    archive = tmp_path / "archive"
    archive.mkdir()
    sf.write(str(archive / "one.wav"), sine(440, 2.0, 16000, amp=0.3), 16000)
    labels = tmp_path / "labels.txt"
    labels.write_text("dog_bark\nsiren\n")
    cache, out = tmp_path / "cache", tmp_path / "out"
    built = _das(["build-cache", "--labels", labels, "--checkpoint", tiny_ckpt, "--out", cache], tmp_path)
    assert built.returncode == 0, built.stderr
    first = _das(["label", "--input", archive, "--cache", cache, "--checkpoint", tiny_ckpt, "--out", out, "--local",
                  "--batch-size", str(TEST_BATCH_SIZE)], tmp_path)
    assert first.returncode == 0, first.stderr
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["settings"]["device"] == "cpu"

    again = _das(["label", "--input", archive, "--cache", cache, "--checkpoint", tiny_ckpt, "--out", out, "--local",
                  "--batch-size", str(TEST_BATCH_SIZE), "--resume", "--num-gpus", "1"], tmp_path)
    errors = [ln for ln in again.stderr.splitlines() if ln.startswith("das label: error: ")]
    assert again.returncode == 2 and "Traceback" not in again.stderr and len(errors) == 1, again.stderr
    assert "encoded on cpu" in errors[0] and "resume with --num-gpus 0" in errors[0], errors[0]

    # a run recorded as encoded on cuda (as a GPU run writes it) is not resumed on cpu either
    manifest["settings"]["device"] = "cuda"
    (out / "_manifest.json").write_text(json.dumps(manifest))
    back = _das(["label", "--input", archive, "--cache", cache, "--checkpoint", tiny_ckpt, "--out", out, "--local",
                 "--batch-size", str(TEST_BATCH_SIZE), "--resume"], tmp_path)
    assert back.returncode == 2 and "encoded on cuda" in back.stderr and "--num-gpus 1" in back.stderr, back.stderr
