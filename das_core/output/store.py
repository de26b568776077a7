"""Reading and writing the parts of one output (``OutputStore``), listing them, and reading stored embeddings.

What the parts are and when a unit counts as committed: ``das_core.output.format``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from das_core.errors import EmbeddingsMismatch
from das_core.io import storage
from das_core.output.format import (
    END_TAG,
    FILES_DIR,
    FILES_SCHEMA,
    LEGACY_PART,
    PIECES_DIR,
    SEGMENTS_DIR,
    UNIT_TABLE_DIR,
    UNIT_TABLE_FILE,
    parse_part_name,
    part_name,
    segments_schema,
    table_to_bytes,
)
from das_core.output.manifest import MANIFEST, RunManifest


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    """The Parquet file at ``uri`` (local or s3://), read whole (only ``columns`` if given)."""
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=columns)


@dataclass
class StoreListing:
    """Part names per folder from one listing of an output (each storage call is a round trip on S3)."""

    names: dict[str, set[str]]

    def units(self, folder: str) -> dict[str, list[str]]:
        """Part names of ``folder`` by unit (parts of other names left out)."""
        by_unit: dict[str, list[str]] = {}
        for name in sorted(self.names.get(folder, ())):
            parsed = parse_part_name(name)
            if parsed:
                by_unit.setdefault(parsed[0], []).append(name)
        return by_unit

    def committed_units(self) -> list[str]:
        """Units whose ``end`` part exists (the commit rule)."""
        return sorted(u for u, names in self.units(FILES_DIR).items() if part_name(u, END_TAG) in names)

    def uncommitted_units(self) -> list[str]:
        """Units with parts but no ``end`` part: still being written, or left by an interrupted run."""
        return sorted((set(self.units(SEGMENTS_DIR)) | set(self.units(FILES_DIR))) - set(self.committed_units()))

    def parts_of(self, unit: str, folder: str) -> list[str]:
        """The part names of ``unit`` in ``folder``."""
        return self.units(folder).get(unit, [])

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
            for u in storage.list_files(self.uri, (".parquet",)):
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
        """Delete every part of ``units`` (an interrupted unit is redone whole); how many were deleted."""
        removed = 0
        for folder, names in listing.names.items():
            for name in sorted(names):
                parsed = parse_part_name(name)
                if parsed and parsed[0] in units:
                    storage.remove(self.path(folder, name))
                    removed += 1
        return removed

    def write_part(self, folder: str, name: str, table: pa.Table) -> None:
        """Write ``table`` as the part ``folder/name``, atomically (the commit rule's first half)."""
        storage.write_bytes_atomic(self.path(folder, name), table_to_bytes(table))

    def remove_part(self, folder: str, name: str) -> None:
        """Delete the part ``folder/name``."""
        storage.remove(self.path(folder, name))

    def read_part(self, folder: str, name: str, columns: list[str] | None = None) -> pa.Table:
        """The part ``folder/name`` (only ``columns`` if given)."""
        return read_parquet(self.path(folder, name), columns)

    def read_unit(self, unit: str, folder: str, listing: StoreListing, columns: list[str] | None = None
                  ) -> list[pa.Table]:
        """The parts of ``unit`` in ``folder``, per ``listing``, each read."""
        return [self.read_part(folder, name, columns) for name in listing.parts_of(unit, folder)]

    def _read_committed(self, folder: str, units: list[str] | None, columns: list[str] | None,
                        schema: pa.Schema) -> pa.Table:
        listing = self.listing()
        wanted = listing.committed_units() if units is None else units
        tables = [t for u in wanted for t in self.read_unit(u, folder, listing, columns)]
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
        own = [c for c in (columns or segments_schema().names) if c != "embedding"]
        src = OutputStore(source)
        src_listing = src.listing()
        tables = [with_embeddings(t, src, src_listing, u)
                  for u in wanted for t in self.read_unit(u, SEGMENTS_DIR, listing, sorted(set(own) | {
                      "file_id", "segment"}))]
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


def with_embeddings(table: pa.Table, source: OutputStore, listing: StoreListing, unit: str) -> pa.Table:
    """``table`` (one unit's re-scored windows) with the embedding column of the same windows in ``source``."""
    keys = [("file_id", "ascending"), ("segment", "ascending")]
    table = table.sort_by(keys)
    parts = source.read_unit(unit, SEGMENTS_DIR, listing, ["file_id", "segment", "embedding"])
    stored = pa.concat_tables(parts).sort_by(keys)
    if not (stored.column("file_id").equals(table.column("file_id"))
            and stored.column("segment").equals(table.column("segment"))):
        raise ValueError(f"{source.uri}: unit {unit} no longer holds the windows this run re-scored")
    return table.append_column("embedding", stored.column("embedding"))
