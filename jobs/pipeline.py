"""The Ray Data stages shared by ``das label`` and ``das evaluate``.

    inputs (driver) -> decode + segment [+ noise]  (CPU tasks, streaming)
                    -> encode + score               (actor pool, GPU or CPU; model loaded once per actor)
                    -> driver                       (assembled per file, committed to Parquet)

Each file is decoded inside its own try/except: a bad file becomes one
closing row with ``status=error`` and never fails its block. Windows travel
as int16 bytes (LAION's own quantisation, so nothing is lost and half the
bytes move). The drift cache is ``ray.put`` once by the driver; actors
``ray.get`` it in their constructor.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from das_core import storage
from das_core.audio import (
    MISSING,
    UNREADABLE,
    WINDOW_SAMPLES,
    AudioDecodeError,
    AudioStream,
    quantize_int16,
    repeat_pad,
    segment,
)
from das_core.inputs import InputFile
from das_core.noise import NoiseBank
from das_core.results import OK, STREAM_SCHEMA, embedding_array, labelled_columns

log = logging.getLogger("das.pipeline")


@dataclass(frozen=True)
class DecodeSettings:
    snr_db: float | None = None
    seed: int = 0
    noise_uris: tuple[str, ...] = ()
    rows_per_block: int = 32          # 32 int16 windows: one 30 MiB block


@dataclass(frozen=True)
class EncodeSettings:
    checkpoint: str
    num_gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    precision: str = "fp32"
    top_k: int = 5
    embedding_dtype: str = "float16"
    max_batch_size: int | None = None
    torch_threads: int | None = None
    tokenizer_dir: str | None = None


_BANKS: dict[tuple, NoiseBank] = {}


def _bank(settings: DecodeSettings) -> NoiseBank | None:
    """One decoded-noise cache per worker process, reused across tasks."""
    if settings.snr_db is None:
        return None
    key = settings.noise_uris
    if key not in _BANKS:
        _BANKS.clear()
        _BANKS[key] = NoiseBank(list(key))
    return _BANKS[key]


class _Rows:
    """Column buffers for STREAM_SCHEMA rows, flushed as Arrow tables."""

    def __init__(self):
        self.cols = {f.name: [] for f in STREAM_SCHEMA}

    def __len__(self):
        return len(self.cols["kind"])

    def add(self, **values):
        for name, col in self.cols.items():
            col.append(values.get(name))

    def flush(self) -> pa.Table:
        table = pa.table({f.name: pa.array(self.cols[f.name], type=f.type) for f in STREAM_SCHEMA},
                         schema=STREAM_SCHEMA)
        self.cols = {f.name: [] for f in STREAM_SCHEMA}
        return table


def decode_files(batch: pa.Table, settings: DecodeSettings) -> Iterator[pa.Table]:
    """Ray Data UDF: (file_id, path) rows -> window rows, streamed; the last row of a file closes it.

    A file's last window is held back until the file ends so that it can carry
    the file's outcome: batches downstream are then (almost) all windows.
    """
    bank = _bank(settings)
    rows = _Rows()
    for file_id, path in zip(batch.column("file_id").to_pylist(), batch.column("path").to_pylist()):
        emitted = 0
        held: dict | None = None
        meta = {"duration_s": None, "sample_rate": None, "channels": None}
        outcome = {"status": OK, "error": None, "error_kind": None}
        try:
            with storage.open_input(path) as fileobj, AudioStream(fileobj, path) as stream:
                info = stream.info
                meta = {"duration_s": info.duration_s, "sample_rate": info.sample_rate, "channels": info.channels}
                for w in segment(stream.mono48k()):
                    samples, noise_source = w.samples, None
                    if bank is not None:
                        mixed = bank.mix(w.real, settings.snr_db, seed=settings.seed, clip_id=file_id, segment=w.index)
                        samples = mixed.samples if w.length == WINDOW_SAMPLES else repeat_pad(mixed.samples)
                        noise_source = (f"{mixed.noise_uri}@{mixed.offset_s:.3f}s" if mixed.gain is not None
                                        else "skipped: zero-power clip or noise")
                    if held is not None:
                        rows.add(**held)
                        if len(rows) >= settings.rows_per_block:
                            yield rows.flush()
                    held = dict(kind="segment", closes_file=False, file_id=file_id, path=path, segment=w.index,
                                start_s=w.start_s, end_s=w.end_s, audio=quantize_int16(samples).tobytes(),
                                snr_db=settings.snr_db, seed=settings.seed if bank is not None else None,
                                noise_source=noise_source)
                    emitted += 1
                meta["duration_s"] = stream.decoded_frames / info.sample_rate
        except AudioDecodeError as exc:
            outcome = {"status": "error", "error": str(exc), "error_kind": exc.kind}
        except FileNotFoundError:
            outcome = {"status": "error", "error": f"{path}: {MISSING}: no such file or object", "error_kind": MISSING}
        except Exception as exc:  # noqa: BLE001 - one bad file must never fail its block
            outcome = {"status": "error", "error": f"{path}: {UNREADABLE}: {type(exc).__name__}: {exc}",
                       "error_kind": UNREADABLE}
        closing = dict(closes_file=True, n_emitted=emitted, **outcome, **meta)
        if held is not None and outcome["status"] == OK:
            rows.add(**{**held, **closing})
        else:
            if held is not None:
                rows.add(**held)
            rows.add(kind="file", file_id=file_id, path=path, **closing)
        if len(rows) >= settings.rows_per_block:
            yield rows.flush()
    if len(rows):
        yield rows.flush()


class EncodeAndScore:
    """Ray Data actor: embeds window rows (and labels them when given a cache); closing rows pass through."""

    def __init__(self, settings: EncodeSettings, cache_box: list | None):
        import ray
        import torch

        from das_core.encoder import ClapEncoder

        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        device = "cuda" if settings.num_gpus_per_actor > 0 else "cpu"
        self.settings = settings
        self.encoder = ClapEncoder.from_checkpoint(settings.checkpoint, device=device, precision=settings.precision,
                                                   tokenizer_dir=settings.tokenizer_dir,
                                                   max_batch_size=settings.max_batch_size, batch_invariant=True)
        self.cache = ray.get(cache_box[0]) if cache_box else None
        if self.cache is not None:
            # the driver checked too; a worker may see another file at the same path
            self.cache.check_encoder(self.encoder.encoder_id, settings.checkpoint)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from das_core.scoring import label_windows

        n = len(batch)
        rows = np.flatnonzero(batch.column("kind").to_numpy(zero_copy_only=False) == "segment")
        stored = lab = None
        if len(rows):
            audio = batch.column("audio").take(pa.array(rows)).to_pylist()
            windows = np.frombuffer(b"".join(audio), dtype=np.int16).reshape(len(rows), WINDOW_SAMPLES)
            stored = self.encoder.embed_audio_int16(windows).astype(self.settings.embedding_dtype)
            if self.cache is not None:
                # scores come from the embedding exactly as stored, so re-scoring reproduces them
                lab = label_windows(stored.astype(np.float32), self.cache, self.settings.top_k)
        out = batch.drop_columns(["audio"])
        out = out.append_column("embedding", embedding_array(stored, n, rows, self.settings.embedding_dtype))
        for name, column in labelled_columns(lab, n, rows).items():
            out = out.append_column(name, column)
        return out


# What a decode task may hold: a block of int16 windows, libsndfile and soxr state, and the noise cache.
DECODE_MEMORY_BYTES = 768 * 2**20
# Ray Data gathers a task's output into blocks of up to this size (default 128 MiB, ~130 windows): smaller
# blocks keep a decode worker's memory flat however long the file and stream windows to the encoder sooner;
# much smaller ones cost throughput (decode_scaling in `make bench`: 16 MiB 0.72, 32 MiB 0.83-0.86).
BLOCK_BYTES = 32 * 2**20
ROWS_PER_CALL = 16


def configure_data_context() -> None:
    """Ray Data settings of das's pipelines (the driver's context; it travels with the dataset)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.target_max_block_size = BLOCK_BYTES
    # Ray Data reserves part of the cluster for each operator; with a fixed actor pool beside one task
    # operator that reservation only idles CPUs the decode tasks could use (decode_scaling in `make bench`
    # rose from 0.57 to 0.72 without it).
    ctx.op_resource_reservation_enabled = False


