"""The inputs the benchmarks generate: audio clips, drift caches and committed ``das label`` outputs."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np


def sine_mix(seconds: float, rate: int, channels: int, seed: int) -> np.ndarray:
    """``seconds`` of a sine (its pitch set by ``seed``) with a little noise, float32, (frames,) or (frames,
    channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.2 * np.sin(2 * np.pi * (200 + 50 * (seed % 7)) * t) + 0.02 * rng.standard_normal(len(t))
    return np.stack([x] * channels, axis=1).astype(np.float32) if channels > 1 else x.astype(np.float32)


FORMATS = (("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"))


def ensure_clips(folder: str, n: int, seconds: float, rate: int = 44100, channels: int = 2) -> list[str]:
    """``folder`` holding ``n`` generated clips; built in a side folder and renamed, so it is never half made."""
    if not os.path.isdir(folder):
        partial = folder + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        write_clips(partial, n, seconds, rate, channels)
        os.replace(partial, folder)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder))


def write_clips(folder: str, n: int, seconds: float, rate: int = 44100, channels: int = 2) -> list[str]:
    """``n`` clips cycling through WAV, FLAC and OGG at ``rate`` Hz."""
    import soundfile as sf

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        ext, fmt, sub = FORMATS[i % len(FORMATS)]
        path = os.path.join(folder, f"clip{i:05d}.{ext}")
        with sf.SoundFile(path, "w", samplerate=rate, channels=channels, format=fmt, subtype=sub) as f:
            remaining, k = seconds, 0
            while remaining > 0:          # 10 s pieces: long files never sit in memory (and libsndfile's
                piece = min(10.0, remaining)  # Vorbis encoder crashes on multi-million-frame writes)
                f.write(sine_mix(piece, rate, channels, seed=i * 1000 + k))
                remaining -= piece
                k += 1
        paths.append(path)
    return paths


def make_cache(ckpt: str, labels: list[str], phrases: list[str]):
    """(the drift cache of ``labels`` and noise ``phrases`` built with ``ckpt``, seconds the build took)."""
    from das_core.clap.encoder import ClapEncoder
    from das_core.scoring.cache import DriftCache

    enc = ClapEncoder.from_checkpoint(ckpt)
    t = time.perf_counter()
    cache = DriftCache.build(enc.embed_text, labels, phrases, encoder_id=enc.encoder_id, encoder_name="bench.pt")
    return cache, time.perf_counter() - t


def write_label_output(cache, out: str, rows: int, files_per_part: int = 500, windows_per_file: int = 6) -> None:
    """A `das label` output of ``rows`` windows with random unit embeddings, committed as the label job does."""
    import pyarrow as pa

    from das_core.output.format import END_TAG, FILES_DIR, FORMAT_VERSION, SEGMENTS_DIR, PartFormat, part_name
    from das_core.output.manifest import RunManifest
    from das_core.output.store import OutputStore
    from das_core.output.tables import build_tables, embedding_array, labelled_columns, outcome_table
    from das_core.scoring.scorer import label_windows

    rng = np.random.default_rng(2)
    store = OutputStore(out)
    store.remove_all()
    n_files = -(-rows // windows_per_file)
    for first in range(0, n_files, files_per_part):
        ids = [f"f{i:07d}" for i in range(first, min(first + files_per_part, n_files))]
        owner = np.repeat(np.arange(len(ids)), windows_per_file)
        n = len(owner)
        emb = rng.standard_normal((n, cache.dim)).astype(np.float32)
        emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16)
        lab = label_windows(emb.astype(np.float32), cache, 5)
        cols = {"file_id": pa.array([ids[i] for i in owner]), "path": pa.array([f"s3://a/{ids[i]}.wav" for i in owner]),
                "segment": pa.array(np.tile(np.arange(windows_per_file), len(ids)), pa.int32()),
                "start_s": pa.array(np.tile(np.arange(windows_per_file) * 10.0, len(ids))),
                "end_s": pa.array(np.tile(np.arange(1, windows_per_file + 1) * 10.0, len(ids))),
                **labelled_columns(lab, n),
                "embedding": embedding_array(emb, n, np.arange(n), "float16", cache.dim),
                "snr_db": pa.nulls(n, pa.float64()), "seed": pa.nulls(n, pa.int64()),
                "noise_source": pa.nulls(n, pa.string())}
        k = len(ids)
        outcomes = outcome_table(pa.table({"file_id": ids, "path": [f"s3://a/{f}.wav" for f in ids],
                                           "status": ["ok"] * k, "n_segments": [windows_per_file] * k,
                                           "duration_s": [60.0] * k, "sample_rate": [48000] * k, "channels": [1] * k,
                                           "error": pa.nulls(k, pa.string()), "error_kind": pa.nulls(k, pa.string())}))
        segments, files = build_tables(outcomes, pa.table(cols), cache, 5, PartFormat("float16", cache.dim))
        unit = f"u{first // files_per_part:08d}"
        store.write_part(SEGMENTS_DIR, part_name(unit, 0), segments)
        store.write_part(FILES_DIR, part_name(unit, END_TAG), files)
    RunManifest.from_dict({"job": "label", "status": "complete", "format_version": FORMAT_VERSION,
                           "settings": {"checkpoint_fingerprint": cache.encoder_id, "top_k": 5,
                                        "embedding_dtype": "float16"},
                           "checkpoint": {"uri": "bench.pt", "fingerprint": cache.encoder_id}}).write(store.uri)


def cache_subset(cache, work: str, k: int):
    """The first ``k`` classes of ``cache`` (same checkpoint), saved beside it."""
    import dataclasses

    small = dataclasses.replace(cache, labels=cache.labels[:k], label_texts=cache.label_texts[:k],
                                clean=cache.clean[:k], drift_direction=cache.drift_direction[:k],
                                drift_norm=cache.drift_norm[:k])
    uri = os.path.join(work, f"cache-{k}.npz")
    small.save(uri)
    return small, uri
