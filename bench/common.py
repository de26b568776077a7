"""What every benchmark shares: the sizes of a run, timing, the log line, the moto S3 server."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from das_core.clap.encoder import DEFAULT_BATCH_SIZE

CHUNK = 32          # windows per chunk, das label's default on CPU (two batches of 16)


@dataclass(frozen=True)
class Sizes:
    """How much each benchmark measures: ``FULL`` for ``make bench``, ``SMOKE`` (seconds) for the tests."""

    clips: int                  # 10 s clips for encoder / pipeline / naive
    batch_sizes: tuple[int, ...]
    encoder_windows: int        # windows timed per batch size
    score_rows: int             # das_overhead
    score_classes: int
    cache_classes: int
    cache_phrases: int
    long_minutes: float         # rss: the long file; the short one is long/6
    decode_files: int
    decode_seconds: float
    rescore_rows: int
    driver_chunks: int = 200_000    # driver: chunk statistics absorbed
    dry_run_rows: int = 1_000_000   # das label --dry-run on a path list of this many paths
    rss_clips: int = 64             # driver RSS: archives of this many and 4x as many 1 s clips
    codec_seconds: float = 120.0     # bench_codec: one 44.1 kHz stereo noise file per format
    codec_repeats: int = 7
    shard_clips: int = 2000          # bench_shards: clips as single S3 objects vs in 8 tar shards
    encoder_rounds: int = 3          # bench_encoder: interleaved rounds over the batch sizes, best kept
    rss_batch_size: int = DEFAULT_BATCH_SIZE     # bench_rss, bench_driver_rss: das label's --batch-size


FULL = Sizes(clips=480, batch_sizes=(1, 2, 4, 8, 16, 32), encoder_windows=64, score_rows=100_000, score_classes=527,
             cache_classes=527, cache_phrases=8, long_minutes=60, decode_files=12, decode_seconds=300,
             rescore_rows=200_000)
SMOKE = Sizes(clips=2, batch_sizes=(1, 2), encoder_windows=2, score_rows=2_000, score_classes=20, cache_classes=5,
              cache_phrases=2, long_minutes=0.6, decode_files=3, decode_seconds=12, rescore_rows=2_000,
              driver_chunks=2_000, dry_run_rows=10_000, rss_clips=2, codec_seconds=20.0, codec_repeats=2,
              shard_clips=16, encoder_rounds=1, rss_batch_size=2)


def log(msg: str) -> None:
    """Print ``msg`` as one timestamped progress line of the bench, at once."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _least(clock, fn, repeats: int) -> float:
    """The least ``clock`` time one of ``repeats`` calls of ``fn`` took."""
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return min(times)


def best_of(fn, repeats: int = 3) -> float:
    """Shortest wall time of ``repeats`` calls (the least disturbed by other load)."""
    return _least(time.perf_counter, fn, repeats)


def best_cpu_of(fn, repeats: int = 3) -> float:
    """Least CPU time (this process, all threads) of ``repeats`` calls: other processes' load barely moves it."""
    return _least(time.process_time, fn, repeats)


def timed(fn) -> tuple[float, int]:
    """(wall seconds, result) of one call of ``fn``, which returns a count."""
    t = time.perf_counter()
    n = fn()
    return time.perf_counter() - t, n


def moto_s3():
    """A started moto S3 server on a free local port with the bucket ``bench``, set as das's S3 endpoint (and
    placeholder credentials where none are set). The caller stops it and removes ``AWS_ENDPOINT_URL_S3``."""
    from moto.server import ThreadedMotoServer

    from das_core.io.s3 import set_s3_endpoint

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
    set_s3_endpoint(f"http://127.0.0.1:{port}")
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="bench")
    return server
