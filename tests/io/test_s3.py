"""das_core.io.s3: one reused S3 client per process, named and bounded S3 failures, retries."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import free_port

from das_core.errors import BucketNotFoundError, S3AccessDeniedError, StorageError
from das_core.io import storage
from das_core.io.s3 import as_storage_error, check_s3_access, clear_s3_cache, invalidate, s3_filesystem

pytestmark = pytest.mark.integration    # Ray, S3 (moto) or subprocesses: `make test-fast` skips it

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_python(code: str, env: dict[str, str], timeout: float = 60) -> tuple[dict, float]:
    """Run ``code`` in a fresh interpreter; it prints one JSON line. Returns it and the wall time."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), time.monotonic() - start


def clean_env(tmp_path, **extra: str) -> dict[str, str]:
    """An environment with no AWS credentials anywhere: no variables, empty files, no instance metadata."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    for name in ("credentials", "config"):
        (tmp_path / name).write_text("")
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"), AWS_CONFIG_FILE=str(tmp_path / "config"),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1", PYTHONPATH=REPO, **extra)
    return env


PROBE = """
    import json, sys
    from das_core.errors import StorageError
    from das_core.io import storage
    from das_core.io.s3 import check_s3_access
    uri = sys.argv[1] if len(sys.argv) > 1 else {uri!r}
    try:
        {call}
        print(json.dumps({{"error": None}}))
    except StorageError as exc:
        print(json.dumps({{"error": type(exc).__name__, "message": str(exc)}}))
