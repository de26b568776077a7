"""Faults survived (issue #12 item 6): each test injects one fault into a real label run (local Ray, moto S3)
and checks that it ends with exactly the rows of an undisturbed run, or with the documented outcome.

Processes are only ever killed when they descend from this test process (the Ray cluster it started), found
by the title Ray gives a worker while it runs a task (``ray::...decode_task...``, ``...EncodeAndWrite...``).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from conftest import free_port, sine

from das_core.audio.info import DECODER_CRASH
from das_core.io import storage
from das_core.output.manifest import RunManifest
from das_core.output.store import OutputStore
from das_core.scoring.cache import DriftCache
from jobs.label import LabelConfig, main, run

pytestmark = pytest.mark.integration

LABELS = ["siren", "dog_bark", "engine_idling"]
# name -> seconds: short clips, two of them long enough to span chunks of 2 windows (pieces)
CLIPS = {f"clip-{i:02d}.wav": s for i, s in enumerate([4.0, 12.0, 7.5, 25.0, 3.0, 9.0, 15.0, 2.5, 31.0, 6.0,
                                                        11.0, 5.0])}
RUN = {"files_per_unit": 2, "chunk_windows": 2, "batch_size": 2, "max_error_fraction": 1.0,
       "progress_every_s": 1e9}


def _wav(seconds: float, i: int) -> bytes:
    rng = np.random.default_rng(i)
    x = sine(180 + 70 * i, seconds, 22050, amp=0.3) + 0.02 * rng.standard_normal(int(round(seconds * 22050)))
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), 22050, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("faults-archive")
    for i, (name, seconds) in enumerate(CLIPS.items()):
        (root / name).write_bytes(_wav(seconds, i))
    return str(root)


@pytest.fixture(scope="module")
def cache_uri(encoder, tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("faults-cache") / "cache.npz")
    DriftCache.build(encoder.embed_text, LABELS, ["traffic noise"], encoder_id=encoder.encoder_id,
                     encoder_name="tiny.pt").save(uri)
    return uri


@pytest.fixture(scope="module")
def reference(ray_local, archive, cache_uri, tiny_ckpt, tmp_path_factory) -> str:
    """The undisturbed run every faulty run is compared with."""
    out = str(tmp_path_factory.mktemp("faults-out") / "reference")
    run(LabelConfig(input=archive, cache=cache_uri, checkpoint=tiny_ckpt, out=out, **RUN))
    return out


def _tables(out: str) -> tuple[pa.Table, pa.Table]:
    store = OutputStore(out)
    files = store.read_files().sort_by([("file_id", "ascending")]).combine_chunks()
    segments = store.read_segments().sort_by([("file_id", "ascending"), ("segment", "ascending")]).combine_chunks()
    return files, segments


def assert_same_rows(out: str, reference: str, drop: tuple[str, ...] = ()) -> None:
    """Exactly the reference's rows (embeddings bit for bit), each once; no transient part left behind."""
    (files, segments), (ref_files, ref_segments) = _tables(out), _tables(reference)
    assert files.column("file_id").to_pylist() == sorted(CLIPS)
    keys = list(zip(segments.column("file_id").to_pylist(), segments.column("segment").to_pylist()))
    assert len(keys) == len(set(keys)) == len(ref_segments)
    for got, want in ((files, ref_files), (segments, ref_segments)):
        got, want = got.drop_columns(list(drop)), want.drop_columns(list(drop))
        assert got.schema == want.schema
        for name in got.column_names:
            assert got.column(name).equals(want.column(name)), name
    leftovers = [f for _, _, names in os.walk(out) for f in names if f.startswith(".tmp-")]
    assert not leftovers and not storage.list_files(storage.join(out, "pieces"))


# ------------------------------------------------------------------ killing Ray workers

def _descends_from_us(pid: int) -> bool:
    """Whether ``pid`` is a descendant of this test process (the Ray cluster it started, not another's)."""
    me, seen = os.getpid(), 0
    while pid > 1 and seen < 32:
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == me:
            return True
        seen += 1
    return False


