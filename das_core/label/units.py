"""Work units and the unit table: how a label run is planned, scheduled, written and resumed.

A **unit** is a group of consecutive input files (sorted by path) bounded by
count (``files_per_unit``) and by bytes (``unit_bytes``, where the listing
knows sizes); a tar or Parquet shard is a unit of its own. Planning writes the
unit list once, as the Parquet **unit table** ``OUT/_work/units.parquet`` (one
row per unit: its id and its files' ids and paths); the stages read it back one
row group at a time (on Ray, one read task per row group), and ``--resume``
continues exactly the units it lists.

How a unit is decoded into chunks: ``das_core.label.decode``.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from das_core.io import storage
from das_core.output.format import UNIT_TABLE_DIR, UNIT_TABLE_FILE

UNIT_SCHEMA = pa.schema([
    pa.field("unit", pa.string(), nullable=False),
    pa.field("file_ids", pa.list_(pa.string()), nullable=False),
    pa.field("paths", pa.list_(pa.string()), nullable=False),
    pa.field("bytes", pa.int64()),
    pa.field("shard", pa.string()),       # null: plain files; "tar" or "parquet": one shard (das_core.io.shards)
])

# What the decode stage hands the encoder: one row per chunk.

def unit_id(index: int) -> str:
    """The id of the ``index``-th unit of a run (``u00000042``): part names derive from it."""
    return f"u{index:08d}"


def plan_units(inputs: pa.Table, files_per_unit: int, unit_bytes: int, first_unit: int = 0) -> pa.Table:
    """Group ``inputs`` (``file_id``, ``path``, optional ``size``; sorted) into units, in order.

    A unit closes at ``files_per_unit`` files, or before a file that would take
    it past ``unit_bytes`` (a file larger than that is a unit of its own).
    Unknown sizes count as zero bytes.
    """
    n = len(inputs)
    sizes = (inputs.column("size").fill_null(0).to_numpy().astype(np.int64) if "size" in inputs.column_names
             else np.zeros(n, dtype=np.int64))
    shards = inputs.column("shard").to_pylist() if "shard" in inputs.column_names else [None] * n
    unit_of = np.empty(n, dtype=np.int64)
    unit, count, total, alone = 0, 0, 0, False
    for i, (size, shard) in enumerate(zip(sizes.tolist(), shards)):
        if count and (alone or shard or count >= files_per_unit or total + size > unit_bytes):
            unit, count, total = unit + 1, 0, 0
        unit_of[i] = unit
        count += 1
        total += size
        alone = shard is not None           # a shard is a unit of its own
    n_units = int(unit_of[-1]) + 1 if n else 0
    starts = np.searchsorted(unit_of, np.arange(n_units + 1)).astype(np.int32)
    offsets = pa.array(starts, pa.int32())
    ids = inputs.column("file_id").combine_chunks()
    paths = inputs.column("path").combine_chunks()
    unit_bytes_col = np.add.reduceat(sizes, starts[:-1]) if n_units else np.zeros(0, dtype=np.int64)
    return pa.table({
        "unit": pa.array([unit_id(first_unit + i) for i in range(n_units)], pa.string()),
        "file_ids": pa.ListArray.from_arrays(offsets, ids),
        "paths": pa.ListArray.from_arrays(offsets, paths),
        "bytes": pa.array(unit_bytes_col, pa.int64()),
        "shard": pa.array([shards[int(s)] for s in starts[:-1]], pa.string()),
    }, schema=UNIT_SCHEMA)


def unit_table_uri(out: str) -> str:
    """Where the unit table of the output ``out`` is (``OUT/_work/units.parquet``)."""
    return storage.join(out, UNIT_TABLE_DIR, UNIT_TABLE_FILE)


def units_per_row_group(n_units: int, target_tasks: int = 4096) -> int:
    """Units read (and decoded) by one task: one, unless that would mean more than ``target_tasks`` tasks."""
    return max(1, -(-n_units // target_tasks))


def write_unit_table(out: str, units: pa.Table) -> str:
    """Write the unit table of ``out`` (atomically); its URI. One row group is what one read task decodes."""
    buf = io.BytesIO()
    pq.write_table(units, buf, row_group_size=units_per_row_group(len(units)), compression="zstd")
    uri = unit_table_uri(out)
    storage.write_bytes_atomic(uri, buf.getvalue())
    return uri


def read_unit_group(uri: str, group: int, units: list[str] | None = None) -> pa.Table:
    """Row group ``group`` of the unit table at ``uri`` (one read task's units), only ``units`` if given."""
    with storage.open_input(uri) as f:
        return unit_group(pq.ParquetFile(f), group, units)


def unit_group(table_file: pq.ParquetFile, group: int, units: list[str] | None = None) -> pa.Table:
    """Row group ``group`` of the open unit table ``table_file``, only ``units`` if given. A process that reads
    many groups opens the table once: its footer grows with the groups, so parsing it per group is quadratic."""
    table = table_file.read_row_group(group)
    if units is not None:
        table = table.filter(pc.is_in(table.column("unit"), pa.array(units, pa.string())))
    return table


def read_unit_table(out: str) -> pa.Table | None:
    """The unit table of the output ``out`` (``UNIT_SCHEMA``), or None where there is none."""
    uri = unit_table_uri(out)
    if not storage.exists(uri):
        return None
    return pq.read_table(io.BytesIO(storage.read_bytes(uri))).cast(UNIT_SCHEMA)