"""


# ----------------------------------------------------------------- reuse
def test_one_client_per_process_and_endpoint(s3_endpoint, monkeypatch):
    first = s3_filesystem()
    assert s3_filesystem() is first
    assert storage.filesystem("s3://any/key")[0] is first
    other = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", other)
    moved = s3_filesystem()
    assert moved is not first and moved.endpoint_url == other
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    assert s3_filesystem() is first


def test_forked_child_makes_its_own_client(s3_endpoint, bucket):
    parent = s3_filesystem()
    storage.write_bytes_atomic(f"s3://{bucket}/a.txt", b"a")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                        # child: report, then leave without running pytest's teardown
        try:
            child = s3_filesystem()
            ok = child is not parent and s3_filesystem() is child
            ok = ok and storage.read_bytes(f"s3://{bucket}/a.txt") == b"a"
            os.write(write_end, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert s3_filesystem() is parent


def test_listing_sees_objects_written_by_another_client(s3_endpoint, bucket):
    import boto3

    prefix = f"s3://{bucket}/parts"
    storage.write_bytes_atomic(f"{prefix}/0.parquet", b"0")
    assert storage.list_files(prefix) == [f"{prefix}/0.parquet"]
    # a Ray worker writes with its own client: the driver's next listing must see it
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=bucket, Key="parts/1.parquet", Body=b"1")
    assert storage.list_files(prefix) == [f"{prefix}/0.parquet", f"{prefix}/1.parquet"]
    assert storage.exists(f"{prefix}/1.parquet")
    storage.remove(f"{prefix}/0.parquet")
    assert storage.list_files(prefix) == [f"{prefix}/1.parquet"]
    assert not storage.exists(f"{prefix}/0.parquet")


def test_recreated_bucket_after_invalidate(s3_endpoint, bucket):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    storage.write_bytes_atomic(f"s3://{bucket}/x", b"x")
    assert storage.exists(f"s3://{bucket}/x")
    client.delete_object(Bucket=bucket, Key="x")
    client.delete_bucket(Bucket=bucket)
    client.create_bucket(Bucket=bucket)
    invalidate(f"s3://{bucket}/x")
    assert not storage.exists(f"s3://{bucket}/x")
    assert storage.list_files(f"s3://{bucket}") == []
    clear_s3_cache()
    assert storage.list_files(f"s3://{bucket}") == []


# ----------------------------------------------------------------- named, bounded failures
def test_missing_bucket_is_named(s3_endpoint):
    uri = "s3://das-no-such-bucket-here/labels.txt"
    with pytest.raises(BucketNotFoundError, match="das-no-such-bucket-here"):
        check_s3_access([uri])
    with pytest.raises(BucketNotFoundError, match="das-no-such-bucket-here") as info:
        storage.read_bytes(uri)
    assert isinstance(info.value, FileNotFoundError)        # callers that handle missing files still do


def test_existing_bucket_passes_the_probe(s3_endpoint, bucket):
    check_s3_access([f"s3://{bucket}/in/", f"s3://{bucket}/out/", "/local/path"])


def test_missing_key_stays_a_missing_file(s3_endpoint, bucket):
    with pytest.raises(FileNotFoundError) as info:
        storage.read_bytes(f"s3://{bucket}/nothing-here")
    assert not isinstance(info.value, StorageError)


def test_no_credentials_is_named_and_fast(s3_endpoint, bucket, tmp_path):
    code = PROBE.format(uri=f"s3://{bucket}/labels.txt", call="storage.read_bytes(uri)")
    result, wall = run_python(code, clean_env(tmp_path, AWS_ENDPOINT_URL_S3=s3_endpoint))
    assert result["error"] == "S3CredentialsError", result
    assert "credentials" in result["message"] and "AWS_ACCESS_KEY_ID" in result["message"]
    assert wall < 30


def test_no_credentials_refused_by_the_probe(s3_endpoint, bucket, tmp_path):
    code = PROBE.format(uri=f"s3://{bucket}/x", call="check_s3_access([uri])")
    result, wall = run_python(code, clean_env(tmp_path, AWS_ENDPOINT_URL_S3=s3_endpoint))
    assert result["error"] == "S3CredentialsError", result
    assert wall < 30


def test_unreachable_endpoint_is_named_and_bounded(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"          # nothing listens there
    env = clean_env(tmp_path, AWS_ENDPOINT_URL_S3=endpoint, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    for call in ("check_s3_access([uri])", "storage.list_files(uri)"):
        result, wall = run_python(PROBE.format(uri="s3://bucket/prefix/", call=call), env)
        assert result["error"] == "S3UnreachableError", (call, result)
        assert endpoint in result["message"] and "s3://bucket/prefix/" in result["message"]
        assert wall < 30, (call, wall)


def test_access_denied_is_named():
    from botocore.exceptions import ClientError

    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")
    try:
        raise PermissionError("Access Denied") from denied       # what s3fs raises
    except PermissionError as exc:
        typed = as_storage_error(exc, "s3://b/k", "cannot read")
    assert isinstance(typed, S3AccessDeniedError) and isinstance(typed, PermissionError)
    assert str(typed).startswith("cannot read s3://b/k (access denied (AccessDenied)); check")
    assert as_storage_error(ValueError("x"), "s3://b/k") is None


# ----------------------------------------------------------------- retries
class FlakyS3(http.server.BaseHTTPRequestHandler):
    """Answers GET of any key with BODY, but the first ``failures`` requests get 503 SlowDown."""

    body = b"payload of the object"
    failures = 2
    seen: list[str] = []

    def _answer(self, with_body: bool) -> None:
        FlakyS3.seen.append(self.command)
        if len(FlakyS3.seen) <= FlakyS3.failures:
            error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error if with_body else b"")
            return
        data = self.body
        first, last = 0, len(data) - 1
        if self.headers.get("Range"):
            a, b = self.headers["Range"].split("=", 1)[1].split("-")
            first, last = int(a), min(int(b or last), last)
        self.send_response(206 if self.headers.get("Range") else 200)
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("ETag", '"abc"')
        self.send_header("Last-Modified", "Mon, 23 Nov 2026 10:00:00 GMT")
        self.end_headers()
        if with_body:
            self.wfile.write(data[first:last + 1])

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._answer(True)

    def do_HEAD(self):  # noqa: N802
        self._answer(False)

    def log_message(self, *args):
        pass


def test_transient_errors_are_retried(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FlakyS3.seen = []
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
        assert storage.read_bytes("s3://bucket/object.bin") == FlakyS3.body
        assert len(FlakyS3.seen) > FlakyS3.failures            # the 503s were answered, then retried
    finally:
        server.shutdown()
        server.server_close()
