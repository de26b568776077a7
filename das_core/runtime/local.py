"""Small jobs without a cluster: the stages of ``das label``, ``das rescore`` and ``das search`` in this process.

The same library stages as the Ray pipeline (``jobs/pipeline.py``), wired in a loop instead of Ray Data:

    work manifest (one row group at a time, the units to do)
      -> ``decode_units``     a unit's files -> chunk tables, one at a time (memory: one chunk)
      -> ``writer.ChunkEncoder``    embed, score once, write the chunk's parts; its statistics
      -> ``LabelRun.observe``       counts, the error budget; the unit a chunk makes whole
      -> ``writer.finish_units``    commits that unit at once

Part names derive from the unit and chunk, and every forward pass has the same shape, so a local run writes
the same files with the same rows as a Ray run, and either can resume the other. The encoder runs with the
intra-op threads a Ray encoder actor gets (``--torch-threads``, else ``--cpus-per-actor``): a precaution, as
some CPU kernels choose their blocking by thread count (on the 2-core test machine 1 and 2 threads gave the
same bits). Which engine runs a job: ``das_core.runtime.engine``.
"""

from __future__ import annotations

import dataclasses
import io
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from das_core.io import storage
from das_core.label import units
from das_core.label.decode_process import DecodeProcess
from das_core.label.encode import ChunkEncoder, EncodeSettings
from das_core.label.sink import finish_units
from das_core.runtime.engine import EngineRefused
from das_core.runtime.progress import RunMonitor

if TYPE_CHECKING:
    from das_core.label.run import LabelRun


def units_to_do(out: str, keep: dict[int, list[str]] | None) -> Iterator[pa.Table]:
    """The work manifest of ``out``, one row group at a time (``keep``: per row group, the units to do)."""
    uri = units.unit_table_uri(out)
    groups = range(pq.ParquetFile(io.BytesIO(storage.read_bytes(uri))).metadata.num_row_groups) \
        if keep is None else sorted(keep)
    for g in groups:
        yield units.read_unit_group(uri, g, None if keep is None else keep[g])


@contextmanager
def encoder_threads(settings: EncodeSettings) -> Iterator[EncodeSettings]:
    """``settings`` with the intra-op threads of a Ray encoder actor; torch's own setting is restored after."""
    import torch

    before = torch.get_num_threads()
    threads = settings.torch_threads or max(1, round(settings.cpus_per_actor))
    try:
        yield dataclasses.replace(settings, torch_threads=threads)
    finally:
        torch.set_num_threads(before)


def check_device(settings: EncodeSettings) -> None:
    """Refuse a GPU encoder where torch sees no GPU (Ray refuses the same job for want of a GPU)."""
    if settings.num_gpus_per_actor > 0:
        import torch

        if not torch.cuda.is_available():
            raise EngineRefused(f"this machine has no GPU torch can use (--num-gpus {settings.num_gpus_per_actor:g}, "
                                "running in this process); use --num-gpus 0 to encode on CPU, or --ray with "
                                "RAY_ADDRESS to run on a cluster with GPUs")


def chunk_stats(run: LabelRun, encoder: ChunkEncoder, node: str) -> Iterator[dict]:
    """Every chunk of the units to do, decoded (in a child process) and encoded in turn; the statistics of each."""
    p = run.plan
    with DecodeProcess(p.decode_settings()) as decoder:
        for group in units_to_do(p.config.out, p.row_groups_to_do()):
            yield from _encoded(decoder.decode(group), encoder, node)


def _encoded(chunks: Iterator[pa.Table], encoder: ChunkEncoder, node: str) -> Iterator[dict]:
    for chunk in chunks:
        chunk = chunk.append_column("decoded_on", pa.array([node] * len(chunk), pa.string()))
        yield from encoder(chunk).to_pylist()


def run_units(run: LabelRun) -> None:
    """Label the units to do of ``run`` in this process: decode, encode and commit, one chunk at a time."""
    p, c = run.plan, run.plan.config
    if not len(p.todo):
        return
    check_device(p.encode_settings())
    write, node = p.write_settings(), socket.gethostname()
    committed = [0]
    monitor = RunMonitor(run, "loading the model in this process", "decoding and encoding in this process")
    with monitor, encoder_threads(p.encode_settings()) as encode:
        monitor.started(lambda: committed[0], "starting: loading the model in this process, decoding")
        encoder = ChunkEncoder(encode, p.cache, c.out, write, node)
        for stats in chunk_stats(run, encoder, node):
            whole = run.observe(stats, committed[0])
            monitor.beat()
            if whole:
                committed[0] += finish_units(c.out, [whole], p.cache, write)
            if run.aborted:
                break
    run.check_whole()


def map_rows(rows: list[dict], work: Callable[..., pa.Table], shared: object, **settings) -> Iterator[pa.Table]:
    """``jobs.pipeline.map_rows`` in this process: ``work(row, shared, **settings)`` for each row, in order."""
    for row in rows:
        yield work(row, shared, **settings)
