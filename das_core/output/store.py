"""Reading and writing the parts of one output (``OutputStore``), listing them, and reading stored embeddings.

What the parts are and when a unit counts as committed: ``das_core.output.format``.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from das_core.errors import EmbeddingsMismatch
from das_core.io import storage
from das_core.output.format import (
    FILES_DIR,
    FILES_SCHEMA,
    LEGACY_PART,
    PACK_UNITS,
    PIECES_DIR,
    SEGMENTS_DIR,
    STAGED_SUFFIX,
    UNIT_TABLE_DIR,
    UNIT_TABLE_FILE,
    is_end_of,
    parse_pack_name,
    parse_part_name,
    segments_schema,
    staged_bytes,
    table_to_bytes,
    unit_range,
)
from das_core.output.manifest import MANIFEST, RunManifest


def pack_spans(meta: pq.FileMetaData) -> dict[str, tuple[int, int]]:
    """A pack's units, each with its first row and its row count (its ``das.units`` metadata)."""
    return {unit: (first, rows) for unit, first, rows in json.loads((meta.metadata or {})[PACK_UNITS.encode()])}


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    """The Parquet file at ``uri`` (local or s3://), read whole (only ``columns`` if given)."""
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=columns)


def read_staged(uri: str, columns: list[str] | None = None) -> pa.Table:
    """The Arrow IPC file (a staged part) at ``uri``, read whole (only ``columns`` if given)."""
    table = pa.ipc.open_file(pa.BufferReader(storage.read_bytes(uri))).read_all()
    return table if columns is None else table.select(columns)


@dataclass
class StoreListing:
    """Part names per folder from one listing of an output (each storage call is a round trip on S3).

    Units are committed by their ``end`` part (staged) or by a ``files`` pack covering them (packed); a packed
    unit's rows are read from its pack, never from staged parts it may still have (a pack interrupted while
    deleting them). See ``das_core.output.format``.
    """

    names: dict[str, set[str]]            # never changed once listed: what is derived from it is kept
    _by_unit: dict[str, dict[str, list[str]]] = field(default_factory=dict, repr=False, compare=False)

    def units(self, folder: str) -> dict[str, list[str]]:
        """Staged part names of ``folder`` by unit (packs and parts of other names left out); worked out once
        per folder (``parts_of`` asks for every unit: at 10^6 windows, 15 625 sorts of every name)."""
        if folder not in self._by_unit:
            by_unit: dict[str, list[str]] = {}
            for name in sorted(self.names.get(folder, ())):
                parsed = parse_part_name(name)
                if parsed and not parse_pack_name(name):
                    by_unit.setdefault(parsed[0], []).append(name)
            self._by_unit[folder] = by_unit
        return self._by_unit[folder]

    def packs(self, folder: str = FILES_DIR) -> list[tuple[str, str, str]]:
        """``(first, last, name)`` of the packs in ``folder``, in unit order (``files`` packs: the packed ranges)."""
        return sorted((*parsed, name) for name in self.names.get(folder, ()) if (parsed := parse_pack_name(name)))

    @functools.cached_property
    def _packed(self) -> dict[str, str]:
        return {unit: name for first, last, name in self.packs(FILES_DIR) for unit in unit_range(first, last)}

    def packed_units(self) -> dict[str, str]:
        """Every packed unit and the name of its pack (the same name in ``segments/`` and ``files/``); worked
        out once (``parts_of`` asks for every unit). Not to be changed by the caller."""
        return self._packed

    def committed_units(self) -> list[str]:
        """Units whose ``end`` part exists or that a ``files`` pack covers (the commit rule)."""
        staged = (u for u, names in self.units(FILES_DIR).items() if is_end_of(u, names))
        return sorted(set(staged) | set(self.packed_units()))

    def uncommitted_units(self) -> list[str]:
        """Units with parts but no ``end`` part nor pack: still being written, or left by an interrupted run."""
        return sorted((set(self.units(SEGMENTS_DIR)) | set(self.units(FILES_DIR))) - set(self.committed_units()))

    def unpacked_committed(self) -> list[str]:
        """Committed units not in a pack yet (staged: what a pack would take)."""
        packed = self.packed_units()
        return [u for u in self.committed_units() if u not in packed]

    def orphan_packs(self) -> list[str]:
        """``segments`` packs without their ``files`` pack: left by a pack that stopped after its first write."""
        return [name for *_, name in self.packs(SEGMENTS_DIR) if name not in self.names.get(FILES_DIR, ())]

    def stale_parts(self) -> list[tuple[str, str]]:
        """``(folder, name)`` of what readers ignore and a writer deletes: orphan ``segments`` packs, and staged
        parts of packed units (left by a pack that stopped while deleting them)."""
        packed = self.packed_units()
        stale = [(SEGMENTS_DIR, name) for name in self.orphan_packs()]
        for folder in (SEGMENTS_DIR, FILES_DIR, PIECES_DIR):
            stale += [(folder, name) for unit, names in self.units(folder).items() if unit in packed for name in names]
        return stale

    def parts_of(self, unit: str, folder: str) -> list[str]:
        """The part names that hold ``unit``'s rows in ``folder``: its pack (which holds other units too: read
        it with ``OutputStore.read_units``), else its staged parts."""
        pack = self.packed_units().get(unit)
        if pack is not None:
            return [pack] if pack in self.names.get(folder, ()) else []
        return self.units(folder).get(unit, [])

    def groups(self, units: list[str] | None = None) -> list[tuple[str, list[str]]]:
        """The committed ``units`` (default: all) by physical source, in unit order: ``(pack name, its units
        wanted)`` for packed units (a name ending ``.parquet``), ``(unit, [unit])`` for each staged one. One task
        per group reads each file once."""
        packed = self.packed_units()
        groups: dict[str, list[str]] = {}
        for unit in self.committed_units() if units is None else sorted(units):
            groups.setdefault(packed.get(unit, unit), []).append(unit)
        return list(groups.items())

    def has_parts(self) -> bool:
        """Whether any das part is here (other files, e.g. a user's, do not count)."""
        return any(parse_part_name(n) or LEGACY_PART.match(n) for names in self.names.values() for n in names)

    def legacy_parts(self) -> list[str]:
        """Parquet parts that do not follow the unit naming (das 0.1 output)."""
        return sorted(n for f in (FILES_DIR, SEGMENTS_DIR) for n in self.names.get(f, ()) if not parse_part_name(n))


