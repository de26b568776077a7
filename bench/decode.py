"""The decode stage at scale: per core and on every core through Ray Data, single S3 objects against tar
shards, and FFmpeg against libsndfile on the same bytes."""

from __future__ import annotations

import os
import time

import numpy as np

from bench.common import Sizes, moto_s3, timed
from bench.inputs import FORMATS, ensure_clips


def bench_decode(work: str, sizes: Sizes) -> dict:
    """Windows/s of das label's decode stage: per core by format (in this process), and on every core through
    Ray Data (Ray is started if it is not up); ``decode_scaling`` is the parallel rate over cores x per core."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray
    import ray.data

    from das_core.io.inputs import list_inputs
    from das_core.label.decode import DecodeSettings, decode_units
    from jobs.pipeline import DECODE_MEMORY_BYTES, configure_data_context

    folder = os.path.join(work, f"decode-{sizes.decode_files}x{sizes.decode_seconds:g}s")
    ensure_clips(folder, sizes.decode_files, sizes.decode_seconds)
    inputs = list_inputs(folder)
    by_format = {}
    total_windows, total_s = 0, 0.0
    for ext, _, _ in FORMATS:
        subset = [f for f in inputs if f.path.endswith(ext)]
        batch = pa.table({"unit": [f"u{i:08d}" for i in range(len(subset))],
                          "file_ids": [[f.file_id] for f in subset], "paths": [[f.path] for f in subset]})
        t = time.perf_counter()
        n = sum(int(b.column("n_windows")[0].as_py()) for b in decode_units(batch, DecodeSettings()))
        s = time.perf_counter() - t
        by_format[ext] = n / s
        total_windows += n
        total_s += s
    per_core = total_windows / total_s
    cores = os.cpu_count()
    if not ray.is_initialized():
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR")
    items = [{"unit": f"u{i:08d}", "file_ids": [f.file_id], "paths": [f.path]} for i, f in enumerate(inputs)]

    configure_data_context()

    def window_counts(table: pa.Table) -> pa.Table:
        """The chunk rows' window counts alone: all the driver needs."""
        return table.select(["n_windows"])

    def stage():
        """Windows decoded by one pass of the stage over every file."""
        # the stage alone; only the window counts reach the driver (Ray Data's sum() would add a shuffle
        # aggregation, whose actors compete with decoding for the cores)
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(decode_units, fn_kwargs={"settings": DecodeSettings()}, batch_size=1,
                            batch_format="pyarrow", num_cpus=1, memory=DECODE_MEMORY_BYTES)
        ds = ds.map_batches(window_counts, batch_format="pyarrow", num_cpus=1, memory=DECODE_MEMORY_BYTES)
        return sum(int(pc.sum(b.column("n_windows")).as_py() or 0)
                   for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))

    stage()                                              # warm-up: workers started, imports done
    t = time.perf_counter()
    rows = stage()
    wall = time.perf_counter() - t
    parallel = rows / wall
    return {"decode_per_core": per_core, "decode_per_core_by_format": by_format, "decode_parallel": parallel,
            "decode_scaling": parallel / (per_core * cores), "cores": cores}


def bench_shards(work: str, clips: int, shards: int = 8) -> dict:
    """On moto's S3: ``clips`` short clips as single objects against the same clips in ``shards`` tar shards,
    through das's decode stage (one process); windows/s of each, and their ratio."""
    import io

    import soundfile as sf
    import webdataset as wds

    from das_core.label.decode import DecodeSettings, decode_unit

    server = moto_s3()
    try:
        import boto3

        from das_core.io.s3 import s3_endpoint

        s3 = boto3.client("s3", endpoint_url=s3_endpoint())
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
            """Windows decoded from the single objects, in units of 64 files."""
            ids = [f"clip{i:05d}.flac" for i in range(clips)]
            paths = [f"s3://bench/objects/{f}" for f in ids]
            return sum(r.column("n_windows")[0].as_py() for u in range(0, clips, 64)
                       for r in decode_unit(f"u{u:08d}", ids[u:u + 64], paths[u:u + 64], settings))

        def tars() -> int:
            """Windows decoded from the tar shards, one unit each."""
            return sum(r.column("n_windows")[0].as_py() for k in range(shards)
                       for r in decode_unit(f"u{k:08d}", [f"{k:03d}.tar"], [f"s3://bench/shards/{k:03d}.tar"],
                                            settings, shard="tar"))

        t_obj, n_obj = min((timed(objects) for _ in range(2)), key=lambda x: x[0])
        t_tar, n_tar = min((timed(tars) for _ in range(2)), key=lambda x: x[0])
        assert n_obj == n_tar == clips
    finally:
        server.stop()
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    return {"shards_windows_per_s_objects": n_obj / t_obj, "shards_windows_per_s_tar": n_tar / t_tar,
            "shards_tar_over_objects": t_obj / t_tar, "shards_clips": clips}


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
                """Windows one decode of the bytes with ``decoder`` yields."""
                with AudioStream(io.BytesIO(data), f"bench.{ext}", decoder=decoder) as stream:
                    return sum(1 for _ in stream.int16_windows())
            best = min(timed(run) for _ in range(repeats))
            rates[decoder] = best[1] / best[0]
        out[f"ffmpeg_windows_per_core_{ext}"] = rates["ffmpeg"]
        out[f"sndfile_windows_per_core_{ext}"] = rates["libsndfile"]
        out[f"ffmpeg_over_sndfile_{ext}"] = rates["ffmpeg"] / rates["libsndfile"]
    return out
