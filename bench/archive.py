"""Archive-scale figures of ``das label``: what the driver absorbs, what a write worker does, planning cost.

Run by ``bench.run`` (``make bench``); each function returns a dict of figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 32          # windows per chunk, das label's default on CPU (two batches of 16)


def _unit_embeddings(n: int, d: int, rng) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def bench_driver(chunks: int) -> dict:
    """Everything the driver does per chunk after the encoder stage (counting, unit tracking), on one core.

    In 0.1 the driver received every window's embedding and scores, assembled files and wrote all Parquet
    itself (issue #10 measured 6 700 - 13 500 windows/s locally, about 1 000 with S3 output).
    """
    from das_core.label.ledger import RunCounts, UnitTracker

    rows = []
    for i in range(chunks):
        unit, chunk = divmod(i, 4)
        rows.append({"unit": f"u{unit:08d}", "chunk": chunk, "last": chunk == 3, "windows": CHUNK, "files_ok": 3,
                     "files_error": 0, "segments": CHUNK, "errors_by_kind": "{}", "pieces": False,
                     "node": "n1", "seconds": 0.5, "decoded_on": "n2"})
    best = float("inf")
    for _ in range(3):
        counts, tracker, whole = RunCounts(), UnitTracker(), 0
        t = time.perf_counter()
        for stats in rows:
            counts.add(stats)
            whole += tracker.add(stats) is not None
        best = min(best, time.perf_counter() - t)
    assert whole == chunks // 4
    return {"driver_windows_per_s": chunks * CHUNK / best, "driver_chunks_per_s": chunks / best}


def _chunk(rng, n_files: int, windows_per_file: int, dim: int):
    from das_core.label.decode import ChunkMeta

    windows, files = [], []
    for f in range(n_files):
        files.append({"file_id": f"clip{f:04d}.flac", "path": f"s3://archive/clip{f:04d}.flac", "piece": 0,
                      "closes": True, "status": "ok", "error": None, "error_kind": None,
                      "n_emitted": windows_per_file, "duration_s": 10.0 * windows_per_file, "sample_rate": 44100,
                      "channels": 2, "decoder": "libsndfile"})
        windows += [[f, s, 10.0 * s, 10.0 * (s + 1), None] for s in range(windows_per_file)]
    return ChunkMeta(windows, files), _unit_embeddings(len(windows), dim, rng)


def _moto():
    from moto.server import ThreadedMotoServer

    from das_core.io import storage

    port = 0
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                 ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(k, v)
    storage.set_s3_endpoint(f"http://127.0.0.1:{port}")
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="bench")
    return server


def bench_write(cache, repeats: int) -> dict:
    """Windows/s one write worker core scores and writes (``write_chunk``: scores, top-k, file pooling, three
    Parquet parts), against a plain ``pyarrow.parquet.write_table`` of the same segment rows; local and S3."""
    import io

    import pyarrow.parquet as pq

    from das_core.io import storage
    from das_core.label.sink import WriteSettings, _segments, write_chunk
    from das_core.output.format import segments_schema
    from das_core.output.store import OutputStore

    rng = np.random.default_rng(3)
    meta, emb = _chunk(rng, n_files=CHUNK // 2, windows_per_file=2, dim=cache.dim)
    ws = WriteSettings(top_k=5, embedding_dtype="float16")
    keep = np.ones(len(meta.windows), dtype=bool)
    from das_core.scoring.scorer import label_windows

    segments = _segments(meta, keep, emb, label_windows(emb.astype(np.float32), cache, 5), ws)
    assert segments.schema.equals(segments_schema("float16"))
    out = {}
    server = None
    try:
        for where in ("local", "s3"):
            if where == "s3":
                try:
                    server = _moto()
                except ImportError:
                    break
                root = "s3://bench/write"
            else:
                root = tempfile.mkdtemp(prefix="das-bench-write-")
            store = OutputStore(root)

            def ours(store=store):
                write_chunk(store, "u00000000", 0, True, meta, emb, cache, ws)

            def plain(root=root):
                buf = io.BytesIO()
                pq.write_table(segments, buf)
                storage.write_bytes_atomic(storage.join(root, "plain.parquet"), buf.getvalue())

            ours()
            t_ours = min(_time(ours) for _ in range(repeats))
            t_plain = min(_time(plain) for _ in range(repeats))
            out[f"write_windows_per_s_{where}"] = CHUNK / t_ours
            out[f"plain_parquet_windows_per_s_{where}"] = CHUNK / t_plain
            out[f"write_over_plain_parquet_{where}"] = t_plain / t_ours
    finally:
        if server is not None:
            server.stop()
            os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    out["write_classes"] = len(cache.labels)
    return out


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _child_peak(code: str, timeout: float) -> tuple[float, float, str]:
    """Run ``code`` in a fresh Python; (wall s, its peak RSS in bytes, stdout)."""
    probe = ("\nimport re as _re\nprint('VMHWM', _re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())"
             ".group(1))\n")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code + probe], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"child failed: {proc.stderr[-2000:]}")
    hwm = next(int(line.split()[1]) * 1024 for line in proc.stdout.splitlines() if line.startswith("VMHWM"))
    return wall, float(hwm), proc.stdout


def bench_dry_run(ckpt: str, cache_uri: str, work: str, rows: int) -> dict:
    """``das label --dry-run`` on a manifest of ``rows`` paths: wall time and peak RSS of the process."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = os.path.join(work, f"manifest-{rows}.parquet")
    if not os.path.exists(manifest):
        paths = pa.array([f"s3://archive/2024/{i // 1000:05d}/clip-{i:08d}.flac" for i in range(rows)])
        pq.write_table(pa.table({"path": paths}), manifest)
    args = ["--input", manifest, "--cache", cache_uri, "--checkpoint", ckpt, "--out",
            os.path.join(work, f"dry-run-out-{rows}"), "--dry-run"]
    code = f"import sys\nfrom jobs.label import main\nrc = main({json.dumps(args)})\nassert rc == 0, rc"
    wall, peak, stdout = _child_peak(code, timeout=900)
    assert f"{rows} file(s)" in stdout, stdout[-1000:]
    return {"dry_run_s": wall, "dry_run_peak_rss_gib": peak / 2**30, "dry_run_rows": rows}


def bench_driver_rss(ckpt: str, cache_uri: str, work: str, small: int, ratio: int) -> dict:
    """Peak RSS of the ``das label`` driver process on an archive of ``small`` and of ``ratio`` x ``small`` clips
    (each run in its own process with its own local Ray)."""
    from bench.run import ensure_clips

    peaks = {}
    for n in (small, small * ratio):
        folder = os.path.join(work, f"driver-rss-{n}")
        ensure_clips(folder, n, 1.0, rate=16000, channels=1)
        args = ["--input", folder, "--cache", cache_uri, "--checkpoint", ckpt, "--out",
                os.path.join(work, f"driver-rss-out-{n}"), "--overwrite", "--files-per-unit", "16"]
        code = f"import sys\nfrom jobs.label import main\nrc = main({json.dumps(args)})\nassert rc == 0, rc"
        _, peaks[n], _ = _child_peak(code, timeout=1800)
    big = small * ratio
    return {"driver_rss_ratio": peaks[big] / peaks[small], "driver_peak_rss_gib": peaks[big] / 2**30,
            "driver_rss_archives": [small, big]}


def bench_shards(work: str, clips: int, shards: int = 8) -> dict:
    """On moto's S3: ``clips`` short clips as single objects against the same clips in ``shards`` tar shards,
    through das's decode stage (one process); windows/s of each, and their ratio."""
    import io

    import soundfile as sf
    import webdataset as wds

    from das_core.label.decode import DecodeSettings, decode_unit

    server = _moto()
    try:
        import boto3

        from das_core.io import storage

        s3 = boto3.client("s3", endpoint_url=storage.s3_endpoint())
        rng = np.random.default_rng(4)
        t = np.arange(16000 * 2) / 16000
        blobs = []
        for i in range(clips):
            buf = io.BytesIO()
            sf.write(buf, (0.2 * np.sin(2 * np.pi * (200 + i % 50 * 10) * t) + 0.01 * rng.standard_normal(len(t)))
                     .astype(np.float32), 16000, format="FLAC")
            blobs.append(buf.getvalue())
            s3.put_object(Bucket="bench", Key=f"objects/clip{i:05d}.flac", Body=blobs[-1])
        per_shard = -(-clips // shards)
        for k in range(shards):
            local = os.path.join(work, f"shard-{k}.tar")
            with wds.TarWriter(local) as sink:
                for i in range(k * per_shard, min(clips, (k + 1) * per_shard)):
                    sink.write({"__key__": f"clip{i:05d}", "flac": blobs[i]})
            s3.upload_file(local, "bench", f"shards/{k:03d}.tar")
        settings = DecodeSettings()

        def objects() -> int:
            ids = [f"clip{i:05d}.flac" for i in range(clips)]
            paths = [f"s3://bench/objects/{f}" for f in ids]
            return sum(r.column("n_windows")[0].as_py() for u in range(0, clips, 64)
                       for r in decode_unit(f"u{u:08d}", ids[u:u + 64], paths[u:u + 64], settings))

        def tars() -> int:
            return sum(r.column("n_windows")[0].as_py() for k in range(shards)
                       for r in decode_unit(f"u{k:08d}", [f"{k:03d}.tar"], [f"s3://bench/shards/{k:03d}.tar"],
                                            settings, shard="tar"))

        t_obj, n_obj = min((_timed(objects) for _ in range(2)), key=lambda x: x[0])
        t_tar, n_tar = min((_timed(tars) for _ in range(2)), key=lambda x: x[0])
        assert n_obj == n_tar == clips
    finally:
        server.stop()
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    return {"shards_windows_per_s_objects": n_obj / t_obj, "shards_windows_per_s_tar": n_tar / t_tar,
            "shards_tar_over_objects": t_obj / t_tar, "shards_clips": clips}


def _timed(fn) -> tuple[float, int]:
    t = time.perf_counter()
    n = fn()
    return time.perf_counter() - t, n


def bench_ffmpeg_vs_sndfile(seconds: float, repeats: int) -> dict:
    """Per-core decode rate (windows/s, the whole stage) of the FFmpeg path against libsndfile on the same
    FLAC and OGG/Vorbis bytes."""
    import io

    import soundfile as sf

    from das_core.audio.decode import AudioStream

    rng = np.random.default_rng(5)
    x = (0.1 * rng.standard_normal((int(seconds * 44100), 2))).astype(np.float32)
    out = {}
    for fmt, sub, ext in (("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg")):
        buf = io.BytesIO()
        # in blocks: libsndfile's Vorbis encoder puts a whole write on the stack (it crashed on 120 s at once)
        with sf.SoundFile(buf, "w", 44100, 2, format=fmt, subtype=sub) as f:
            for start in range(0, len(x), 1 << 15):
                f.write(x[start:start + (1 << 15)])
        data = buf.getvalue()
        rates = {}
        for decoder in ("libsndfile", "ffmpeg"):
            def run(decoder=decoder, data=data, ext=ext) -> int:
                with AudioStream(io.BytesIO(data), f"bench.{ext}", decoder=decoder) as stream:
                    return sum(1 for _ in stream.int16_windows())
            best = min(_timed(run) for _ in range(repeats))
            rates[decoder] = best[1] / best[0]
        out[f"ffmpeg_windows_per_core_{ext}"] = rates["ffmpeg"]
        out[f"sndfile_windows_per_core_{ext}"] = rates["libsndfile"]
        out[f"ffmpeg_over_sndfile_{ext}"] = rates["ffmpeg"] / rates["libsndfile"]
    return out