def _pids_titled(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in title and title.startswith("ray::") and _descends_from_us(int(entry)):
            pids.append(int(entry))
    return pids


class Killer(threading.Thread):
    """Kills (SIGKILL) the first process of ours titled ``text`` once ``ready()`` holds; gives up after
    ``timeout_s``."""

    def __init__(self, text: str, ready: Callable[[], bool] = lambda: True, timeout_s: float = 300.0):
        super().__init__(daemon=True)
        self.text, self.ready, self.deadline = text, ready, time.monotonic() + timeout_s
        self.killed: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.killed and not self.stop.is_set() and time.monotonic() < self.deadline:
            pids = _pids_titled(self.text) if self.ready() else []
            for pid in pids[:1]:
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
            time.sleep(0.01)


def _with_killer(killer: Killer, work: Callable[[], object]) -> None:
    killer.start()
    try:
        work()
    finally:
        killer.stop.set()
        killer.join(5)


def test_decode_worker_killed_while_decoding(reference, archive, cache_uri, tiny_ckpt, tmp_path):
    out = str(tmp_path / "out")
    killer = Killer("decode_task")
    _with_killer(killer, lambda: run(LabelConfig(input=archive, cache=cache_uri, checkpoint=tiny_ckpt, out=out,
                                                 **RUN)))
    assert len(killer.killed) == 1, "no decode task was caught running"
    assert_same_rows(out, reference)
    assert RunManifest.read(out).to_dict()["counts"]["files"] == len(CLIPS)


def test_encoder_actor_killed_mid_run(reference, archive, cache_uri, tiny_ckpt, tmp_path):
    out = str(tmp_path / "out")

    def some_parts_written() -> bool:
        return len(storage.list_files(storage.join(out, "segments"))) >= 2 if os.path.isdir(out) else False

    killer = Killer("EncodeAndWrite", ready=some_parts_written)
    _with_killer(killer, lambda: run(LabelConfig(input=archive, cache=cache_uri, checkpoint=tiny_ckpt, out=out,
                                                 **RUN)))
    assert len(killer.killed) == 1, "the encoder actor was not caught running"
    assert_same_rows(out, reference)
    assert RunManifest.read(out).to_dict()["counts"]["files"] == len(CLIPS)


# ------------------------------------------------------------------ a file that kills the decoder


def test_decoder_crash_is_one_error_row(reference, archive, cache_uri, tiny_ckpt, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    crasher = "clip-05.wav"                   # shares unit u00000002 with clip-04.wav
    monkeypatch.setenv("DAS_TEST_CRASH_ON", crasher)
    manifest = run(LabelConfig(input=archive, cache=cache_uri, checkpoint=tiny_ckpt, out=out, **RUN))
    files, segments = _tables(out)
    ref_files, ref_segments = _tables(reference)
    row = files.filter(pc.equal(files.column("file_id"), crasher)).to_pylist()
    assert len(row) == 1 and row[0]["status"] == "error" and row[0]["error_kind"] == DECODER_CRASH
    assert "died twice while decoding" in row[0]["error"] and row[0]["path"] in row[0]["error"]
    others = pc.not_equal(files.column("file_id"), crasher)
    assert files.filter(others).equals(ref_files.filter(pc.not_equal(ref_files.column("file_id"), crasher)))
    ref_others = ref_segments.filter(pc.not_equal(ref_segments.column("file_id"), crasher))
    assert segments.equals(ref_others)
    assert "clip-04.wav" in set(segments.column("file_id").to_pylist())    # the rest of its unit is labelled
    assert manifest["counts"]["errors_by_kind"] == {DECODER_CRASH: 1}
    assert manifest["counts"]["files"] == len(CLIPS)


# ------------------------------------------------------------------ a failed write at commit time


def test_failed_commit_write_then_resume(reference, archive, cache_uri, tiny_ckpt, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    args = ["--input", archive, "--cache", cache_uri, "--checkpoint", tiny_ckpt, "--out", out,
            "--files-per-unit", "2", "--chunk-windows", "2", "--batch-size", "2", "--max-error-fraction", "1"]
    monkeypatch.setenv("DAS_TEST_FAIL_WRITE", "part-u00000003-end")     # that unit's commit hits a full disk
    capsys.readouterr()
    assert main(args) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("das label: error:")]
    assert len(errors) == 1, errors
    assert "cannot write" in errors[0] and "part-u00000003-end.arrow" in errors[0]
    assert "No space left on device" in errors[0] and "--resume" in errors[0]
    # nothing half-written is visible, and no temporary file is left (not even a hidden one)
    assert not [f for _, _, names in os.walk(out) for f in names if f.startswith(".tmp-")]
    for part in storage.list_files(out, (".parquet",)):
        pq.read_table(part)
    assert "u00000003" not in OutputStore(out).listing().committed_units()

    monkeypatch.delenv("DAS_TEST_FAIL_WRITE")
    assert main(args + ["--resume"]) == 0
    assert_same_rows(out, reference)


# ------------------------------------------------------------------ transient S3 failures


class FlakyS3Proxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of moto that fails the first attempt of every
    ``fail_every``-th request (503, or a connection reset), and delays every ``delay_every``-th one.

    A request that was failed once is passed the next time (same method, path and range), so that a
    client that retries always gets through and the outcome is deterministic. It stops by itself after
    ``lifetime_s``."""

    def __init__(self, target: str, fail_every: int = 4, delay_every: int = 7, delay_s: float = 0.3,
                 lifetime_s: float = 600.0):
        self.target = target.removeprefix("http://")
        self.fail_every, self.delay_every, self.delay_s = fail_every, delay_every, delay_s
        self.lock = threading.Lock()
        self.requests = self.unavailable = self.resets = self.delayed = self.retried = 0
        self.failed: set[tuple] = set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:           # noqa: N802 - http.server's naming
                proxy.handle(self)

            do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.timer = threading.Timer(lifetime_s, self.server.shutdown)
        self.timer.daemon = True

    def __enter__(self) -> FlakyS3Proxy:
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def _decide(self, key: tuple) -> str:
        with self.lock:
            self.requests += 1
            if key in self.failed:
                self.failed.discard(key)
                self.retried += 1
                return "pass"
            if self.requests % self.fail_every == 0:
                self.failed.add(key)
                kind = "reset" if (self.requests // self.fail_every) % 2 else "503"
                self.resets += kind == "reset"
                self.unavailable += kind == "503"
                return kind
            if self.requests % self.delay_every == 0:
                self.delayed += 1
                return "delay"
            return "pass"

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        what = self._decide((h.command, h.path, h.headers.get("Range")))
        if what == "reset":
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True           # closed with RST, no answer
            return
        if what == "503":
            error = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
            h.send_response(503)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(error)))
            h.end_headers()
            h.wfile.write(error)
            return
        if what == "delay":
            time.sleep(self.delay_s)
        conn = http.client.HTTPConnection(self.target, timeout=30)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in ("connection", "proxy-connection")}
            conn.request(h.command, h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive", "server", "date"):
                h.send_header(k, v)
        h.send_header("Content-Length", resp.getheader("Content-Length", "0") if h.command == "HEAD"
                      else str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)


def test_transient_s3_failures(reference, archive, cache_uri, tiny_ckpt, s3_endpoint, monkeypatch):
    import boto3

    bucket = "das-faults-flaky"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    for name in CLIPS:
        with open(os.path.join(archive, name), "rb") as f:
            s3.put_object(Bucket=bucket, Key=f"archive/{name}", Body=f.read())
    out = f"s3://{bucket}/labels"
    with FlakyS3Proxy(s3_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)      # this process; workers get it by runtime_env
        manifest = run(LabelConfig(input=f"s3://{bucket}/archive", cache=cache_uri, checkpoint=tiny_ckpt, out=out,
                                   **RUN))
        injected = proxy.unavailable + proxy.resets
        print(f"proxy: {proxy.requests} requests, {proxy.unavailable} 503, {proxy.resets} resets, "
              f"{proxy.delayed} delayed, {proxy.retried} retried after a failure")
        assert proxy.unavailable > 0 and proxy.resets > 0 and proxy.delayed > 0
        assert proxy.retried >= injected - 2 > 0      # failed requests came back (a listing may not repeat exactly)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    assert manifest["status"] == "complete" and manifest["counts"]["files"] == len(CLIPS)
    assert_same_rows(out, reference, drop=("path",))


# ------------------------------------------------------------------ the pieces, without a cluster


def test_temporaries_of_killed_writers_are_removed(tmp_path):
    (tmp_path / ".tmp-abc123").write_bytes(b"half a part")
    (tmp_path / "part-u00000000-c00000.parquet").write_bytes(b"kept")
    (tmp_path / ".tmp-dir").mkdir()
    assert storage.list_files(str(tmp_path)) == [str(tmp_path / "part-u00000000-c00000.parquet")]   # unseen
    assert storage.remove_temporaries(str(tmp_path)) == 1
    assert sorted(os.listdir(tmp_path)) == [".tmp-dir", "part-u00000000-c00000.parquet"]
    assert storage.remove_temporaries(str(tmp_path / "absent")) == 0


def test_failed_local_write_leaves_nothing(tmp_path, monkeypatch):
    from das_core.label.sink import write_refusal

    target = tmp_path / "files" / "part-u00000001-end.parquet"
    monkeypatch.setenv(storage.TEST_FAIL_WRITE_ENV, "u00000001-end")
    with pytest.raises(OSError) as caught:
        storage.write_bytes_atomic(str(target), b"x" * 1000)
    assert caught.value.filename == str(target) and caught.value.strerror == os.strerror(28)
    assert os.listdir(target.parent) == []                 # the temporary file is gone too
    try:
        raise RuntimeError("the task failed") from caught.value
    except RuntimeError as wrapped:
        refusal = write_refusal(wrapped, str(tmp_path))
    assert str(target) in str(refusal) and "--resume" in str(refusal) and os.strerror(28) in str(refusal)
    assert write_refusal(ValueError("no"), str(tmp_path)) is None


class FakeWatch:
    """A ``DecodeWatch`` in memory: what a unit's attempts reported, and what to give up."""

    def __init__(self, crashed: dict[int, str], reached: int = -1):
        self.crashed, self.reached = crashed, reached
        self.calls: list[tuple] = []

    def begin(self, unit: str) -> tuple[dict[int, str], int]:
        self.calls.append(("begin", unit))
        return self.crashed, self.reached

    def at(self, unit: str, position: int, path: str) -> None:
        self.calls.append(("at", position))

    def chunk(self, unit: str, index: int) -> None:
        self.calls.append(("chunk", index))

    def done(self, unit: str) -> None:
        self.calls.append(("done", unit))


def _closing(rows: list[dict]) -> list[tuple]:
    return [(r["chunk"], f["file_id"], f["status"], f["error_kind"], f["piece"])
            for r in rows for f in json.loads(r["meta"])["files"] if f["closes"]]


def test_decode_unit_skips_what_the_watch_gave_up(tmp_path):
    from das_core.label.decode import DecodeSettings, decode_unit

    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"f{i}.wav"))
        (tmp_path / f"f{i}.wav").write_bytes(_wav(3.0, i))
    watch = FakeWatch({1: paths[1]})
    rows = [t.to_pylist()[0] for t in decode_unit("u1", ["a", "b", "c"], paths, DecodeSettings(chunk_windows=2),
                                                  watch=watch)]
    assert _closing(rows) == [(0, "a", "ok", None, 0), (0, "b", "error", DECODER_CRASH, 1), (0, "c", "ok", None, 0)]
    error = next(f for f in json.loads(rows[0]["meta"])["files"] if f["file_id"] == "b")["error"]
    assert error == f"{paths[1]}: {DECODER_CRASH}: the decoder process died twice while decoding {paths[1]}"
    assert watch.calls == [("begin", "u1"), ("at", 0), ("at", 2), ("done", "u1")]   # b is not decoded again