class OutputStore:
    """Reads and writes parts under one output URI (see the module docstring)."""

    def __init__(self, uri: str):
        self.uri = storage.absolute(uri)       # listed names are absolute: so must the root they are cut from be

    def path(self, *parts: str) -> str:
        """The URI of ``parts`` under the output."""
        return storage.join(self.uri, *parts)

    def listing(self) -> StoreListing:
        """One listing of the output's part folders (one round trip per folder on S3)."""
        names: dict[str, set[str]] = {FILES_DIR: set(), SEGMENTS_DIR: set(), PIECES_DIR: set()}
        if storage.exists(self.uri):
            root = self.uri.rstrip("/") + "/"
            for u in storage.list_files(self.uri, (".parquet", STAGED_SUFFIX)):
                folder, _, name = u[len(root):].partition("/")
                if folder in names and "/" not in name:
                    names[folder].add(name)
        return StoreListing(names)

    def has_output(self) -> bool:
        """Whether das wrote here: any das part, or a ``_manifest.json``."""
        return self.listing().has_parts() or storage.exists(self.path(MANIFEST))

    def remove_all(self) -> int:
        """Delete what das wrote here and nothing else (``--overwrite``); how many files were deleted.

        das's own files are named by das's records and patterns: the parts (``part-<unit>-<tag>.parquet``, and
        das 0.1's ``part-<20 hex digits>.parquet``) in segments/, files/ and pieces/ and the temporary files of
        its writers there, the unit table, the report files the last report recorded
        (``das_core.output.report_files``), the files of ``das index`` (``das_core.output.index_files``) and
        ``_manifest.json``. Anything else, a user's file under the same folders included, stays; a folder goes only
        if that leaves it empty.
        """
        from das_core.output.index_files import remove_index
        from das_core.output.report_files import remove_report

        removed = 0
        for folder, names in self.listing().names.items():
            for name in sorted(names):
                if parse_part_name(name) or LEGACY_PART.match(name):
                    storage.remove(self.path(folder, name))
                    removed += 1
            removed += storage.remove_temporaries(self.path(folder))
        removed += remove_report(self.uri)
        removed += remove_index(self.uri)
        for own in (self.path(UNIT_TABLE_DIR, UNIT_TABLE_FILE), self.path(MANIFEST)):
            if storage.exists(own):
                storage.remove(own)
                removed += 1
        for folder in (SEGMENTS_DIR, FILES_DIR, PIECES_DIR, UNIT_TABLE_DIR):
            storage.remove_empty_folder(self.path(folder))
        return removed

    def remove_units(self, units: set[str], listing: StoreListing) -> int:
        """Delete every staged part of ``units`` (an interrupted unit is redone whole); how many were deleted.
        Packs are never deleted here (``remove_stale`` deletes orphan ones)."""
        removed = 0
        for folder, names in listing.names.items():
            for name in sorted(names):
                parsed = parse_part_name(name)
                if parsed and parsed[0] in units and not parse_pack_name(name):
                    storage.remove(self.path(folder, name))
                    removed += 1
        return removed

    def remove_stale(self, listing: StoreListing) -> int:
        """Delete what readers ignore (``StoreListing.stale_parts``); how many. Only with no pack running."""
        stale = listing.stale_parts()
        for folder, name in stale:
            storage.remove(self.path(folder, name))
        return len(stale)

    def write_part(self, folder: str, name: str, table: pa.Table) -> None:
        """Write ``table`` as the part ``folder/name``, atomically (the commit rule's first half)."""
        data = staged_bytes(table) if name.endswith(STAGED_SUFFIX) else table_to_bytes(table)
        storage.write_bytes_atomic(self.path(folder, name), data)

    def remove_part(self, folder: str, name: str) -> None:
        """Delete the part ``folder/name``."""
        storage.remove(self.path(folder, name))

    def read_part(self, folder: str, name: str, columns: list[str] | None = None) -> pa.Table:
        """The part ``folder/name`` (only ``columns`` if given): a staged Arrow IPC part or a Parquet one."""
        read = read_staged if name.endswith(STAGED_SUFFIX) else read_parquet
        return read(self.path(folder, name), columns)

    def read_pack(self, folder: str, name: str, units: list[str] | None = None,
                  columns: list[str] | None = None) -> pa.Table:
        """The rows of ``units`` (default: all) of the pack ``folder/name``, in unit order; only the row groups
        that hold them are read (the pack's ``das.units`` metadata)."""
        with storage.open_input(self.path(folder, name)) as f:
            pf = pq.ParquetFile(f)
            spans = pack_spans(pf.metadata)
            if units is None or set(units) >= set(spans):
                return pf.read(columns=columns)
            starts = [0]
            for g in range(pf.metadata.num_row_groups):
                starts.append(starts[-1] + pf.metadata.row_group(g).num_rows)
            tables = []
            for unit in units:
                first, rows = spans.get(unit, (0, 0))
                groups = [g for g in range(len(starts) - 1) if starts[g] < first + rows and starts[g + 1] > first]
                if groups:
                    table = pf.read_row_groups(groups, columns=columns)
                    tables.append(table.slice(first - starts[groups[0]], rows))
            return pa.concat_tables(tables) if tables else pf.schema_arrow.empty_table().select(
                columns or pf.schema_arrow.names)

    def read_units(self, units: list[str], folder: str, listing: StoreListing | None = None,
                   columns: list[str] | None = None) -> list[pa.Table]:
        """The rows of the committed ``units`` in ``folder``, in unit order, each pack read once. A staged part
        gone since ``listing`` (packed in between) makes it list again, once, and read the pack."""
        try:
            return self._read_units(units, folder, listing or self.listing(), columns)
        except FileNotFoundError:
            return self._read_units(units, folder, self.listing(), columns)

    def _read_units(self, units: list[str], folder: str, listing: StoreListing, columns: list[str] | None
                    ) -> list[pa.Table]:
        packs, tables = set(listing.packed_units().values()), []
        for source, wanted in listing.groups(units):
            if source in packs:
                if source in listing.names.get(folder, ()):       # no segments pack: its units have no windows
                    tables.append(self.read_pack(folder, source, wanted, columns))
            else:
                tables += [self.read_part(folder, name, columns) for name in listing.units(folder).get(source, [])]
        return tables

    def read_by_unit(self, units: list[str], folder: str, listing: StoreListing | None = None,
                     columns: list[str] | None = None) -> list[tuple[str, pa.Table | None]]:
        """``(unit, its rows in folder)`` for each committed unit of ``units``, in unit order, each pack read once
        (None for a unit without rows there). Like ``read_units``, lists again once if a part vanished."""
        try:
            return self._read_by_unit(units, folder, listing or self.listing(), columns)
        except FileNotFoundError:
            return self._read_by_unit(units, folder, self.listing(), columns)

    def _read_by_unit(self, units: list[str], folder: str, listing: StoreListing, columns: list[str] | None
                      ) -> list[tuple[str, pa.Table | None]]:
        packs, out = set(listing.packed_units().values()), []
        for source, wanted in listing.groups(units):
            if source in packs:
                if source not in listing.names.get(folder, ()):
                    out += [(unit, None) for unit in wanted]
                    continue
                with storage.open_input(self.path(folder, source)) as f:
                    pf = pq.ParquetFile(f)
                    spans, table = pack_spans(pf.metadata), pf.read(columns=columns)
                out += [(unit, table.slice(*spans[unit]) if unit in spans else None) for unit in wanted]
            else:
                parts = [self.read_part(folder, name, columns) for name in listing.units(folder).get(source, [])]
                out.append((source, pa.concat_tables(parts, promote_options="permissive") if parts else None))
        return out

    def read_unit(self, unit: str, folder: str, listing: StoreListing, columns: list[str] | None = None
                  ) -> list[pa.Table]:
        """The rows of ``unit`` in ``folder`` (its parts, or its slice of a pack), per ``listing``."""
        return self.read_units([unit], folder, listing, columns)

    def _read_committed(self, folder: str, units: list[str] | None, columns: list[str] | None,
                        schema: pa.Schema) -> pa.Table:
        listing = self.listing()
        wanted = listing.committed_units() if units is None else units
        tables = self.read_units(wanted, folder, listing, columns)
        if not tables:
            return (schema if columns is None else pa.schema([schema.field(c) for c in columns])).empty_table()
        return pa.concat_tables(tables, promote_options="permissive")

    def read_files(self, units: list[str] | None = None, columns: list[str] | None = None) -> pa.Table:
        """The ``files`` rows of the committed units (or of ``units``)."""
        return self._read_committed(FILES_DIR, units, columns, FILES_SCHEMA)

    def read_segments(self, units: list[str] | None = None, columns: list[str] | None = None) -> pa.Table:
        """The ``segments`` rows of the committed units (or of ``units``).

        A ``das rescore`` run that references its label output's embeddings (its manifest's ``embeddings``
        without ``copied``) gets them from there, unit by unit, in its own row order.
        """
        source = self.embedding_source()
        if source is None or (columns is not None and "embedding" not in columns):
            return self._read_committed(SEGMENTS_DIR, units, columns, segments_schema())
        listing = self.listing()
        wanted = listing.committed_units() if units is None else units
        own = sorted({c for c in (columns or segments_schema().names) if c != "embedding"} | {"file_id", "segment"})
        src = OutputStore(source)
        src_listing = src.listing()
        tables = []
        for _, group in listing.groups(wanted):
            parts = self.read_units(group, SEGMENTS_DIR, listing, own)
            if parts:
                tables.append(with_embeddings(pa.concat_tables(parts), src, src_listing, group))
        if not tables:
            return self._read_committed(SEGMENTS_DIR, [], columns, segments_schema())
        table = pa.concat_tables(tables, promote_options="permissive")
        return table.select(columns or [n for n in segments_schema().names if n in table.column_names])

    def embedding_source(self) -> str | None:
        """The label output whose embeddings this (rescore) output references, or None."""
        manifest = RunManifest.read(self.uri) or {}
        emb = manifest.get("embeddings") or {}
        return emb.get("source") if emb.get("source") and not emb.get("copied") else None


