"""What ``das browse`` reads of a run, and how (``RunCatalogue``): never all rows at once, never all embeddings.

- Opening it reads the manifest and one listing of the output; nothing else.
- A file is found by its id through the *directory*: the ``file_id`` column of every ``files`` part, kept as
  Arrow strings with the unit of each part (about 30 bytes a file), read once, at the first need.
- A file's timeline, a window's times and its embedding are read from that file's unit only (its staged
  parts, or the row groups of its pack that hold it).
- A label's best windows read the ``label`` and ``score`` columns unit group by unit group, keeping the best
  rows only; the other columns of those rows are read afterwards, from their groups alone.

Every read goes through das's reader (``das_core.output.store``), so packs, staged parts and a rescore run's
borrowed embeddings read as every other command reads them.
"""

from __future__ import annotations

import bisect
import heapq
import threading
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from das_core.io import storage
from das_core.output.format import FILES_DIR, SEGMENTS_DIR
from das_core.output.manifest import RunManifest
from das_core.output.store import OutputStore
from das_core.output.tables import embeddings_to_numpy

WINDOW_COLUMNS = ["file_id", "path", "segment", "start_s", "end_s", "label", "score"]
FILE_COLUMNS = ["file_id", "path", "status", "error", "n_segments", "duration_s", "label", "score"]


@dataclass(frozen=True)
class FileRow:
    """One ``files`` row as the browser shows it, with the unit that holds it."""

    file_id: str
    unit: str
    path: str
    status: str
    error: str | None
    n_segments: int
    duration_s: float | None
    label: str | None


@dataclass(frozen=True)
class FileDirectory:
    """Every file id of a run, sorted, with the unit of each: a lookup is a binary search (about 20 reads of
    the Arrow array at 10^6 files), and the directory holds the ids' bytes and 4 bytes a file."""

    ids: pa.Array                  # sorted
    unit_numbers: np.ndarray       # int32: the unit of each id, as an index into units
    units: list[str]

    @classmethod
    def of(cls, chunks: list[pa.Array], unit_of_row: list[np.ndarray], units: list[str]) -> FileDirectory:
        """The directory of the ids in ``chunks`` (in unit order) whose units are ``unit_of_row``."""
        ids = pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
        order = pc.sort_indices(ids)
        numbers = np.concatenate(unit_of_row) if unit_of_row else np.zeros(0, np.int32)
        return cls(ids.take(order), numbers[order.to_numpy()], units)

    def unit_of(self, file_id: str) -> str | None:
        """The unit that holds ``file_id``, or None."""
        at = bisect.bisect_left(self.ids, file_id, key=lambda scalar: scalar.as_py())
        if at < len(self.ids) and self.ids[at].as_py() == file_id:
            return self.units[int(self.unit_numbers[at])]
        return None


