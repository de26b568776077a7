"""The Ray Data wiring of ``das label`` (and of ``das evaluate``, which labels through it).

    work manifest (Parquet, one read task per row group of units)
      -> decode_units          CPU tasks: a unit's files -> chunk rows of <= chunk_windows int16 windows
      -> EncodeAndWrite        actor pool (GPU or CPU): embed, score once, write the chunk's parts
      -> driver                small statistics per chunk; launches finish_units once a unit is whole

Each file is decoded inside its own try/except (``das_core.units``): a bad
file becomes one error row and never fails its unit. Windows travel as int16
bytes (LAION's own quantisation: nothing is lost and half the bytes move).
The drift cache is ``ray.put`` once; actors ``ray.get`` it in their
constructor. No embedding or score vector ever reaches the driver.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from das_core import storage
from das_core.audio import WINDOW_SAMPLES
from das_core.results import OutputStore
from das_core.units import UNIT_SCHEMA, ChunkMeta, DecodeSettings, decode_units
from das_core.writer import STATS_SCHEMA, WriteSettings, finish_unit, write_chunk

log = logging.getLogger("das.pipeline")


@dataclass(frozen=True)
class EncodeSettings:
    checkpoint: str
    num_gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    precision: str = "fp32"
    max_batch_size: int | None = None
    torch_threads: int | None = None
    tokenizer_dir: str | None = None


class WorkManifestDatasource(Datasource):
    """Reads the work manifest: one read task per row group, keeping only the units to do in each."""

    def __init__(self, uri: str, keep: dict[int, list[str]] | None = None):
        super().__init__()
        self.uri = uri
        self.keep = keep          # row group -> units to do in it; None: every unit
        self.meta = pq.ParquetFile(io.BytesIO(storage.read_bytes(uri))).metadata

    def estimate_inmemory_data_size(self) -> int | None:
        return self.meta.serialized_size

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        groups = range(self.meta.num_row_groups) if self.keep is None else sorted(self.keep)
        tasks = []
        for g in groups:
            units = None if self.keep is None else self.keep[g]
            rows = self.meta.row_group(g).num_rows if units is None else len(units)
            meta = BlockMetadata(num_rows=rows, size_bytes=self.meta.row_group(g).total_byte_size,
                                 input_files=None, exec_stats=None)
            tasks.append(ReadTask(lambda g=g, units=units: [_read_row_group(self.uri, g, units)], meta,
                                  schema=UNIT_SCHEMA))
        return tasks


def _read_row_group(uri: str, group: int, units: list[str] | None) -> pa.Table:
    with storage.open_input(uri) as f:
        table = pq.ParquetFile(f).read_row_group(group)
    if units is not None:
        import pyarrow.compute as pc

        table = table.filter(pc.is_in(table.column("unit"), pa.array(units, pa.string())))
    return table


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class DecodeProgress:
    """Ray actor, one per run: where each unit's decode attempt is, to find inputs that kill their process.

    A new attempt at a unit whose last attempt never said ``done`` means that attempt's process died. The
    first death is only noted: the first attempt reports its position fire-and-forget (one message per
    input, no wait), so a message may be lost with the process. Retries of a unit that died report each
    position and wait for it (``careful``); a careful attempt that dies therefore died at a known input,
    and an input two careful attempts died on is given up (``decoder_crash``). One death is never enough:
    a node can die for other reasons. ``reached``: the highest chunk index an attempt began filling (see
    ``das_core.units._give_up``). Memory: only units being decoded are held.
    """

    def __init__(self):
        self.units: dict[str, dict] = {}

    def begin(self, unit: str) -> tuple[bool, dict[int, str], int]:
        """(careful, inputs to give up on, chunk reached) for a new attempt at ``unit``."""
        state = self.units.get(unit)
        if state is None:
            self.units[unit] = {"careful": False, "at": None, "deaths": {}, "paths": {}, "reached": -1}
            return False, {}, -1
        if state["careful"] and state["at"] is not None:          # the last attempt died there
            position, path = state["at"]
            state["deaths"][position] = state["deaths"].get(position, 0) + 1
            state["paths"][position] = path
        state["careful"], state["at"] = True, None
        return True, {p: state["paths"][p] for p, n in state["deaths"].items() if n >= 2}, state["reached"]

    def at(self, unit: str, position: int, path: str) -> None:
        if unit in self.units:
            self.units[unit]["at"] = (position, path)

    def chunk(self, unit: str, index: int) -> None:
        if unit in self.units:
            self.units[unit]["reached"] = max(self.units[unit]["reached"], index)

    def done(self, unit: str) -> None:
        self.units.pop(unit, None)


class ActorWatch:
    """``das_core.units.DecodeWatch`` backed by the run's ``DecodeProgress`` actor; without it (the actor
    died), decoding goes on unwatched."""

    def __init__(self, progress):
        self.progress = progress
        self.careful = False

    def begin(self, unit: str) -> tuple[dict[int, str], int]:
        import ray

        try:
            self.careful, crashed, reached = ray.get(self.progress.begin.remote(unit))
        except ray.exceptions.RayActorError:
            self.progress = None
            return {}, -1
        return crashed, reached

    def _tell(self, method: str, *args) -> None:
        import ray

        if self.progress is None:
            return
        ref = getattr(self.progress, method).remote(*args)
        if self.careful:                      # a retry of a unit that died: wait, so a death is placed exactly
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                self.progress = None

    def at(self, unit: str, position: int, path: str) -> None:
        self._tell("at", unit, position, path)

    def chunk(self, unit: str, index: int) -> None:
        self._tell("chunk", unit, index)

    def done(self, unit: str) -> None:
        if self.progress is not None:
            self.progress.done.remote(unit)


def decode_task(batch: pa.Table, settings: DecodeSettings, progress=None) -> Iterator[pa.Table]:
    """``decode_units`` tagged with the node that ran it; ``progress``: the run's ``DecodeProgress`` actor."""
    node = _node_id()
    watch = ActorWatch(progress) if progress is not None else None
    for chunk in decode_units(batch, settings, watch):
        yield chunk.append_column("decoded_on", pa.array([node] * len(chunk), pa.string()))


