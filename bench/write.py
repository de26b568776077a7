"""One write worker: a chunk scored, pooled and written as das label's parts, against a plain Parquet write
of the same rows, on local disk and on moto's S3; and one encoder actor's host-side work per core
(``host_windows_per_core``)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from bench.common import CHUNK, best_cpu_of, best_of, moto_s3

HOST_CHUNKS = 40      # chunks per timed run of bench_host
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _unit_embeddings(n: int, d: int, rng) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


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
    ws = WriteSettings(top_k=5, embedding_dtype="float16", embedding_dim=cache.dim)
    keep = np.ones(len(meta.windows), dtype=bool)
    from das_core.scoring.scorer import label_windows

    segments = _segments(meta, keep, emb, label_windows(emb.astype(np.float32), cache, 5), ws)
    assert segments.schema.equals(segments_schema("float16", cache.dim))
    out = {}
    server = None
    try:
        for where in ("local", "s3"):
            if where == "s3":
                try:
                    server = moto_s3()
                except ImportError:
                    break
                root = "s3://bench/write"
            else:
                root = tempfile.mkdtemp(prefix="das-bench-write-")
            store = OutputStore(root)

            def ours(store=store):
                """The chunk as das label writes it."""
                write_chunk(store, "u00000000", 0, True, meta, emb, cache, ws)

            def plain(root=root):
                """The segment rows as one plain Parquet file."""
                buf = io.BytesIO()
                pq.write_table(segments, buf)
                storage.write_bytes_atomic(storage.join(root, "plain.parquet"), buf.getvalue())

            ours()
            t_ours = best_of(ours, repeats)
            t_plain = best_of(plain, repeats)
            out[f"write_windows_per_s_{where}"] = CHUNK / t_ours
            out[f"plain_parquet_windows_per_s_{where}"] = CHUNK / t_plain
            out[f"write_over_plain_parquet_{where}"] = t_plain / t_ours
    finally:
        if server is not None:
            server.stop()
            os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    out["write_classes"] = len(cache.labels)
    out.update(bench_host(cache, repeats))
    return out


def random_cache(classes: int = 527, dim: int = 512, seed: int = 0):
    """A drift cache of ``classes`` classes with random unit text embeddings of ``dim`` dimensions: the host
    side's cost depends on the class count and dimension, not on what the vectors mean."""
    from das_core.scoring.cache import DriftCache

    rng = np.random.default_rng(seed)

    def unit(x: np.ndarray) -> np.ndarray:
        """Rows scaled to unit length, float32."""
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    names = tuple(f"class {i}" for i in range(classes))
    return DriftCache(names, names, ("rain",), "the sound of {label}", "{label} with {noise}", 0.1, "random",
                      unit(rng.standard_normal((classes, dim))), unit(rng.standard_normal((classes, dim))),
                      np.ones(classes, np.float32))


def bench_host(cache, repeats: int, chunks: int = HOST_CHUNKS) -> dict:
    """``host_windows_per_core``: windows per CPU second of one encoder actor's host-side work, as ``write_chunk``
    does it (scores at the cache's classes, top-k, file pooling, the chunk's Parquet parts on local disk), for
    chunks of ``CHUNK`` windows of 2-window files, float16 embeddings, top 5, each chunk under a new part name
    as a run writes them. Measured in a child process with one BLAS thread, as Ray runs a one-CPU actor
    (``OMP_NUM_THREADS=1``): best of ``repeats`` runs of ``chunks`` chunks in its CPU time (the kernel's work
    on its writes included), which other load on a shared machine barely moves; ``host_windows_per_s_wall``:
    the same runs in wall time."""
    folder = tempfile.mkdtemp(prefix="das-bench-host-")
    try:
        cache_uri = os.path.join(folder, "cache.npz")
        cache.save(cache_uri)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "bench.write", cache_uri, os.path.join(folder, "out"),
                               str(repeats), str(chunks)], env=env, cwd=ROOT, capture_output=True, text=True,
                              check=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def host_windows_per_core(cache, out: str, repeats: int, chunks: int) -> dict:
    """``bench_host``'s figures, measured in this process (``out``: the local folder the parts go to)."""
    from das_core.label.sink import WriteSettings, write_chunk
    from das_core.output.store import OutputStore

    meta, emb = _chunk(np.random.default_rng(3), n_files=CHUNK // 2, windows_per_file=2, dim=cache.dim)
    ws = WriteSettings(top_k=5, embedding_dtype="float16", embedding_dim=cache.dim)
    store = OutputStore(out)
    chunk_index = itertools.count()

    def actor():
        """``chunks`` chunks of one unit, written in turn under new names."""
        for _ in range(chunks):
            write_chunk(store, "u00000000", next(chunk_index), False, meta, emb, cache, ws)

    actor()
    cpu = best_cpu_of(actor, repeats)
    wall = best_of(actor, repeats)
    return {"host_windows_per_core": chunks * CHUNK / cpu, "host_windows_per_s_wall": chunks * CHUNK / wall,
            "host_classes": len(cache.labels)}


if __name__ == "__main__":
    from das_core.scoring.cache import DriftCache

    print(json.dumps(host_windows_per_core(DriftCache.load(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                                           int(sys.argv[4]))))


def bench_pack(cache, rows: int = 100_000, chunk_windows: int = 512, chunks_per_unit: int = 2) -> dict:
    """Packs (``das_core.output.pack``) on local disk: ``rows`` windows written by the real sink as das label
    writes them (chunks of ``chunk_windows``, ``chunks_per_unit`` to a unit, each unit committed), then packed
    into ranges of at least 100 000 rows as a finished run is; the files before and after, and what packing costs
    (seconds per 100 000 rows, against the sink's own time for the same rows)."""
    import time

    from das_core.label.sink import WriteSettings, finish_unit, write_chunk
    from das_core.output.pack import PACK_ROWS, PackPlanner, pack_units
    from das_core.output.store import OutputStore

    rng = np.random.default_rng(5)
    root = tempfile.mkdtemp(prefix="das-bench-pack-")
    store, ws = OutputStore(root), WriteSettings(top_k=5, embedding_dtype="float16", embedding_dim=cache.dim)
    units = [f"u{i:08d}" for i in range(-(-rows // (chunk_windows * chunks_per_unit)))]
    planner = PackPlanner(units, PACK_ROWS)
    try:
        started = time.perf_counter()
        for unit in units:
            for c in range(chunks_per_unit):
                meta, emb = _chunk(rng, n_files=chunk_windows // 2, windows_per_file=2, dim=cache.dim)
                write_chunk(store, unit, c, c == chunks_per_unit - 1, meta, emb, cache, ws)
            finish_unit(store, unit, [], cache, ws)
            planner.add(unit, chunk_windows * chunks_per_unit)
        staged_s = time.perf_counter() - started
        files_staged = sum(len(names) for names in store.listing().names.values())
        bytes_staged = _folder_bytes(root)
        started = time.perf_counter()
        for rng_units in planner.ready(final=True):
            pack_units(root, rng_units)
        pack_s = time.perf_counter() - started
        written = len(units) * chunk_windows * chunks_per_unit
        return {"pack_rows_written": written, "pack_files_staged": files_staged,
                "pack_files_packed": sum(len(names) for names in store.listing().names.values()),
                "pack_bytes_staged": bytes_staged, "pack_bytes_packed": _folder_bytes(root),
                "pack_s_per_100k_rows": pack_s / written * 1e5, "sink_s_per_100k_rows": staged_s / written * 1e5}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _folder_bytes(root: str) -> int:
    """Bytes of every file under ``root``."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(root) for f in names)
