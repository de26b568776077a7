"""The Ray Data wiring of ``das label``: its stages on Ray (``RayStages``), and ``map_rows`` for rescore and search.

    unit table (Parquet, one read task per row group of units)
      -> decode_task       CPU tasks: a unit's files -> chunk rows of <= chunk_windows int16 windows; on the
                           CPU-only decode group where the cluster has one (``decode_resources``)
      -> EncodeAndWrite    actor pool (GPU or CPU): embed, score once, write the chunk's parts
      -> driver            small statistics per chunk (the ledger, in ``jobs.label``); commits units once
                           whole (``Finisher``), packs ranges of committed units once ready (``Packer``)

What each stage does is in ``das_core.label`` (``decode``, ``encode``, ``sink``). The drift cache is
``ray.put`` once; no embedding or score vector ever reaches the driver. Retries: Ray Data retries a task
whose process died without limit and restarts a pool actor that died, retrying its call; das relies on
those defaults (tests/label/test_faults.py fails without them; Ray 2.60 deprecates passing them). Unbounded
decode retries still end: with ``DecodeProgress``, every death after a unit's second either moves the next
attempt past an input or gives that input up. A retried chunk overwrites the part of the same name.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata
from ray.exceptions import UserCodeException

from das_core.errors import WriteFailed
from das_core.io import storage
from das_core.label.config import LabelConfig
from das_core.label.crash_watch import DecodeProgress, RemoteWatch
from das_core.label.decode import DecodeSettings, decode_units
from das_core.label.encode import ChunkEncoder, EncodeSettings
from das_core.label.plan import LabelPlan
from das_core.label.sink import WriteSettings, finish_units
from das_core.label.units import UNIT_SCHEMA, read_unit_group, unit_table_uri
from das_core.output.pack import pack_units
from das_core.runtime import placement
from jobs.common import init_ray, log, node_resources, worker_env

# What a decode task may hold: a chunk of int16 windows, libsndfile and soxr state, and the noise cache.
DECODE_MEMORY_BYTES = 768 * 2**20
# A CPU-only worker group offers this Ray resource (infra/: ``decode: 1000`` per node). Decode tasks that ask for
# one unit of it run on that group only, leaving the GPU nodes' cores to the encoder actors.
DECODE_RESOURCE = "decode"
DECODE_RESOURCE_ENV = "DAS_DECODE_RESOURCE"
# Ray Data gathers a task's output into blocks of up to this size (default 128 MiB): a chunk row (30 MiB) per
# block streams chunks to the encoder as soon as they are decoded and keeps a decode worker's memory flat.
BLOCK_BYTES = 32 * 2**20


class UnitTableDatasource(Datasource):
    """The unit table: one read task per row group, keeping only the units to do (``keep``) in each."""

    def __init__(self, uri: str, keep: dict[int, list[str]] | None = None):
        super().__init__()
        self.uri, self.keep = uri, keep
        self.meta = pq.ParquetFile(io.BytesIO(storage.read_bytes(uri))).metadata

    def estimate_inmemory_data_size(self) -> int | None:
        """The unit table's metadata size (a small table: Ray Data's estimate)."""
        return self.meta.serialized_size

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        """One read task per row group (or per row group with units to do)."""
        tasks = []
        for g in range(self.meta.num_row_groups) if self.keep is None else sorted(self.keep):
            todo = None if self.keep is None else self.keep[g]
            meta = BlockMetadata(num_rows=self.meta.row_group(g).num_rows if todo is None else len(todo),
                                 size_bytes=self.meta.row_group(g).total_byte_size, input_files=None, exec_stats=None)
            tasks.append(ReadTask(lambda g=g, todo=todo: [read_unit_group(self.uri, g, todo)], meta,
                                  schema=UNIT_SCHEMA))
        return tasks


def actor_call(actor):
    """``RemoteWatch``'s way to reach the run's ``DecodeProgress`` actor."""
    def call(method: str, *args, wait: bool):
        """Call ``method`` on the actor; its answer when ``wait``."""
        ref = getattr(actor, method).remote(*args)
        return ray.get(ref) if wait else None
    return call


def decode_task(batch: pa.Table, settings: DecodeSettings, progress=None) -> Iterator[pa.Table]:
    """``decode_units`` tagged with the node that ran it; ``progress``: the run's ``DecodeProgress`` actor."""
    node = ray.get_runtime_context().get_node_id()
    watch = RemoteWatch(actor_call(progress)) if progress is not None else None
    for chunk in decode_units(batch, settings, watch):
        yield chunk.append_column("decoded_on", pa.array([node] * len(chunk), pa.string()))