def run_stages(inputs: list[InputFile], decode: DecodeSettings, encode: EncodeSettings, *, cache=None,
               actors: int = 1, batch_size: int = 16, files_per_task: int = 4,
               env: dict[str, str] | None = None) -> Iterator[pa.Table]:
    """Stream the encoder's output tables to the driver as the pipeline produces them.

    The encoder runs every forward pass on ``batch_size`` windows (see
    ``ClapEncoder`` ``batch_invariant``), so results do not depend on how Ray
    happens to group rows.
    """
    import dataclasses

    import ray
    import ray.data

    if encode.max_batch_size is None:
        encode = dataclasses.replace(encode, max_batch_size=batch_size)
    # Each actor call takes a whole number of encoder batches, at least ROWS_PER_CALL rows: fewer, larger
    # calls cut Ray's per-call overhead without changing the encoder's batch shape.
    rows_per_call = batch_size * -(-ROWS_PER_CALL // batch_size)
    configure_data_context()
    runtime_env = {"env_vars": env} if env else None
    cache_box = [ray.put(cache)] if cache is not None else None
    items = [{"file_id": f.file_id, "path": f.path} for f in inputs]
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // files_per_task)))
    # The memory request differs from the actors' resources, which also keeps Ray Data from fusing decoding
    # into the encoder actors: decoding stays a pool of CPU tasks running beside the encoder.
    ds = ds.map_batches(decode_files, fn_kwargs={"settings": decode}, batch_size=files_per_task,
                        batch_format="pyarrow", num_cpus=1, memory=DECODE_MEMORY_BYTES, runtime_env=runtime_env)
    ds = ds.map_batches(EncodeAndScore, fn_constructor_kwargs={"settings": encode, "cache_box": cache_box},
                        batch_size=rows_per_call, batch_format="pyarrow",
                        compute=ray.data.ActorPoolStrategy(size=actors),
                        num_gpus=encode.num_gpus_per_actor, num_cpus=encode.cpus_per_actor, runtime_env=runtime_env)
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