class EncodeAndWrite:
    """Ray Data actor: embeds each chunk's windows, scores them once and writes the chunk's parts."""

    def __init__(self, settings: EncodeSettings, cache_box: list, out: str, write: WriteSettings):
        import ray
        import torch

        from das_core.encoder import ClapEncoder

        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        device = "cuda" if settings.num_gpus_per_actor > 0 else "cpu"
        self.encoder = ClapEncoder.from_checkpoint(settings.checkpoint, device=device, precision=settings.precision,
                                                   tokenizer_dir=settings.tokenizer_dir,
                                                   max_batch_size=settings.max_batch_size, batch_invariant=True)
        self.cache = ray.get(cache_box[0])
        # the driver checked too; a worker may see another file at the same path
        self.cache.check_encoder(self.encoder.encoder_id, settings.checkpoint)
        self.store = OutputStore(out)
        self.write = write
        self.node = _node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for i in range(len(batch)):
            n = batch.column("n_windows")[i].as_py()
            stored = None
            if n:
                audio = batch.column("audio")[i].as_buffer()
                windows = np.frombuffer(audio, dtype=np.int16).reshape(n, WINDOW_SAMPLES)
                stored = self.encoder.embed_audio_int16(windows).astype(self.write.embedding_dtype)
            stats = write_chunk(self.store, batch.column("unit")[i].as_py(), batch.column("chunk")[i].as_py(),
                                batch.column("last")[i].as_py(), ChunkMeta.parse(batch.column("meta")[i].as_py()),
                                stored, self.cache, self.write)
            rows.append({**stats, "node": self.node, "decoded_on": batch.column("decoded_on")[i].as_py()})
        return pa.Table.from_pylist(rows, schema=STATS_WITH_NODES)


STATS_WITH_NODES = STATS_SCHEMA.append(pa.field("decoded_on", pa.string()))


