"""Failures seen through the real ``das`` command: one line, an exit code, the cause named, no long wait."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import pytest
from conftest import free_port

from das_core.errors import Refused as UsageError
from das_core.errors import RunFailed as JobFailed
from jobs.common import run_main

pytestmark = pytest.mark.integration    # Ray, S3 (moto) or subprocesses: `make test-fast` skips it

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def das(args: list[str], tmp_path, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, float]:
    """Run ``python -m jobs.cli ARGS``; returns exit status, stdout + stderr, wall seconds."""
    run_env = dict(env if env is not None else os.environ)
    run_env["PYTHONPATH"] = REPO
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=tmp_path, env=run_env, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def no_credentials_env(tmp_path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    for name in ("credentials", "config"):
        (tmp_path / name).write_text("")
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"), AWS_CONFIG_FILE=str(tmp_path / "config"),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1", **extra)
    return env


def assert_one_line(output: str, prog: str, *words: str) -> str:
    assert "Traceback" not in output, output
    errors = [ln for ln in output.splitlines() if ln.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, output
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


@pytest.fixture
def labels(tmp_path) -> str:
    path = tmp_path / "labels.txt"
    path.write_text("dog_bark\nsiren\n")
    return str(path)


# ----------------------------------------------------------------- build-cache: refused before the model loads
def test_build_cache_labels_folder(tmp_path):
    rc, out, wall = das(["build-cache", "--labels", str(tmp_path), "--checkpoint", "630k-audioset-best",
                         "--out", str(tmp_path / "c.npz")], tmp_path)
    assert rc == 2
    assert_one_line(out, "das build-cache", str(tmp_path), "is a folder")
    assert wall < 20


def test_build_cache_labels_missing_or_not_text(tmp_path):
    rc, out, _ = das(["build-cache", "--labels", str(tmp_path / "nope.txt"), "--checkpoint", "x",
                      "--out", str(tmp_path / "c.npz")], tmp_path)
    assert rc == 2
    assert_one_line(out, "das build-cache", "nope.txt", "does not exist")
    binary = tmp_path / "labels.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    rc, out, _ = das(["build-cache", "--labels", str(binary), "--checkpoint", "x", "--out", str(tmp_path / "c.npz")],
                     tmp_path)
    assert rc == 2
    assert_one_line(out, "das build-cache", "labels.bin", "not UTF-8")


def test_build_cache_out_folder_refused_before_loading(tmp_path, labels):
    # the checkpoint does not exist: reaching the model would give another message
    rc, out, wall = das(["build-cache", "--labels", labels, "--checkpoint", str(tmp_path / "none.pt"),
                         "--out", str(tmp_path)], tmp_path)
    assert rc == 2
    assert_one_line(out, "das build-cache", "--out", "is a folder", "cache.npz")
    assert "loading checkpoint" not in out and wall < 20


def test_build_cache_out_in_unwritable_place(tmp_path, labels):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc, out, _ = das(["build-cache", "--labels", labels, "--checkpoint", "x", "--out", str(blocker / "c.npz")],
                     tmp_path)
    assert rc == 2
    assert_one_line(out, "das build-cache", "is a file, not a folder")
    if os.geteuid() != 0:                          # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        rc, out, _ = das(["build-cache", "--labels", labels, "--checkpoint", "x", "--out", str(locked / "c.npz")],
                         tmp_path)
        assert rc == 2
        assert_one_line(out, "das build-cache", "permission denied")


# ----------------------------------------------------------------- S3: named and bounded
def test_s3_input_without_credentials(s3_endpoint, bucket, tmp_path):
    env = no_credentials_env(tmp_path, AWS_ENDPOINT_URL_S3=s3_endpoint)
    rc, out, wall = das(["label", "--input", f"s3://{bucket}/archive/", "--cache", "cache.npz", "--checkpoint", "x.pt",
                         "--out", str(tmp_path / "out")], tmp_path, env)
    assert rc == 2
    assert_one_line(out, "das label", f"s3://{bucket}/archive/", "credentials", "AWS_ACCESS_KEY_ID")
    assert wall < 30


def test_s3_labels_without_credentials(s3_endpoint, bucket, tmp_path):
    env = no_credentials_env(tmp_path, AWS_ENDPOINT_URL_S3=s3_endpoint)
    rc, out, wall = das(["build-cache", "--labels", f"s3://{bucket}/labels.txt", "--checkpoint", "x.pt",
                         "--out", str(tmp_path / "c.npz")], tmp_path, env)
    assert rc == 2
    assert_one_line(out, "das build-cache", "credentials")
    assert wall < 30


def test_unreachable_endpoint(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = no_credentials_env(tmp_path, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    rc, out, wall = das(["label", "--input", "s3://archive/2024/", "--cache", "cache.npz", "--checkpoint", "x.pt",
                         "--out", str(tmp_path / "out"), "--s3-endpoint", endpoint], tmp_path, env)
    assert rc == 2
    assert_one_line(out, "das label", "s3://archive/2024/", endpoint, "did not answer")
    assert wall < 30


def test_missing_bucket(s3_endpoint, tmp_path):
    rc, out, wall = das(["label", "--input", "s3://das-missing-bucket/archive/", "--cache", "cache.npz",
                         "--checkpoint", "x.pt", "--out", str(tmp_path / "out")], tmp_path)
    assert rc == 2
    assert_one_line(out, "das label", "das-missing-bucket", "does not exist")
    assert wall < 30


def test_missing_output_bucket_refused_before_work(s3_endpoint, tmp_path, labels):
    rc, out, wall = das(["build-cache", "--labels", labels, "--checkpoint", "x.pt",
                         "--out", "s3://das-missing-out/caches/c.npz"], tmp_path)
    assert rc == 2
    assert_one_line(out, "das build-cache", "das-missing-out")
    assert "loading checkpoint" not in out and wall < 30


# ----------------------------------------------------------------- Ray
def test_ray_address_pointing_nowhere(tmp_path):
    code = ("from jobs.common import ClusterError, init_ray\n"
            "try:\n    init_ray()\nexcept ClusterError as exc:\n    print('refused:', exc)\n")
    env = dict(os.environ, RAY_ADDRESS=f"127.0.0.1:{free_port()}", PYTHONPATH=REPO)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=90)
    assert "refused: cannot reach the Ray cluster at RAY_ADDRESS=127.0.0.1:" in proc.stdout, proc.stdout + proc.stderr
    assert "unset RAY_ADDRESS" in proc.stdout
    assert time.monotonic() - start < 30


# ----------------------------------------------------------------- the mapping itself
def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(verbose=False, s3_endpoint=None, debug=False, **kw)


def _raise(exc: BaseException):
    def body() -> int:
        raise exc
    return body


@pytest.mark.parametrize("exc, status", [
    (UsageError("--x 3 is too big (limit 2); use --x 2"), 2),
    (FileNotFoundError("input /a does not exist"), 2),
    (JobFailed("12 of 40 files could not be decoded"), 1),
    (ZeroDivisionError("division by zero"), 1),
])
def test_run_main_statuses(exc, status, capsys, monkeypatch):
    monkeypatch.delenv("DAS_DEBUG", raising=False)
    assert run_main("das x", _raise(exc), _args()) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("das x: error: ")
    if isinstance(exc, ZeroDivisionError):
        assert "internal error (ZeroDivisionError: division by zero); rerun with --debug" in err


def test_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.delenv("DAS_DEBUG", raising=False)
    args = _args()
    args.debug = True
    assert run_main("das x", _raise(UsageError("bad")), args) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("das x: error: bad")
    monkeypatch.setenv("DAS_DEBUG", "1")
    assert run_main("das x", _raise(KeyError("k")), _args()) == 1
    assert "Traceback" in capsys.readouterr().err


def test_raw_botocore_errors_become_storage_errors(capsys):
    from botocore.exceptions import NoCredentialsError

    assert run_main("das x", _raise(NoCredentialsError()), _args()) == 2
    assert_one_line(capsys.readouterr().err, "das x", "no usable AWS credentials")


def test_interrupt_hint_names_only_existing_options(capsys):
    assert run_main("das x", _raise(KeyboardInterrupt()), _args()) == 130
    assert "--resume" not in capsys.readouterr().err
    assert run_main("das x", _raise(KeyboardInterrupt()), _args(resume=False)) == 130
    assert "--resume" in capsys.readouterr().err


def test_argparse_usage_errors_unchanged(tmp_path):
    rc, out, _ = das(["build-cache", "--labels"], tmp_path)
    assert rc == 2 and "usage: das build-cache" in out and "Traceback" not in out


def test_too_few_gpus_is_refused_not_waited_for(monkeypatch):
    import ray

    from jobs.common import ClusterError, require_cluster_resources

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(ClusterError, match=r"local Ray instance .*needs 1 GPU\(s\) \(--num-gpus 1\) but it has 0\); "
                                           r"use --num-gpus 0 to encode on CPU"):
        require_cluster_resources(gpus=1)
    with pytest.raises(ClusterError, match=r"needs 4 CPU\(s\) but it has 2"):
        require_cluster_resources(cpus=4)
    require_cluster_resources(gpus=0, cpus=2)


def test_cluster_autoscaler_is_given_a_bounded_wait(monkeypatch):
    import ray

    from jobs.common import ClusterError, require_cluster_resources

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    offers = iter([{"CPU": 8.0}, {"CPU": 8.0, "GPU": 2.0}])
    monkeypatch.setattr(ray, "cluster_resources", lambda: next(offers))
    start = time.monotonic()
    require_cluster_resources(gpus=2, wait_s=2)           # the second look finds the new GPU node
    assert time.monotonic() - start < 3
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    start = time.monotonic()
    with pytest.raises(ClusterError, match=r"waited 0.5 s for the autoscaler \(DAS_CLUSTER_WAIT_S\)"):
        require_cluster_resources(gpus=2, wait_s=0.5)
    assert time.monotonic() - start < 2


def test_worker_exceptions_are_unwrapped(capsys):
    from ray.exceptions import RayTaskError

    remote = "Traceback (most recent call last):\n  File \"worker.py\", line 1, in f\nJobFailed: 3 parts failed\n"
    wrapped = RayTaskError("encode", remote, JobFailed("3 parts failed (disk full); free space")).as_instanceof_cause()
    assert run_main("das x", _raise(wrapped), _args()) == 1
    err = capsys.readouterr().err
    assert err == "das x: error: 3 parts failed (disk full); free space\n"


def test_ray_cluster_that_never_answers_is_given_up(tmp_path):
    """A port that accepts connections but never speaks: ray.init would wait for minutes, das stops it."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        env = dict(os.environ, RAY_ADDRESS=f"127.0.0.1:{silent.getsockname()[1]}", DAS_RAY_CONNECT_TIMEOUT_S="4",
                   PYTHONPATH=REPO)
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", "from jobs.common import init_ray; init_ray()"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=90)
        wall = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert_one_line(proc.stderr, "das", "did not answer within 4 s", "RAY_ADDRESS")
    assert wall < 30