class WorkerWriteFailed(UserCodeException, WriteFailed):
    """A worker's failed write (disk full, read-only, permission) as it leaves a Ray Data UDF: still the
    ``WriteFailed`` with its errno, cause and path, and a ``UserCodeException``, which Ray Data logs without a
    traceback (``keep_worker_errors``)."""


@contextmanager
def passing_write_failures() -> Iterator[None]:
    """Re-raise a worker's ``WriteFailed`` as ``WorkerWriteFailed``, which reaches the driver whole."""
    try:
        yield
    except WriteFailed as exc:
        raise WorkerWriteFailed(exc.errno, exc.strerror, exc.filename) from None


class EncodeAndWrite(ChunkEncoder):
    """Ray Data actor: ``ChunkEncoder`` with the run's cache from the object store."""

    def __init__(self, settings: EncodeSettings, cache_box: list, out: str, write: WriteSettings):
        super().__init__(settings, ray.get(cache_box[0]), out, write, ray.get_runtime_context().get_node_id())

    def __call__(self, batch: pa.Table) -> pa.Table:
        with passing_write_failures():
            return super().__call__(batch)


def finish_task(out: str, units: list[tuple[str, list[int]]], cache_box: list, write: WriteSettings
                ) -> list[str]:
    """A Ray task: commit ``units`` (``das_core.label.sink.finish_units``); the units committed."""
    return finish_units(out, units, ray.get(cache_box[0]), write)


class Finisher:
    """Commits whole units in Ray tasks, in batches, with a bounded number in flight."""

    def __init__(self, out: str, cache_box: list, write: WriteSettings, env: dict | None, batch: int = 64,
                 every_s: float = 5.0, in_flight: int = 4):
        self.task = ray.remote(finish_task).options(num_cpus=0.25, max_retries=3,
                                                     runtime_env={"env_vars": env} if env else None)
        self.out, self.cache_box, self.write = out, cache_box, write
        self.pending: list[tuple[str, list[int]]] = []
        self.running: list = []
        self.batch, self.every_s, self.in_flight = batch, every_s, in_flight
        self.last, self.committed = time.monotonic(), 0
        self.fresh: list[str] = []        # committed, not yet handed out by ``newly_committed``

    def add(self, unit: tuple[str, list[int]]) -> None:
        """Queue a whole unit; a batch is sent once full or ``every_s`` old."""
        self.pending.append(unit)
        if len(self.pending) >= self.batch or time.monotonic() - self.last >= self.every_s:
            self.flush()

    def poll(self) -> int:
        """Units committed so far, counting the batches that finished since the last call (no waiting)."""
        if self.running:
            done, self.running = ray.wait(self.running, num_returns=len(self.running), timeout=0)
            for units in ray.get(done):
                self._count(units)
        return self.committed

    def _count(self, units: list[str]) -> None:
        self.committed += len(units)
        self.fresh += units

    def newly_committed(self) -> list[str]:
        """The units whose commit finished since the last call."""
        fresh, self.fresh = self.fresh, []
        return fresh

    def flush(self, in_flight: int | None = None) -> int:
        """Send the queued units, then wait until at most ``in_flight`` batches run; units committed so far."""
        if self.pending:
            self.running.append(self.task.remote(self.out, self.pending, self.cache_box, self.write))
            self.pending, self.last = [], time.monotonic()
        while len(self.running) > (self.in_flight if in_flight is None else in_flight):
            done, self.running = ray.wait(self.running, num_returns=1)
            self._count(ray.get(done[0]))
        return self.committed


def pack_task(out: str, units: list[str]) -> dict:
    """A Ray task: pack the committed ``units`` (``das_core.output.pack.pack_units``); what it wrote."""
    return pack_units(out, units)


class Packer:
    """Packs ranges of committed units in Ray tasks, launched as soon as a range is ready, without waiting; the
    driver waits for them (``flush``) before the final manifest. A pack task holds about one pack in memory."""

    def __init__(self, out: str, env: dict | None):
        self.task = ray.remote(pack_task).options(num_cpus=0.25, max_retries=3,
                                                   runtime_env={"env_vars": env} if env else None)
        self.out, self.running = out, []

    def add(self, units: list[str]) -> None:
        """Launch the pack of ``units``; packs that finished meanwhile are collected (their errors raised)."""
        self.running.append(self.task.remote(self.out, units))
        done, self.running = ray.wait(self.running, num_returns=len(self.running), timeout=0)
        ray.get(done)

    def flush(self) -> None:
        """Wait for every pack launched."""
        ray.get(self.running)
        self.running = []


