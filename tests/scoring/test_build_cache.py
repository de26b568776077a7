"""das build-cache end to end: local and S3 (moto), refusals before any model is loaded."""

import pytest

from das_core.clap import checkpoint as ckpt
from das_core.scoring.cache import DriftCache
from jobs.build_cache import main

pytestmark = pytest.mark.integration    # Ray, S3 (moto) or subprocesses: `make test-fast` skips it


def run(capsys, *args):
    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_local_cache_with_default_phrases(tmp_path, tiny_ckpt, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("# UrbanSound8K\ndog_bark\nsiren\n\nchildren_playing\n")
    out = tmp_path / "caches" / "us8k.npz"
    rc, stdout, _ = run(capsys, "--labels", str(labels), "--checkpoint", tiny_ckpt, "--out", str(out), "--lam", "0.2")
    assert rc == 0
    cache = DriftCache.load(str(out))
    assert cache.labels == ("dog_bark", "siren", "children_playing")
    assert cache.label_texts == ("dog bark", "siren", "children playing")
    assert len(cache.noise_phrases) == 8 and cache.lam == 0.2
    assert cache.encoder_id == ckpt.fingerprint(tiny_ckpt)
    assert "classes:           3" in stdout and "noise phrases:     8" in stdout
    assert "text encodings:    27 (= 3 x (1 + 8))" in stdout
    assert cache.fingerprint in stdout and cache.encoder_id in stdout


def test_s3_labels_phrases_and_output(bucket, s3_endpoint, tiny_ckpt, capsys):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.put_object(Bucket=bucket, Key="meta/labels.txt", Body=b"siren\ncar_horn\n")
    s3.put_object(Bucket=bucket, Key="meta/phrases.txt", Body=b"rain on a roof\nwind noise\n")
    out = f"s3://{bucket}/caches/c.npz"
    rc, stdout, stderr = run(capsys, "--labels", f"s3://{bucket}/meta/labels.txt", "--noise-phrases",
                             f"s3://{bucket}/meta/phrases.txt", "--checkpoint", tiny_ckpt, "--out", out,
                             "--clean-template", "the sound of {label}", "--noisy-template", "{label} and {noise}",
                             "--s3-endpoint", s3_endpoint)
    assert rc == 0, stderr
    cache = DriftCache.load(out)
    assert cache.noise_phrases == ("rain on a roof", "wind noise")
    assert cache.clean_template == "the sound of {label}" and cache.noisy_template == "{label} and {noise}"
    assert "text encodings:    6 (= 2 x (1 + 2))" in stdout


@pytest.mark.parametrize("labels, extra, message", [
    ("", [], "has no labels"),
    ("# only a comment\n", [], "has no labels"),
    ("siren\ndog_bark\nsiren\n", [], "duplicate label 'siren'"),
    ("dog_bark\ndog bark\n", [], "both read 'dog bark'"),
    ("siren\n", ["--clean-template", "a loud noise"], r"must contain {label}"),
    ("siren\n", ["--noisy-template", "{label} outside"], r"must contain {noise}"),
    ("siren\n", ["--lam", "-1"], "lam must be"),
])
def test_refusals(tmp_path, capsys, labels, extra, message):
    path = tmp_path / "labels.txt"
    path.write_text(labels)
    # a checkpoint path that does not exist: the refusal must come before any model is touched
    rc, _, stderr = run(capsys, "--labels", str(path), "--checkpoint", str(tmp_path / "absent.pt"),
                        "--out", str(tmp_path / "c.npz"), *extra)
    assert rc == 2
    assert message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "c.npz").exists()


def test_missing_labels_file(tmp_path, capsys):
    rc, _, stderr = run(capsys, "--labels", str(tmp_path / "nope.txt"), "--checkpoint", "x.pt",
                        "--out", str(tmp_path / "c.npz"))
    assert rc == 2 and "labels file" in stderr and "does not exist" in stderr


def test_clean_template_ensemble_from_a_file(tmp_path, tiny_ckpt, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("dog_bark\nsiren\n")
    templates = tmp_path / "templates.txt"
    templates.write_text("sound of {label}\na recording of {label}\nthe noise a {label} makes\n")
    out = tmp_path / "c.npz"
    rc, stdout, stderr = run(capsys, "--labels", str(labels), "--checkpoint", tiny_ckpt, "--out", str(out),
                             "--clean-templates", str(templates))
    assert rc == 0, stderr
    cache = DriftCache.load(str(out))
    assert cache.clean_templates == ("sound of {label}", "a recording of {label}", "the noise a {label} makes")
    assert "clean templates:   3" in stdout and "text encodings:    22 (= 2 x (3 + 8))" in stdout
    rc, _, stderr = run(capsys, "--labels", str(labels), "--checkpoint", tiny_ckpt, "--out", str(out),
                        "--clean-templates", str(templates), "--clean-template", "a {label}")
    assert rc == 2 and "not both" in stderr
