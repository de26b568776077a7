"""The on-disk format of ``das label`` / ``das rescore`` output: the one module that knows it.

Layout under an output URI::

    segments/part-<unit>-c<chunk>.parquet   one row per 10 s window (embedding included)
    files/part-<unit>-c<chunk>.parquet      one row per input file held whole by that chunk, ok or error
    files/part-<unit>-end.parquet           the unit's commit mark: rows of its files that span chunks
    pieces/part-<unit>-c<chunk>.parquet     transient: per-chunk maxima of spanning files (deleted at the end)
    _work/units.parquet                     the work manifest (das_core.label.units)
    _manifest.json                          settings, fingerprints, counts and run history

Commit rule. Each part appears atomically (rename, or a single S3 PUT). A
chunk's ``segments`` part is written before its ``files`` part, and a unit's
``end`` part only once every chunk of the unit is written, so a ``files`` row
always means that the file's windows are all there. A unit is **committed**
when its ``end`` part exists: readers (rescore, evaluate, search) read only
committed units, and ``--resume`` redoes every unit that is not, after
deleting whatever parts it left. Names derive from the unit and chunk, which
the work manifest and the audio fix, so a retried unit overwrites instead of
duplicating. ``das rescore`` writes ``part-<unit>-all`` (segments) and
``part-<unit>-end`` (files) under the same rule.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from das_core.errors import EmbeddingsMismatch
from das_core.io import storage
from das_core.output.manifest import MANIFEST, RunManifest
from das_core.scoring.cache import DriftCache
from das_core.scoring.scorer import Labelled, label_files

SEGMENTS_DIR = "segments"
FILES_DIR = "files"
PIECES_DIR = "pieces"
FORMAT_VERSION = 2          # 1: das 0.1 (parts named by a hash of their file ids, no units)
END_TAG = "end"

OK = "ok"
ERROR = "error"

EMBEDDING_TYPES = {"float16": pa.float16(), "float32": pa.float32()}


def _label_fields() -> list[pa.Field]:
    return [
        pa.field("label", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("top_k_labels", pa.list_(pa.string())),
        pa.field("top_k_scores", pa.list_(pa.float32())),
        pa.field("zs_label", pa.string()),
        pa.field("zs_score", pa.float32()),
        pa.field("top_k_probs", pa.list_(pa.float32())),     # with --probabilities, else null
    ]


def segments_schema(embedding_dtype: str = "float16") -> pa.Schema:
    return pa.schema([
        pa.field("file_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("segment", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        *_label_fields(),
        pa.field("embedding", pa.list_(EMBEDDING_TYPES[embedding_dtype])),
        pa.field("snr_db", pa.float64()),
        pa.field("seed", pa.int64()),
        pa.field("noise_source", pa.string()),
    ])


def files_schema(embedding_dtype: str = "float16") -> pa.Schema:
    return pa.schema([
        pa.field("file_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),
        pa.field("n_segments", pa.int32(), nullable=False),
        pa.field("duration_s", pa.float64()),
        pa.field("sample_rate", pa.int32()),
        pa.field("channels", pa.int32()),
        pa.field("decoder", pa.string()),
        pa.field("key", pa.string()),              # WebDataset key / Parquet audio path of a shard member
        pa.field("metadata", pa.string()),         # the sample's .json, with --keep-metadata
        *_label_fields(),
        pa.field("embedding", pa.list_(EMBEDDING_TYPES[embedding_dtype])),   # normalised mean of its windows
    ])


FILES_SCHEMA = files_schema()


def _null_mask(n: int, rows: np.ndarray) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[rows] = False
    return mask


def _spread(values: np.ndarray, n: int, rows: np.ndarray) -> np.ndarray:
    """``values`` placed at ``rows`` of an array of length ``n`` (zeros elsewhere)."""
    out = np.zeros((n,) + values.shape[1:], dtype=values.dtype)
    out[rows] = values
    return out


def _lists(values: pa.Array, n: int, rows: np.ndarray, k: int, mask: np.ndarray) -> pa.Array:
    lengths = np.zeros(n, dtype=np.int32)
    lengths[rows] = k
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(mask))


def labelled_columns(lab: Labelled | None, n: int, rows: np.ndarray | None = None) -> dict[str, pa.Array]:
    """Arrow columns for ``lab`` placed at positions ``rows`` of ``n`` (nulls elsewhere), built without a Python
    loop over rows."""
    if lab is None:
        return {f.name: pa.nulls(n, type=f.type) for f in _label_fields()}
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    mask = _null_mask(n, rows)
    names = pa.array(lab.names, type=pa.string())
    k = lab.top_k_index.shape[1]

    def name_column(index: np.ndarray) -> pa.Array:
        return names.take(pa.array(_spread(index.astype(np.int64), n, rows), mask=mask))

    return {
        "label": name_column(lab.top_k_index[:, 0]),
        "score": pa.array(_spread(lab.score.astype(np.float32), n, rows), mask=mask, type=pa.float32()),
        "top_k_labels": _lists(names.take(pa.array(lab.top_k_index.reshape(-1).astype(np.int64))), n, rows, k,
                               mask),
        "top_k_scores": _lists(pa.array(lab.top_k_scores.reshape(-1).astype(np.float32), type=pa.float32()), n,
                               rows, k, mask),
        "zs_label": name_column(lab.zs_index),
        "zs_score": pa.array(_spread(lab.zs_score.astype(np.float32), n, rows), mask=mask, type=pa.float32()),
        "top_k_probs": (_lists(pa.array(lab.top_k_probs.reshape(-1), type=pa.float32()), n, rows, k, mask)
                        if lab.top_k_probs is not None else pa.nulls(n, type=pa.list_(pa.float32()))),
    }


def embedding_array(emb: np.ndarray | None, n: int, rows: np.ndarray, dtype: str) -> pa.Array:
    """A list<float16|float32> column of length ``n`` with ``emb`` rows at ``rows``, null elsewhere."""
    value_type = EMBEDDING_TYPES[dtype]
    if emb is None or len(rows) == 0:
        return pa.nulls(n, type=pa.list_(value_type))
    dim = emb.shape[1]
    present = np.zeros(n, dtype=bool)
    present[rows] = True
    lengths = np.where(present, dim, 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = pa.array(np.ascontiguousarray(emb, dtype=np.dtype(dtype)).reshape(-1), type=value_type)
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(~present))


def embeddings_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A non-null list<float> column as float32 ``[n, d]``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32).reshape(len(column), -1)


_PART = re.compile(r"^part-(u\d+)-(c\d+|end|all)\.parquet$")
_LEGACY_PART = re.compile(r"^part-[0-9a-f]{20}\.parquet$")      # das 0.1: a sha1 prefix of the part's file ids


def part_name(unit: str, tag: str | int) -> str:
    """``part-<unit>-c<chunk>.parquet`` for a chunk index, ``part-<unit>-<tag>.parquet`` otherwise."""
    return f"part-{unit}-{f'c{tag:05d}' if isinstance(tag, int) else tag}.parquet"


def parse_part_name(name: str) -> tuple[str, str] | None:
    """``(unit, tag)`` of a part name, None for anything else."""
    m = _PART.match(name)
    return (m.group(1), m.group(2)) if m else None


def table_to_bytes(table: pa.Table) -> bytes:
    """Parquet bytes. Embeddings are stored plain: float values gain nothing from dictionary encoding or
    compression, which only slowed reads and writes (README, Performance); the other columns get both."""
    def leaf(f: pa.Field) -> str:
        return f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name

    def is_text(f: pa.Field) -> bool:
        return pa.types.is_string(f.type) or (pa.types.is_list(f.type) and pa.types.is_string(f.type.value_type))

    fields = list(table.schema)
    compression = {leaf(f): ("none" if f.name == "embedding" else "zstd") for f in fields}
    dictionary = [leaf(f) for f in fields if is_text(f)]
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=compression, use_dictionary=dictionary)
    return buf.getvalue()


@dataclass
class FileOutcome:
    file_id: str
    path: str
    status: str
    error: str | None
    error_kind: str | None
    n_emitted: int
    duration_s: float | None
    sample_rate: int | None
    channels: int | None
    decoder: str | None = None
    key: str | None = None
    metadata: str | None = None
    embedding: np.ndarray | None = None      # the file embedding (normalised mean of its windows), ok files


def mean_embedding(windows: np.ndarray) -> np.ndarray:
    """A file's embedding: the normalised mean of its window embeddings (as stored), in float64."""
    total = np.asarray(windows, dtype=np.float64).sum(axis=0)
    return normalised(total)