def test_give_up_after_a_dead_attempt_sent_windows(tmp_path, encoder):
    """Ray keeps the chunks a dead attempt sent (a retry's chunk of the same index is dropped): when those
    hold the first windows of the input given up, the unit still commits one error row for it and none
    of its windows."""
    from das_core.audio.frontend import DeviceFrontEnd
    from das_core.label.decode import ChunkMeta, DecodeSettings, decode_unit
    from das_core.label.sink import WriteSettings, finish_unit, write_chunk

    names = {"a": 3.0, "p": 45.0, "c": 12.0}            # p: 5 windows, over three chunks of 2
    paths = []
    for i, (name, seconds) in enumerate(names.items()):
        paths.append(str(tmp_path / f"{name}.wav"))
        (tmp_path / f"{name}.wav").write_bytes(_wav(seconds, i))
    settings, ids = DecodeSettings(chunk_windows=2), list(names)
    first = FakeWatch({})
    sent = []
    for row in decode_unit("u00000000", ids, paths, settings, watch=first):
        sent.append(row.to_pylist()[0])
        if len(sent) == 2:                                 # chunks 0 (a, p) and 1 (p) sent, then it dies
            break
    assert [f["file_id"] for f in json.loads(sent[1]["meta"])["files"]] == ["p"]    # p's windows were sent
    reached = max(c[1] for c in first.calls if c[0] == "chunk")
    retry = [t.to_pylist()[0] for t in decode_unit("u00000000", ids, paths, settings,
                                                   watch=FakeWatch({1: paths[1]}, reached))]
    rows = sent + retry[len(sent):]                        # what Ray hands on: first come by index
    assert [r["chunk"] for r in rows] == list(range(len(rows)))
    cache = DriftCache.build(encoder.embed_text, LABELS, ["traffic noise"], encoder_id=encoder.encoder_id)
    store, ws = OutputStore(str(tmp_path / "out")), WriteSettings()
    piece_chunks = []
    front_end = DeviceFrontEnd(encoder.device)
    for r in rows:
        n, meta = r["n_windows"], ChunkMeta.parse(r["meta"])
        windows = front_end.windows(front_end.stage(r["audio"]), meta)[0] if n else None
        stored = encoder.embed_prepared(windows).astype(np.float16) if n else None
        stats = write_chunk(store, r["unit"], r["chunk"], r["last"], meta, stored, cache, ws)
        piece_chunks += [r["chunk"]] if stats["pieces"] else []
    finish_unit(store, "u00000000", piece_chunks, cache, ws)
    files = {f["file_id"]: f for f in store.read_files().to_pylist()}
    assert sorted(files) == ["a", "c", "p"] and files["p"]["error_kind"] == DECODER_CRASH
    assert files["a"]["status"] == files["c"]["status"] == "ok"
    segments = store.read_segments().column("file_id").to_pylist()
    assert "p" not in segments and segments.count("a") == 1 and segments.count("c") == 2