class RunCatalogue:
    """Read access to one label output or rescore run folder (see the module)."""

    def __init__(self, uri: str, manifest: RunManifest):
        self.uri = storage.absolute(uri)
        self.manifest = manifest
        self.store = OutputStore(self.uri)
        self.listing = self.store.listing()
        self.units = self.listing.committed_units()
        self._directory: FileDirectory | None = None
        self._lock = threading.Lock()
        self.directory_s: float | None = None      # how long reading the directory took, once read

    @property
    def labels(self) -> list[str]:
        """The classes of the run's cache, as its manifest lists them."""
        return list((self.manifest.cache or {}).get("labels") or [])

    @property
    def windows(self) -> int | None:
        """The windows the manifest counts (None if it does not say)."""
        return self.manifest.counts.get("segments")

    def directory(self) -> FileDirectory:
        """The ``FileDirectory`` of the committed files: read once, one group (a pack or a staged unit) at a
        time, the ``file_id`` column only."""
        with self._lock:
            if self._directory is None:
                started = time.monotonic()
                chunks, unit_of_row, units = [], [], []
                for _, group in self.listing.groups(self.units):
                    for unit, table in self.store.read_by_unit(group, FILES_DIR, self.listing, ["file_id"]):
                        if table is not None and len(table):
                            chunks += table.column("file_id").chunks
                            unit_of_row.append(np.full(len(table), len(units), np.int32))
                            units.append(unit)
                self._directory = FileDirectory.of(chunks, unit_of_row, units)
                self.directory_s = time.monotonic() - started
            return self._directory

    def unit_of(self, file_id: str) -> str | None:
        """The committed unit that holds ``file_id``'s row, or None for an id the run does not have."""
        return self.directory().unit_of(file_id) if isinstance(file_id, str) else None

    def file_row(self, file_id: str) -> FileRow | None:
        """The ``files`` row of ``file_id`` (read from its unit alone), or None for an unknown id."""
        unit = self.unit_of(file_id)
        if unit is None:
            return None
        tables = self.store.read_units([unit], FILES_DIR, self.listing, FILE_COLUMNS)
        rows = [r for t in tables for r in t.filter(pc.equal(t.column("file_id"), file_id)).to_pylist()]
        if not rows:
            return None
        row = rows[0]
        return FileRow(file_id, unit, row["path"], row["status"], row["error"], row["n_segments"] or 0,
                       row["duration_s"], row["label"])

    def file_windows(self, file_id: str, columns: list[str] | None = None) -> pa.Table:
        """The windows of ``file_id`` in time order (``WINDOW_COLUMNS`` unless ``columns``); none for an
        unknown id."""
        columns = columns or WINDOW_COLUMNS
        unit = self.unit_of(file_id)
        wanted = sorted(set(columns) | {"file_id", "segment"})
        if unit is None:
            return pa.table({name: pa.array([], pa.string()) for name in columns})
        if "embedding" in wanted:
            table = self.store.read_segments([unit], wanted)
        else:
            tables = self.store.read_units([unit], SEGMENTS_DIR, self.listing, wanted)
            table = pa.concat_tables(tables, promote_options="permissive") if tables else None
        if table is None or not len(table):
            return pa.table({name: pa.array([], pa.string()) for name in columns})
        mine = table.filter(pc.equal(table.column("file_id"), file_id)).sort_by("segment")
        return mine.select(columns)

    def window(self, file_id: str, segment: int) -> dict | None:
        """One window's ``WINDOW_COLUMNS`` as a dict, or None when the run has no such window."""
        table = self.file_windows(file_id)
        rows = table.filter(pc.equal(table.column("segment"), segment)).to_pylist() if len(table) else []
        return rows[0] if rows else None

    def embedding_of(self, file_id: str, segment: int) -> np.ndarray | None:
        """The stored embedding of one window, as float32 ``(d,)``; None when the run has no such window."""
        table = self.file_windows(file_id, ["segment", "embedding"])
        if not len(table):
            return None
        table = table.filter(pc.equal(table.column("segment"), segment))
        return embeddings_to_numpy(table.column("embedding"))[0].astype(np.float32) if len(table) else None

    def best_windows(self, label: str | None, min_score: float | None, top: int) -> list[dict]:
        """The ``top`` highest-scoring windows (of ``label`` as their DAS top label, or of any label), scoring
        at least ``min_score``, best first; ties by file id and window. Two passes: ``label`` and ``score`` of
        every group, then the other columns of the groups that hold the best rows."""
        best: list[tuple] = []             # a min-heap of (score, -group, -row): the best `top` so far
        groups = self.listing.groups(self.units)
        for number, (_, units) in enumerate(groups):
            tables = self.store.read_units(units, SEGMENTS_DIR, self.listing, ["label", "score"])
            if not tables:
                continue
            table = pa.concat_tables(tables, promote_options="permissive")
            keep = pc.is_valid(table.column("score"))
            if label is not None:
                keep = pc.and_(keep, pc.equal(table.column("label"), label))
            if min_score is not None:
                keep = pc.and_(keep, pc.greater_equal(table.column("score"), min_score))
            rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
            scores = table.column("score").to_numpy()[rows] if len(rows) else np.zeros(0)
            for i in np.argsort(-scores, kind="stable")[:top]:
                item = (float(scores[i]), -number, -int(rows[i]))
                if len(best) < top:
                    heapq.heappush(best, item)
                elif item > best[0]:
                    heapq.heapreplace(best, item)
        return self._rows_of(groups, sorted(best, reverse=True))

    def _rows_of(self, groups: list, picked: list[tuple]) -> list[dict]:
        """The ``WINDOW_COLUMNS`` rows of ``picked`` ((score, -group, -row) items), in that order."""
        by_group: dict[int, pa.Table] = {}
        out = []
        for _, group, row in picked:
            if -group not in by_group:
                tables = self.store.read_units(groups[-group][1], SEGMENTS_DIR, self.listing, WINDOW_COLUMNS)
                by_group[-group] = pa.concat_tables(tables, promote_options="permissive")
            out.append(by_group[-group].slice(-row, 1).to_pylist()[0])
        return out

    def annotate(self, hits: list[dict]) -> list[dict]:
        """``hits`` (with ``file_id`` and ``start_s``) with the window's ``segment``, DAS ``label`` and its
        ``label_score``; the units that hold them are read together (each pack once)."""
        units = sorted({unit for hit in hits if (unit := self.unit_of(hit["file_id"])) is not None})
        columns = ["file_id", "segment", "start_s", "label", "score"]        # the hit has the rest
        tables = self.store.read_units(units, SEGMENTS_DIR, self.listing, columns) if units else []
        windows = {}
        if tables:
            table = pa.concat_tables(tables, promote_options="permissive")
            wanted = pa.array(sorted({hit["file_id"] for hit in hits}), pa.string())
            table = table.filter(pc.is_in(table.column("file_id"), wanted))
            windows = {(row["file_id"], row["start_s"]): row for row in table.to_pylist()}
        out = []
        for hit in hits:
            window = windows.get((hit["file_id"], hit["start_s"]), {})
            out.append({**hit, "segment": window.get("segment"), "label": window.get("label"),
                        "label_score": window.get("score")})
        return out