def normalised(total: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(total)
    return total / norm if norm > 0 else total


def files_table(outcomes: list[FileOutcome], lab: Labelled | None, n_segments: dict[str, int],
                embedding_dtype: str = "float16") -> pa.Table:
    """The ``files`` rows of ``outcomes`` in (path, file_id) order; ``lab`` labels the ok ones, in the order
    they have in ``outcomes``; ``n_segments`` counts each ok file's windows."""
    ok_order = [i for i, o in enumerate(outcomes) if o.status == OK]
    rank = {i: r for r, i in enumerate(ok_order)}
    order = sorted(range(len(outcomes)), key=lambda i: (outcomes[i].path, outcomes[i].file_id))
    ordered = [outcomes[i] for i in order]
    cols = {
        "file_id": pa.array([o.file_id for o in ordered], pa.string()),
        "path": pa.array([o.path for o in ordered], pa.string()),
        "status": pa.array([o.status for o in ordered], pa.string()),
        "error": pa.array([o.error for o in ordered], pa.string()),
        "error_kind": pa.array([o.error_kind for o in ordered], pa.string()),
        "n_segments": pa.array([n_segments.get(o.file_id, 0) if o.status == OK else 0 for o in ordered], pa.int32()),
        "duration_s": pa.array([o.duration_s for o in ordered], pa.float64()),
        "sample_rate": pa.array([o.sample_rate for o in ordered], pa.int32()),
        "channels": pa.array([o.channels for o in ordered], pa.int32()),
        "decoder": pa.array([o.decoder for o in ordered], pa.string()),
        "key": pa.array([o.key for o in ordered], pa.string()),
        "metadata": pa.array([o.metadata for o in ordered], pa.string()),
    }
    ok_positions = np.array([p for p, i in enumerate(order) if i in rank], dtype=np.int64)
    if lab is not None and len(ok_positions):
        lab = lab.take(np.array([rank[i] for i in order if i in rank], dtype=np.int64))
    else:
        lab = None
    cols.update(labelled_columns(lab, len(ordered), ok_positions))
    with_emb = np.array([i for i, o in enumerate(ordered) if o.embedding is not None], dtype=np.int64)
    emb = np.stack([ordered[i].embedding for i in with_emb]) if len(with_emb) else None
    cols["embedding"] = embedding_array(emb, len(ordered), with_emb, embedding_dtype)
    return pa.table(cols, schema=files_schema(embedding_dtype))


def build_tables(outcomes: list[FileOutcome], windows: pa.Table | None, cache: DriftCache, top_k: int,
                 embedding_dtype: str, scores: tuple[np.ndarray, np.ndarray] | None = None,
                 logit_scale: float | None = None) -> tuple[pa.Table, pa.Table]:
    """The ``segments`` and ``files`` tables for whole files (file labels: max over their windows).

    ``scores``: the ``window_scores`` of ``windows``' rows, when the caller has them (not computed twice).
    """
    ok_ids = [o.file_id for o in outcomes if o.status == OK]
    seg_schema = segments_schema(embedding_dtype)
    rows = None
    if windows is not None and len(windows) and ok_ids:
        segs = windows.append_column("_row", pa.array(np.arange(len(windows))))
        segs = segs.filter(pc.is_in(segs.column("file_id"), value_set=pa.array(ok_ids, type=pa.string())))
        segs = segs.sort_by([("path", "ascending"), ("segment", "ascending")])
        rows = segs.column("_row").to_numpy()
        segs = segs.select([f.name for f in seg_schema]).cast(seg_schema)
    else:
        segs = seg_schema.empty_table()
    index = {fid: i for i, fid in enumerate(ok_ids)}
    file_lab = None
    if ok_ids:
        owner = np.array([index[f] for f in segs.column("file_id").to_pylist()], dtype=np.int64)
        kept = (scores[0][rows], scores[1][rows]) if scores is not None and rows is not None else None
        emb = embeddings_to_numpy(segs.column("embedding"))
        file_lab = label_files(emb, owner, len(ok_ids), cache, top_k, scores=kept, logit_scale=logit_scale)
        order = np.argsort(owner, kind="stable")         # each file's windows, in their order, as one slice
        bounds = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(ok_ids)))])
        outcomes = [o if o.status != OK else dataclasses.replace(o, embedding=mean_embedding(
            emb[order[bounds[index[o.file_id]]:bounds[index[o.file_id] + 1]]])) for o in outcomes]
    return segs, files_table(outcomes, file_lab, Counter(segs.column("file_id").to_pylist()), embedding_dtype)


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=columns)