def finish_units(out: str, units: list[tuple[str, list[int]]], cache_box: list, write: WriteSettings) -> int:
    """Ray task: commit whole units (``finish_unit`` for each)."""
    import ray

    cache = ray.get(cache_box[0])
    store = OutputStore(out)
    for unit, piece_chunks in units:
        finish_unit(store, unit, piece_chunks, cache, write)
    return len(units)


class UnitTracker:
    """Driver side: which units have all their chunks written, and which chunks wrote pieces."""

    def __init__(self):
        self.seen: dict[str, set[int]] = {}
        self.expected: dict[str, int] = {}
        self.pieces: dict[str, list[int]] = {}
        self.whole: set[str] = set()

    def is_repeat(self, stats: dict) -> bool:
        """A chunk already counted: a retried task may hand the driver its statistics twice; the part it
        wrote has the same name and overwrote the first, so it must neither count nor commit twice."""
        unit = stats["unit"]
        return unit in self.whole or stats["chunk"] in self.seen.get(unit, ())

    def add(self, stats: dict) -> tuple[str, list[int]] | None:
        """Count a chunk (repeats are ignored); the unit and its pieces' chunks once the unit is whole."""
        if self.is_repeat(stats):
            return None
        unit = stats["unit"]
        self.seen.setdefault(unit, set()).add(stats["chunk"])
        if stats["pieces"]:
            self.pieces.setdefault(unit, []).append(stats["chunk"])
        if stats["last"]:
            self.expected[unit] = stats["chunk"] + 1
        if len(self.seen[unit]) == self.expected.get(unit):
            del self.seen[unit], self.expected[unit]
            self.whole.add(unit)
            return unit, sorted(self.pieces.pop(unit, []))
        return None

    @property
    def open_units(self) -> int:
        return len(self.seen)


class Finisher:
    """Commits whole units in Ray tasks, in batches, with a bounded number in flight."""

    def __init__(self, out: str, cache_box: list, write: WriteSettings, env: dict | None, batch: int = 64,
                 every_s: float = 5.0, in_flight: int = 4):
        import ray

        self.task = ray.remote(finish_units).options(num_cpus=0.25, max_retries=3,
                                                      runtime_env={"env_vars": env} if env else None)
        self.args = (out, cache_box, write)
        self.pending: list[tuple[str, list[int]]] = []
        self.running: list = []
        self.batch, self.every_s, self.in_flight = batch, every_s, in_flight
        self.last = time.monotonic()
        self.committed = 0

    def add(self, unit: tuple[str, list[int]]) -> None:
        self.pending.append(unit)
        if len(self.pending) >= self.batch or time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        import ray

        if self.pending:
            out, cache_box, write = self.args
            self.running.append(self.task.remote(out, self.pending, cache_box, write))
            self.pending, self.last = [], time.monotonic()
        while len(self.running) > self.in_flight:
            done, self.running = ray.wait(self.running, num_returns=1)
            self.committed += ray.get(done[0])

    def drain(self) -> int:
        import ray

        self.flush()
        self.committed += sum(ray.get(self.running))
        self.running = []
        return self.committed


# What a decode task may hold: a chunk of int16 windows, libsndfile and soxr state, and the noise cache.
DECODE_MEMORY_BYTES = 768 * 2**20
# Ray Data gathers a task's output into blocks of up to this size (default 128 MiB): a chunk row (30 MiB) per
# block streams chunks to the encoder as soon as they are decoded and keeps a decode worker's memory flat.
BLOCK_BYTES = 32 * 2**20


# Retries. Ray Data retries a task whose process died without limit (max_retries=-1) and restarts a pool
# actor that died, retrying its call (max_restarts=-1, max_task_retries=-1). das relies on those defaults
# (tests/test_faults.py fails without them) rather than passing them: Ray 2.60 deprecates extra remote
# arguments to map_batches. Unbounded decode retries still end: with ``DecodeProgress``, every death after
# a unit's second either moves the next attempt past an input or gives that input up.

