"""The label stages in this process, without Ray (``LocalStages``): for small jobs, the same rows as on Ray.

The same library stages as the Ray pipeline (``jobs/pipeline.py``'s ``RayStages``), wired in a loop instead
of Ray Data, with the same shape: entered, they yield each chunk's statistics, commit each unit the ledger
says is whole, and flush at the end.

    unit table (one row group at a time, the units to do)
      -> ``decode.decode_units``    a unit's files -> chunk tables, one at a time, in a child process
                                    (``decode_process``: a crashing decoder kills the child, not das)
      -> ``encode.ChunkEncoder``    embed, score once, write the chunk's parts; its statistics
      -> the ledger                 counts, the error budget; the unit a chunk makes whole
      -> ``sink.finish_units``      commits that unit at once
      -> ``pack.pack_units``        packs each range of committed units the ledger says is ready, at once

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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pyarrow as pa
import pyarrow.parquet as pq

from das_core.errors import EngineRefused
from das_core.io import storage
from das_core.label.decode_process import DecodeProcess
from das_core.label.encode import ChunkEncoder, EncodeSettings
from das_core.label.plan import LabelPlan
from das_core.label.sink import finish_units
from das_core.label.units import unit_group, unit_table_uri
from das_core.output.pack import pack_units
from das_core.runtime.interrupts import interrupts_held


def units_to_do(out: str, keep: dict[int, list[str]] | None) -> Iterator[pa.Table]:
    """The unit table of ``out``, one row group at a time (``keep``: per row group, the units to do)."""
    table_file = pq.ParquetFile(io.BytesIO(storage.read_bytes(unit_table_uri(out))))
    groups = range(table_file.metadata.num_row_groups) if keep is None else sorted(keep)
    for g in groups:
        yield unit_group(table_file, g, None if keep is None else keep[g])


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


class LocalStages:
    """The label stages of ``plan`` in this process: decode, encode and commit, one chunk at a time.

    Made before the progress line starts (a GPU run where torch sees none is refused here); entered, it sets
    the encoder's threads; ``chunk_stats`` loads the model and yields each chunk's statistics; ``commit``
    commits a whole unit at once; ``committed`` counts the units committed so far.
    """

    starting = "loading the model in this process"          # the progress line before the work starts
    pending = "decoding and encoding in this process"       # what a stall waits for
    first_line = "starting: loading the model in this process, decoding"
    nodes = None                                            # no cluster to describe

    def __init__(self, plan: LabelPlan):
        self.plan = plan
        check_device(plan.encode_settings())
        self.write, self.node = plan.write_settings(), socket.gethostname()
        self.committed = 0
        self.fresh: list[str] = []          # committed, not yet handed to the ledger (``newly_committed``)
        self.stack = ExitStack()

    def __enter__(self) -> LocalStages:
        with interrupts_held():             # imports torch
            self.encode = self.stack.enter_context(encoder_threads(self.plan.encode_settings()))
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def chunk_stats(self) -> Iterator[dict]:
        """Every chunk of the units to do, decoded (in a child process) and encoded in turn; the statistics of
        each."""
        plan = self.plan
        with interrupts_held():             # imports and builds the model stack
            encoder = ChunkEncoder(self.encode, plan.cache, plan.config.out, self.write, self.node)
        with DecodeProcess(plan.decode_settings()) as decoder:
            for group in units_to_do(plan.config.out, plan.row_groups_to_do()):
                for chunk in decoder.decode(group):
                    chunk = chunk.append_column("decoded_on", pa.array([self.node] * len(chunk), pa.string()))
                    yield from encoder(chunk).to_pylist()

    def commit(self, unit: tuple[str, list[int]]) -> None:
        """Commit ``unit`` (with the chunks that wrote pieces) now."""
        done = finish_units(self.plan.config.out, [unit], self.plan.cache, self.write)
        self.committed += len(done)
        self.fresh += done

    def newly_committed(self) -> list[str]:
        """The units committed since the last call."""
        fresh, self.fresh = self.fresh, []
        return fresh

    def pack(self, units: list[str]) -> None:
        """Pack ``units`` now, in this process (``das_core.output.pack.pack_units``)."""
        pack_units(self.plan.config.out, units)

    def flush(self) -> None:
        """Nothing waits: every unit was committed as it became whole."""

    def flush_packs(self) -> None:
        """Nothing waits: every pack was made when asked."""