@dataclass
class StoreListing:
    """Part names per folder from one listing of an output (each storage call is a round trip on S3)."""

    names: dict[str, set[str]]

    def units(self, folder: str) -> dict[str, list[str]]:
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
        return self.units(folder).get(unit, [])

    def has_parts(self) -> bool:
        """Whether any das part is here (other files, e.g. a user's, do not count)."""
        return any(parse_part_name(n) or _LEGACY_PART.match(n) for names in self.names.values() for n in names)

    def legacy_parts(self) -> list[str]:
        """Parquet parts that do not follow the unit naming (das 0.1 output)."""
        return sorted(n for f in (FILES_DIR, SEGMENTS_DIR) for n in self.names.get(f, ()) if not parse_part_name(n))


class OutputStore:
    """Reads and writes parts under one output URI (see the module docstring)."""

    def __init__(self, uri: str):
        self.uri = storage.absolute(uri)       # listed names are absolute: so must the root they are cut from be

    def path(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    def listing(self) -> StoreListing:
        names: dict[str, set[str]] = {FILES_DIR: set(), SEGMENTS_DIR: set(), PIECES_DIR: set()}
        if storage.exists(self.uri):
            root = self.uri.rstrip("/") + "/"
            for u in storage.list_files(self.uri, (".parquet",)):
                folder, _, name = u[len(root):].partition("/")
                if folder in names and "/" not in name:
                    names[folder].add(name)
        return StoreListing(names)

    def has_output(self) -> bool:
        return self.listing().has_parts() or storage.exists(self.path(MANIFEST))

    def remove_all(self) -> int:
        """Delete what das wrote here and nothing else (``--overwrite``); how many files were deleted.

        das's own files are named by das's records and patterns: the parts (``part-<unit>-<tag>.parquet``, and
        das 0.1's ``part-<20 hex digits>.parquet``) in segments/, files/ and pieces/ and the temporary files of
        its writers there, the work manifest, the report files the last report recorded (``das_core.report.record``)
        and ``_manifest.json``. Anything else, a user's file under the same folders included, stays; a folder
        goes only if that leaves it empty.
        """
        from das_core.label.units import WORK_DIR, WORK_MANIFEST
        from das_core.report.record import remove_report

        removed = 0
        for folder, names in self.listing().names.items():
            for name in sorted(names):
                if parse_part_name(name) or _LEGACY_PART.match(name):
                    storage.remove(self.path(folder, name))
                    removed += 1
            removed += storage.remove_temporaries(self.path(folder))
        removed += remove_report(self.uri)
        for own in (self.path(WORK_DIR, WORK_MANIFEST), self.path(MANIFEST)):
            if storage.exists(own):
                storage.remove(own)
                removed += 1
        for folder in (SEGMENTS_DIR, FILES_DIR, PIECES_DIR, WORK_DIR):
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
        storage.write_bytes_atomic(self.path(folder, name), table_to_bytes(table))

    def remove_part(self, folder: str, name: str) -> None:
        storage.remove(self.path(folder, name))

    def read_part(self, folder: str, name: str, columns: list[str] | None = None) -> pa.Table:
        return read_parquet(self.path(folder, name), columns)

    def read_unit(self, unit: str, folder: str, listing: StoreListing, columns: list[str] | None = None
                  ) -> list[pa.Table]:
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


def count_outcomes(files: pa.Table) -> dict:
    """``files in = ok + error`` and error counts by kind, from a ``files`` table."""
    status = files.column("status").to_pylist()
    kinds = Counter(k for s, k in zip(status, files.column("error_kind").to_pylist()) if s == ERROR)
    n_ok = sum(1 for s in status if s == OK)
    return {
        "files": len(status),
        "ok": n_ok,
        "error": len(status) - n_ok,
        "segments": int(pc.sum(files.column("n_segments")).as_py() or 0),
        "errors_by_kind": dict(sorted(kinds.items())),
    }