def configure_data_context() -> None:
    """Ray Data settings of das's pipelines (the driver's context; it travels with the dataset)."""
    ctx = ray.data.DataContext.get_current()
    ctx.target_max_block_size = BLOCK_BYTES
    # Ray Data reserves part of the cluster for each operator; with a fixed actor pool beside one task
    # operator that only idles CPUs the decode tasks could use (decode_scaling in `make bench`: 0.57 -> 0.72).
    ctx.op_resource_reservation_enabled = False
    # das prints its own progress line (RunMonitor); Ray Data's bars and block logs only with -v
    ctx.enable_progress_bars = log.isEnabledFor(logging.DEBUG)
    keep_worker_errors()


def keep_worker_errors() -> None:
    """A worker's own exception reaches the driver (as ``RayTaskError.cause``) instead of Ray Data's
    ``UserCodeException``, whose cause is lost on the way: a full disk stays an ``OSError`` with its path
    (``WorkerWriteFailed``)."""
    ray.data.DataContext.get_current().raise_original_map_exception = True


def decode_resources(cluster: dict[str, float]) -> dict[str, float] | None:
    """The custom Ray resources a decode task asks for: one unit of ``$DAS_DECODE_RESOURCE`` when that is set
    (a cluster whose autoscaler brings up the group offering it, which may have no node yet; set but empty:
    none), else one unit of ``decode`` where ``cluster`` (``ray.cluster_resources()``) has it; else None, so
    that decode tasks run anywhere (a local Ray, a cluster without a decode group)."""
    name = os.environ.get(DECODE_RESOURCE_ENV)
    if name is None:
        name = DECODE_RESOURCE if cluster.get(DECODE_RESOURCE, 0) >= 1 else ""
    return {name.strip(): 1.0} if name.strip() else None


def run_stages(unit_table: str, keep: dict[int, list[str]] | None, out: str, decode: DecodeSettings,
               encode: EncodeSettings, write: WriteSettings, *, cache_box: list, actors: int,
               env: dict[str, str] | None = None) -> Iterator[dict]:
    """The pipeline over the units of the unit table at ``unit_table`` (``keep``: per row group, the units to do); one
    statistics dict per chunk written. Every forward pass has the same shape (``ClapEncoder``
    ``batch_invariant``), so results do not depend on how chunks are spread over actors."""
    configure_data_context()
    runtime_env = {"env_vars": env} if env else None
    progress = ray.remote(DecodeProgress).options(num_cpus=0, max_restarts=0).remote()
    # reading the unit table is placed as decoding is (Ray Data may fuse the two into one task)
    placed = decode_resources(ray.cluster_resources())
    ds = ray.data.read_datasource(UnitTableDatasource(unit_table, keep), num_cpus=1,
                                  memory=DECODE_MEMORY_BYTES, resources=placed, runtime_env=runtime_env)
    # The memory request differs from the actors' resources, which also keeps Ray Data from fusing decoding
    # into the encoder actors: decoding stays a pool of CPU tasks running beside the encoder.
    ds = ds.map_batches(decode_task, fn_kwargs={"settings": decode, "progress": progress}, batch_size=1,
                        batch_format="pyarrow", num_cpus=1, memory=DECODE_MEMORY_BYTES, resources=placed,
                        runtime_env=runtime_env)
    ds = ds.map_batches(EncodeAndWrite, fn_constructor_kwargs={"settings": encode, "cache_box": cache_box,
                                                               "out": out, "write": write},
                        # on a GPU, two chunks a call: the copy of the second overlaps the work on the first
                        batch_size=2 if encode.num_gpus_per_actor > 0 else 1, batch_format="pyarrow",
                        compute=ray.data.ActorPoolStrategy(size=actors),
                        num_gpus=encode.num_gpus_per_actor, num_cpus=encode.cpus_per_actor, runtime_env=runtime_env)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield from batch.to_pylist()
    finally:
        ray.kill(progress)


