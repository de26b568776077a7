"""Packs: the staged parts of a contiguous range of committed units merged into one ``segments`` and one ``files``
file, so that an output's file count grows with its bytes, not with its chunks or units.

Which ranges (``PackPlanner``): greedy from the lowest unpacked unit, over consecutive committed units, a pack
as soon as the range holds ``pack_rows`` segment rows; at the end of a finished run, the rest (the tail) whatever
its size. The boundaries depend only on the units' row counts, so an interrupted and resumed run makes the same
packs as an uninterrupted one.

How (``pack_units``), crash-safe: (1) the ``segments`` pack is written atomically, (2) the ``files`` pack
(its existence makes the range packed, see ``das_core.output.format``), (3) the range's staged parts are
deleted. Inside a pack the units are in unit order, each unit's rows in the order of its parts (chunk order,
then the ``end`` part's rows), in row groups of ``ROW_GROUP_ROWS`` rows; the same rows give the same bytes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from das_core.io import storage
from das_core.output.format import (
    DICTIONARY_MIN_ROWS,
    FILES_DIR,
    OK,
    PACK_UNITS,
    PIECES_DIR,
    SEGMENTS_DIR,
    is_end_of,
    pack_name,
    unit_number,
    write_options,
)
from das_core.output.store import OutputStore, StoreListing

PACK_ROWS = 100_000        # segment rows a pack holds at least (--pack-rows), the tail of a run excepted
# Rows per row group of a pack: 16 384 rows of a 512-d float16 embedding are about 18 MiB (34 MiB in float32),
# within what engines read well (DuckDB, Polars and Arrow split a scan by row group: a 100 000-row pack gives
# 7 of them to read in parallel), and a reader of one unit (about 1 000 rows) reads one or two of them.
ROW_GROUP_ROWS = 16_384


class PackPlanner:
    """Which unit ranges to pack, as units commit (``add``); ``ready`` hands out each range once.

    ``unpacked``: every unit of the run not in a pack yet, committed or not (the lowest one starts the first
    range); ``pack_rows`` 0 never packs.
    """

    def __init__(self, unpacked: list[str], pack_rows: int = PACK_ROWS):
        self.order = sorted(unpacked, key=unit_number)
        self.pos, self.pack_rows = 0, pack_rows
        self.rows: dict[str, int] = {}
        self.end, self.total = 0, 0      # how far the run from ``pos`` was followed, and its rows: each unit once

    def add(self, unit: str, rows: int) -> None:
        """``unit`` is committed and holds ``rows`` segment rows."""
        self.rows[unit] = rows

    def _run_end(self) -> tuple[int, bool]:
        """Where the run of consecutive committed units from ``pos`` stops, and whether it holds ``pack_rows``;
        it goes on from where the last call stopped (a scan from ``pos`` at every commit made a run of 10^7
        windows spend 8 % of its time here)."""
        while self.total < self.pack_rows and self.end < len(self.order) and self.order[self.end] in self.rows and (
                self.end == self.pos
                or unit_number(self.order[self.end]) == unit_number(self.order[self.end - 1]) + 1):
            self.total += self.rows[self.order[self.end]]
            self.end += 1
        return self.end, self.total >= self.pack_rows

    def ready(self, final: bool = False) -> list[list[str]]:
        """The ranges to pack now, each a list of units in order; with ``final`` (the run finished), the rest
        too, whatever its size."""
        out: list[list[str]] = []
        while self.pack_rows > 0 and self.pos < len(self.order):
            end, full = self._run_end()
            if not (full or (final and end > self.pos)):
                break
            out.append(self.order[self.pos:end])
            self.pos, self.total = end, 0          # the next run starts where this one ended (``self.end``)
        return out


def committed_rows(store: OutputStore, listing: StoreListing) -> list[tuple[str, int]]:
    """Each committed unit not packed yet, with its segment rows (the windows of its ok files, from its files
    rows: what its chunks' statistics counted)."""
    out = []
    for unit, files in store.read_by_unit(listing.unpacked_committed(), FILES_DIR, listing, ["status", "n_segments"]):
        ok = files.filter(pc.equal(files.column("status"), OK)) if files is not None else None
        out.append((unit, int(pc.sum(ok.column("n_segments")).as_py() or 0) if ok is not None else 0))
    return out


def canonical_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every list's value field named ``item`` (Arrow's name), as das makes its tables: a part
    read back from Parquet names it ``element``, so a pack of staged Parquet parts (format 2, ``--pack-rows 0``)
    would store another Arrow schema, and other bytes, than a pack of the same rows staged as Arrow."""
    def fix(kind: pa.DataType) -> pa.DataType:
        """``kind`` with its value fields, at every depth, named ``item``."""
        if pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind):
            value = pa.field("item", fix(kind.value_type), kind.value_field.nullable)
            return pa.list_(value, kind.list_size) if pa.types.is_fixed_size_list(kind) else pa.list_(value)
        return kind

    return pa.schema([pa.field(f.name, fix(f.type), f.nullable, f.metadata) for f in schema], metadata=schema.metadata)


def _flush(writer: pq.ParquetWriter, pending: list[pa.Table], final: bool) -> list[pa.Table]:
    """Write whole row groups of ``pending`` (all of it if ``final``); what is left over."""
    table = pa.concat_tables(pending) if len(pending) > 1 else pending[0]
    start = 0
    while table.num_rows - start >= ROW_GROUP_ROWS or (final and start < table.num_rows):
        rows = min(ROW_GROUP_ROWS, table.num_rows - start)
        writer.write_table(table.slice(start, rows), row_group_size=rows)
        start += rows
    return [table.slice(start)] if start < table.num_rows else []


def write_pack(store: OutputStore, folder: str, name: str, units: Iterable[tuple[str, Iterable[pa.Table]]],
               skip_empty: bool) -> int:
    """Write the tables ``units`` (``(unit, its tables)`` in order, the tables read as they are needed) as the
    pack ``folder/name``, atomically, streaming row groups; its rows. Nothing is written for no rows where
    ``skip_empty``."""
    buf, writer, spans, row = io.BytesIO(), None, [], 0
    pending: list[pa.Table] = []
    for unit, tables in units:
        first = row
        for table in tables:
            if writer is None:
                schema = canonical_schema(table.schema)
                # dictionary encoding as in a part of many rows, whatever the pack's size: the same options always
                writer = pq.ParquetWriter(buf, schema, **write_options(schema, DICTIONARY_MIN_ROWS))
            pending.append(table if table.schema.equals(schema) else table.cast(schema))
            row += table.num_rows
            if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                pending = _flush(writer, pending, final=False)
        spans.append([unit, first, row - first])
    if writer is None or (skip_empty and row == 0):
        if writer is not None:
            writer.close()
        return 0
    if pending and row:
        _flush(writer, pending, final=True)
    writer.add_key_value_metadata({PACK_UNITS: json.dumps(spans)})
    writer.close()
    storage.write_bytes_atomic(store.path(folder, name), buf.getvalue())
    return row


def staged_tables(store: OutputStore, folder: str, names: list[str]) -> Iterator[pa.Table]:
    """The staged parts ``names`` of ``folder``, read one at a time."""
    for part in names:
        yield store.read_part(folder, part)


def pack_units(out: str, units: list[str], listing: StoreListing | None = None) -> dict:
    """Pack the committed, consecutive ``units`` of the output ``out`` (the three steps of the module docstring);
    ``{"pack": name, "units": n, "segments": rows, "files": rows}``. A unit that is not committed is refused
    (``ValueError``): a pack never takes rows that are not committed."""
    store = OutputStore(out)
    listing = listing or store.listing()
    staged = {folder: listing.units(folder) for folder in (SEGMENTS_DIR, FILES_DIR, PIECES_DIR)}
    missing = [u for u in units if not is_end_of(u, staged[FILES_DIR].get(u, ()))]
    if missing:
        raise ValueError(f"cannot pack {len(missing)} unit(s) of {out} without an end part: {missing[:3]}")
    name = pack_name(units[0], units[-1])
    segments, files = (write_pack(store, folder, name, [(u, staged_tables(store, folder, staged[folder].get(u, [])))
                                                        for u in units], skip_empty=folder == SEGMENTS_DIR)
                       for folder in (SEGMENTS_DIR, FILES_DIR))
    for folder in (SEGMENTS_DIR, FILES_DIR, PIECES_DIR):
        for unit in units:
            for part in staged[folder].get(unit, ()):
                store.remove_part(folder, part)
    return {"pack": name, "units": len(units), "segments": segments, "files": files}