def test_a_timeout_elsewhere_is_not_blamed_on_s3(capsys):
    assert run_main("das x", _raise(TimeoutError("actor did not start")), _args()) == 1
    err = capsys.readouterr().err
    assert "internal error (TimeoutError: actor did not start)" in err and "S3" not in err


def test_evaluate_out_that_is_a_file(tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("")
    (tmp_path / "data").mkdir()
    rc, out, wall = das(["evaluate", "--dataset", "esc50", "--root", str(tmp_path / "data"), "--noise-root",
                         str(tmp_path / "data"), "--checkpoint", "x.pt", "--out", str(blocker)], tmp_path)
    assert rc == 2
    assert_one_line(out, "das evaluate", "results.txt is a file (a folder is expected)")
    assert wall < 30


def test_output_folder_checks(tmp_path):
    from das_core.io.checks import check_output_folder

    check_output_folder(str(tmp_path / "new" / "deeper"))
    check_output_folder(str(tmp_path))
    check_output_folder("s3://bucket/prefix/")
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match=r"--embeddings .*f/sub: .*/f is a file, not a folder"):
        check_output_folder(str(tmp_path / "f" / "sub"), "--embeddings")


# ----------------------------------------------------------------- das label: refused before work, one line
def test_label_empty_extensions_and_out_a_file(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.wav").write_bytes(b"")
    common = ["label", "--input", str(tmp_path / "in"), "--cache", "cache.npz", "--checkpoint", "x.pt"]
    rc, out, wall = das(common + ["--out", str(tmp_path / "o"), "--extensions", ","], tmp_path)
    assert rc == 2 and wall < 30
    assert_one_line(out, "das label", "--extensions", "no audio extensions")
    blocker = tmp_path / "out.txt"
    blocker.write_text("")
    rc, out, wall = das(common + ["--out", str(blocker)], tmp_path)
    assert rc == 2 and wall < 30
    assert_one_line(out, "das label", "out.txt is a file (a folder is expected)")


# ----------------------------------------------------------------- das's own local Ray (issue 20, item 4)
@pytest.fixture
def fake_ray_init(monkeypatch, tmp_path):
    """``ray.init`` recorded instead of run, in a private ``RAY_TMPDIR``; ``writes``: what it leaves in Ray's
    current-cluster file (as ``ray start`` would), ``fails``: an exception to raise."""
    import ray

    from jobs import common

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    state = {"calls": [], "writes": None, "fails": None, "file": tmp_path / "ray" / "ray_current_cluster"}

    def init(**kw):
        state["calls"].append(kw)
        if state["writes"]:
            state["file"].write_text(state["writes"])
        if state["fails"]:
            raise state["fails"]

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(common, "_own_gcs_address", lambda: "10.0.0.9:6379")
    return state


def test_without_ray_address_das_starts_its_own_ray(fake_ray_init):
    from jobs.common import init_ray

    fake_ray_init["file"].write_text("127.0.0.1:40000")          # another process's cluster
    init_ray()
    (call,) = fake_ray_init["calls"]
    assert call["address"] == "local" and call["include_dashboard"] is False
    assert fake_ray_init["file"].read_text() == "127.0.0.1:40000"


def test_das_leaves_the_current_cluster_file_as_it_found_it(fake_ray_init):
    from jobs.common import init_ray

    fake_ray_init["writes"] = "10.0.0.9:6379"                     # das's own instance named there: taken back
    init_ray()
    assert not fake_ray_init["file"].exists()
    fake_ray_init["file"].write_text("127.0.0.1:40000")
    init_ray()
    assert fake_ray_init["file"].read_text() == "127.0.0.1:40000"
    fake_ray_init["writes"] = "127.0.0.1:50000"                   # another cluster started meanwhile: kept
    init_ray()
    assert fake_ray_init["file"].read_text() == "127.0.0.1:50000"


def test_a_failed_local_start_never_advises_ray_stop(fake_ray_init):
    from jobs.common import ClusterError, init_ray

    fake_ray_init["fails"] = RuntimeError("raylet died")
    with pytest.raises(ClusterError) as info:
        init_ray()
    message = str(info.value)
    assert message.startswith("cannot start a local Ray (RuntimeError: raylet died); check free memory")
    assert "ray stop" not in message


def test_a_write_that_fails_during_a_run_is_one_line_with_its_path(capsys, monkeypatch):
    """Ray Data appends its retry advice to a UDF exception's args; the path and cause survive the trip."""
    import errno
    import pickle

    from ray.data._internal.util import _annotate_exception_with_retry_context
    from ray.exceptions import RayTaskError

    from das_core.errors import WriteFailed
    from jobs.pipeline import WorkerWriteFailed

    monkeypatch.delenv("DAS_DEBUG", raising=False)
    for exc in (WriteFailed(errno.EROFS, "Read-only file system", "/o/run_id=1/segments/part-u1.parquet"),
                WorkerWriteFailed(errno.ENOSPC, "No space left on device", "/o/run_id=1/segments/part-u1.parquet")):
        annotated = _annotate_exception_with_retry_context(exc, description="apply UDF transform", attempts=1,
                                                           max_attempts=1, total_backoff_s=0, exception_str=str(exc))
        arrived = pickle.loads(pickle.dumps(annotated))
        assert arrived.filename == "/o/run_id=1/segments/part-u1.parquet" and arrived.errno == exc.errno
        wrapped = RayTaskError("rescore", "Traceback ...", arrived).as_instanceof_cause()
        assert run_main("das rescore", _raise(wrapped), _args()) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"das rescore: error: cannot write /o/run_id=1/segments/part-u1.parquet "
                              f"({exc.strerror}); ") and err.count("\n") == 1 and "internal error" not in err