class RayStages:
    """The label stages of ``plan`` on Ray Data, in the shape of ``das_core.label.local.LocalStages``.

    Made before the progress line starts; entered, it starts or joins Ray (refused at once where the
    encoder actors or a decode task fit no node) and puts the drift cache in the object store;
    ``chunk_stats`` runs the pipeline and yields each chunk's statistics; ``commit`` hands a whole unit to
    the ``Finisher`` (commit tasks, in batches); ``flush`` waits for every commit; ``committed`` counts
    the units committed so far.
    """

    starting = "starting Ray"            # the progress line before the work starts

    def __init__(self, plan: LabelPlan):
        self.plan = plan
        self.demand = label_demand(plan.config)
        self.pending = self.demand.describe()
        self.first_line = f"starting: loading the model on {self.demand.actors} encoder actor(s), decoding"

    @staticmethod
    def nodes() -> str:
        """What the nodes offer (free/total), for a stall's warning."""
        return placement.describe_nodes(node_resources(available=True), node_resources())

    def __enter__(self) -> RayStages:
        config = self.plan.config
        # refused now rather than an endless wait: totals, then whether the actors and a decode task fit nodes
        init_ray(gpus=config.num_gpus, cpus=config.actor_count * config.cpus_per_actor,
                 fits=lambda nodes: placement.misfits(nodes, self.demand))
        self.cache_box, self.write, self.env = [ray.put(self.plan.cache)], self.plan.write_settings(), worker_env()
        self.finisher = Finisher(config.out, self.cache_box, self.write, self.env)
        self.packer = Packer(config.out, self.env)
        return self

    def __exit__(self, *exc) -> None:
        """Nothing to release: the pipeline's own actors go with it."""

    @property
    def committed(self) -> int:
        """Units committed so far (by the commit tasks that finished)."""
        return self.finisher.committed

    def chunk_stats(self) -> Iterator[dict]:
        """The pipeline over the units to do; each chunk's statistics, as they come (finished commits counted)."""
        plan, config = self.plan, self.plan.config
        for stats in run_stages(unit_table_uri(config.out), plan.row_groups_to_do(), config.out,
                                plan.decode_settings(), plan.encode_settings(), self.write, cache_box=self.cache_box,
                                actors=config.actor_count, env=self.env):
            self.finisher.poll()
            yield stats

    def commit(self, unit: tuple[str, list[int]]) -> None:
        """Commit ``unit`` in a commit task (batched: see ``Finisher``)."""
        self.finisher.add(unit)

    def flush(self) -> None:
        """Wait until every unit handed to ``commit`` is committed."""
        self.finisher.flush(in_flight=0)

    def newly_committed(self) -> list[str]:
        """The units whose commit task finished since the last call."""
        self.finisher.poll()
        return self.finisher.newly_committed()

    def pack(self, units: list[str]) -> None:
        """Pack ``units`` in a pack task (see ``Packer``)."""
        self.packer.add(units)

    def flush_packs(self) -> None:
        """Wait for every pack task."""
        self.packer.flush()


def label_demand(config: LabelConfig) -> placement.Demand:
    """What the label pipeline asks of the nodes (``run_stages``'s resource requests)."""
    return placement.Demand(actors=config.actor_count, cpus_per_actor=config.cpus_per_actor,
                            gpus_per_actor=config.gpus_per_actor, decode_cpus=1.0, decode_memory=DECODE_MEMORY_BYTES)


def map_rows(rows: list[dict], work, shared, *, env: dict[str, str] | None = None, **settings) -> Iterator[pa.Table]:
    """One Ray Data row, and task, per dict of ``rows``; streams each task's small table to the driver.

    A task returns ``work(row, shared, **settings)``. ``shared`` (a drift cache, the queries) is ``ray.put``
    once and fetched in each task. Used by das rescore (a row per unit) and das search (a row per group of units).
    """
    if not rows:
        return
    runtime_env = {"runtime_env": {"env_vars": env}} if env else {}
    keep_worker_errors()
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map_batches(_map_row, fn_kwargs={"work": work, "shared_box": [ray.put(shared)], "settings": settings},
                        batch_size=1, batch_format="pyarrow", num_cpus=1, **runtime_env)
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def _map_row(batch: pa.Table, work, shared_box: list, settings: dict) -> pa.Table:
    shared = ray.get(shared_box[0])
    with passing_write_failures():
        return pa.concat_tables([work(row, shared, **settings) for row in batch.to_pylist()])