# Test-only switches (das_core.units.TEST_CRASH_ENV, das_core.storage.TEST_FAIL_WRITE_ENV), forwarded to
# workers when set so that tests/test_faults.py can inject faults into them.
TEST_ENV = ("DAS_TEST_CRASH_ON", "DAS_TEST_FAIL_WRITE")


def with_test_env(env: dict[str, str]) -> dict[str, str]:
    import os

    return {**env, **{k: os.environ[k] for k in TEST_ENV if os.environ.get(k)}}


def configure_data_context() -> None:
    """Ray Data settings of das's pipelines (the driver's context; it travels with the dataset)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.target_max_block_size = BLOCK_BYTES
    # Ray Data reserves part of the cluster for each operator; with a fixed actor pool beside one task
    # operator that reservation only idles CPUs the decode tasks could use (decode_scaling in `make bench`
    # rose from 0.57 to 0.72 without it).
    ctx.op_resource_reservation_enabled = False


def run_stages(manifest_uri: str, keep: dict[int, list[str]] | None, out: str, decode: DecodeSettings,
               encode: EncodeSettings, write: WriteSettings, *, cache_box: list, actors: int, batch_size: int,
               env: dict[str, str] | None = None) -> Iterator[dict]:
    """Run the pipeline over the units of ``manifest_uri`` (``keep``: per row group, the units to do);
    yields one statistics dict per chunk written.

    The encoder runs every forward pass on ``batch_size`` windows (see ``ClapEncoder`` ``batch_invariant``),
    so results do not depend on how chunks are spread over actors.
    """
    import ray
    import ray.data

    if encode.max_batch_size is None:
        encode = dataclasses.replace(encode, max_batch_size=batch_size)
    configure_data_context()
    runtime_env = {"env_vars": env} if env else None
    progress = ray.remote(DecodeProgress).options(num_cpus=0, max_restarts=0).remote()
    ds = ray.data.read_datasource(WorkManifestDatasource(manifest_uri, keep), num_cpus=1,
                                  memory=DECODE_MEMORY_BYTES, runtime_env=runtime_env)
    # The memory request differs from the actors' resources, which also keeps Ray Data from fusing decoding
    # into the encoder actors: decoding stays a pool of CPU tasks running beside the encoder.
    ds = ds.map_batches(decode_task, fn_kwargs={"settings": decode, "progress": progress}, batch_size=1,
                        batch_format="pyarrow", num_cpus=1, memory=DECODE_MEMORY_BYTES, runtime_env=runtime_env)
    # A killed encoder actor is restarted and its call retried: a chunk's parts have fixed names, so the retry
    # overwrites whatever the dead call wrote (see "Retries" above).
    ds = ds.map_batches(EncodeAndWrite, fn_constructor_kwargs={"settings": encode, "cache_box": cache_box,
                                                               "out": out, "write": write},
                        batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
                        num_gpus=encode.num_gpus_per_actor, num_cpus=encode.cpus_per_actor, runtime_env=runtime_env)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield from batch.to_pylist()
    finally:
        ray.kill(progress)


def map_rows(rows: list[dict], work, shared, *, env: dict[str, str] | None = None, **settings) -> Iterator[pa.Table]:
    """One Ray Data row, and task, per dict of ``rows``; streams each task's small table to the driver.

    A task returns ``work(row, shared, **settings)``. ``shared`` (a drift cache, the queries) is ``ray.put``
    once and fetched in each task. Used by das rescore (a row per unit) and das search (a row per group of units).
    """
    import ray
    import ray.data

    if not rows:
        return
    runtime_env = {"runtime_env": {"env_vars": env}} if env else {}
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map_batches(_map_row, fn_kwargs={"work": work, "shared_box": [ray.put(shared)], "settings": settings},
                        batch_size=1, batch_format="pyarrow", num_cpus=1, **runtime_env)
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def _map_row(batch: pa.Table, work, shared_box: list, settings: dict) -> pa.Table:
    import ray

    shared = ray.get(shared_box[0])
    return pa.concat_tables([work(row, shared, **settings) for row in batch.to_pylist()])