def open_embeddings(uri: str, ours: str | None, ours_are: str, needed_by: str, remedy: str) -> RunManifest:
    """The manifest of the label output (or rescore run folder) at ``uri``, whose stored embeddings are to be
    read, after refusing embeddings of another checkpoint than ``ours`` (a fingerprint).

    ``ours_are`` introduces ``ours`` in the message ("--checkpoint X is"); ``remedy`` ends it, with
    ``{made_with}`` standing for the checkpoint the embeddings were made with. A folder without a manifest,
    or one that records no checkpoint fingerprint, is refused too (``ManifestError``).
    """
    manifest = RunManifest.require(uri, needed_by)
    recorded = manifest.require_checkpoint(uri)
    if recorded != ours:
        made_with = manifest.checkpoint_uri or "another checkpoint"
        raise EmbeddingsMismatch(f"the embeddings in {uri} were made with checkpoint {made_with} ({recorded}), but "
                                 f"{ours_are} {ours}: " + remedy.format(made_with=made_with))
    return manifest


def with_embeddings(table: pa.Table, source: OutputStore, listing: StoreListing, units: str | list[str]
                    ) -> pa.Table:
    """``table`` (the re-scored windows of ``units``, one or a list) with the embedding column of the same
    windows in ``source`` (rows sorted by file and window)."""
    units = [units] if isinstance(units, str) else list(units)
    keys = [("file_id", "ascending"), ("segment", "ascending")]
    table = table.sort_by(keys)
    parts = source.read_units(units, SEGMENTS_DIR, listing, ["file_id", "segment", "embedding"])
    stored = (pa.concat_tables(parts) if parts else
              pa.table({"file_id": pa.array([], pa.string()), "segment": pa.array([], pa.int32()),
                        "embedding": pa.array([], pa.list_(pa.float16()))})).sort_by(keys)
    if not (stored.column("file_id").equals(table.column("file_id"))
            and stored.column("segment").equals(table.column("segment"))):
        where = units[0] if len(units) == 1 else f"{units[0]}..{units[-1]}"
        raise ValueError(f"{source.uri}: unit {where} no longer holds the windows this run re-scored")
    return table.append_column("embedding", stored.column("embedding"))
