"""The output tables of ``das label`` / ``das rescore``, and how they are committed.

Layout under an output URI::

    segments/part-<id>.parquet   one row per 10 s window (embedding included)
    files/part-<id>.parquet      one row per input file, ok or error
    _manifest.json               settings, fingerprints and counts of the run

Commit protocol: results are written in groups of whole files. A group's
``segments`` part is written first, then its ``files`` part; each object
appears atomically (rename or a single S3 PUT). A ``files`` row therefore
means the file's segments and embeddings are all there; a ``segments`` part
without its ``files`` part is an interrupted commit and is deleted on
``--resume``. ``<id>`` is derived from the file ids in the group, so names are
deterministic and a retried group overwrites instead of duplicating.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from das_core import storage
from das_core.cache import DriftCache
from das_core.scoring import Labelled, label_files

SEGMENTS_DIR = "segments"
FILES_DIR = "files"
MANIFEST = "_manifest.json"

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


FILES_SCHEMA = pa.schema([
    pa.field("file_id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("error_kind", pa.string()),
    pa.field("n_segments", pa.int32(), nullable=False),
    pa.field("duration_s", pa.float64()),
    pa.field("sample_rate", pa.int32()),
    pa.field("channels", pa.int32()),
    *_label_fields(),
])

# What flows from the decode stage to the encoder: window rows (kind="segment", audio = int16 bytes).
# The row that closes a file (closes_file=True) carries the file's outcome; it is the file's last window,
# or a row of kind="file" without audio when the file has no window or failed after its last window.
STREAM_SCHEMA = pa.schema([
    pa.field("kind", pa.string()),
    pa.field("closes_file", pa.bool_()),
    pa.field("file_id", pa.string()),
    pa.field("path", pa.string()),
    pa.field("segment", pa.int32()),
    pa.field("start_s", pa.float64()),
    pa.field("end_s", pa.float64()),
    pa.field("audio", pa.large_binary()),
    pa.field("snr_db", pa.float64()),
    pa.field("seed", pa.int64()),
    pa.field("noise_source", pa.string()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
    pa.field("error_kind", pa.string()),
    pa.field("n_emitted", pa.int32()),
    pa.field("duration_s", pa.float64()),
    pa.field("sample_rate", pa.int32()),
    pa.field("channels", pa.int32()),
])


def encoded_schema(embedding_dtype: str) -> pa.Schema:
    """The encoder stage's output: the stream without audio, plus embedding and window labels."""
    fields = [f for f in STREAM_SCHEMA if f.name != "audio"]
    return pa.schema(fields + [pa.field("embedding", pa.list_(EMBEDDING_TYPES[embedding_dtype]))]
                     + _label_fields())


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


def part_name(file_ids: Iterable[str]) -> str:
    digest = hashlib.sha1("\n".join(sorted(file_ids)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


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


@dataclass
class Assembler:
    """Collects the encoder's streamed rows until each file is whole.

    A file is complete once its closing row has arrived and so have all the
    window rows it announced (``n_emitted``); windows of a file that failed
    part-way are dropped then.
    """

    pending: list[pa.Table] = field(default_factory=list)
    arrived: Counter = field(default_factory=Counter)
    outcomes: dict[str, FileOutcome] = field(default_factory=dict)
    complete: list[str] = field(default_factory=list)
    _done: set[str] = field(default_factory=set)

    def add(self, batch: pa.Table) -> None:
        kinds = batch.column("kind").to_pylist()
        ids = batch.column("file_id").to_pylist()
        closes = batch.column("closes_file").to_pylist()
        closing = [i for i, c in enumerate(closes) if c]
        n_windows = 0
        for i, k in enumerate(kinds):
            if k == "segment":
                self.arrived[ids[i]] += 1
                n_windows += 1
        if n_windows:
            self.pending.append(batch.filter(pc.equal(batch.column("kind"), "segment"))
                                if n_windows < len(kinds) else batch)
        if closing:
            rows = batch.select(["file_id", "path", "status", "error", "error_kind", "n_emitted", "duration_s",
                                 "sample_rate", "channels"]).take(closing).to_pylist()
            for r in rows:
                self.outcomes[r["file_id"]] = FileOutcome(
                    r["file_id"], r["path"], r["status"], r["error"], r["error_kind"], r["n_emitted"] or 0,
                    r["duration_s"], r["sample_rate"], r["channels"])
        for fid in set(ids):
            out = self.outcomes.get(fid)
            if out is not None and fid not in self._done and self.arrived[fid] == out.n_emitted:
                self._done.add(fid)
                self.complete.append(fid)

    @property
    def n_complete(self) -> int:
        return len(self.complete)

    def take_complete(self, limit: int | None = None) -> tuple[list[FileOutcome], pa.Table | None]:
        """Hand over (at most ``limit``) complete files and their window rows; keep the rest pending."""
        if not self.complete:
            return [], None
        taken = self.complete[:limit] if limit else self.complete
        self.complete = self.complete[len(taken):]
        ids = pa.array(taken, type=pa.string())
        outcomes = [self.outcomes.pop(fid) for fid in taken]
        for fid in taken:
            self.arrived.pop(fid, None)
        if not self.pending:
            return outcomes, None
        table = pa.concat_tables(self.pending)
        mask = pc.is_in(table.column("file_id"), value_set=ids)
        rest = table.filter(pc.invert(mask))
        self.pending = [rest] if len(rest) else []
        return outcomes, table.filter(mask)

    def unfinished(self) -> list[str]:
        return sorted(set(self.arrived) | set(self.outcomes))


def build_tables(outcomes: list[FileOutcome], windows: pa.Table | None, cache: DriftCache, top_k: int,
                 embedding_dtype: str, scores: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[pa.Table, pa.Table]:
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
    n_segments = Counter(segs.column("file_id").to_pylist())
    file_lab = None
    if ok_ids:
        owner = np.array([index[f] for f in segs.column("file_id").to_pylist()], dtype=np.int64)
        kept = (scores[0][rows], scores[1][rows]) if scores is not None and rows is not None else None
        file_lab = label_files(embeddings_to_numpy(segs.column("embedding")), owner, len(ok_ids), cache, top_k,
                               scores=kept)
    order = sorted(range(len(outcomes)), key=lambda i: (outcomes[i].path, outcomes[i].file_id))
    outcomes = [outcomes[i] for i in order]
    rows = np.array([index[o.file_id] for o in outcomes if o.status == OK], dtype=np.int64)
    ok_positions = np.array([i for i, o in enumerate(outcomes) if o.status == OK], dtype=np.int64)
    cols = {
        "file_id": pa.array([o.file_id for o in outcomes], pa.string()),
        "path": pa.array([o.path for o in outcomes], pa.string()),
        "status": pa.array([o.status for o in outcomes], pa.string()),
        "error": pa.array([o.error for o in outcomes], pa.string()),
        "error_kind": pa.array([o.error_kind for o in outcomes], pa.string()),
        "n_segments": pa.array([n_segments.get(o.file_id, 0) if o.status == OK else 0 for o in outcomes], pa.int32()),
        "duration_s": pa.array([o.duration_s for o in outcomes], pa.float64()),
        "sample_rate": pa.array([o.sample_rate for o in outcomes], pa.int32()),
        "channels": pa.array([o.channels for o in outcomes], pa.int32()),
    }
    if file_lab is not None:
        file_lab = file_lab.take(rows)
    cols.update(labelled_columns(file_lab, len(outcomes), ok_positions))
    files = pa.table(cols, schema=FILES_SCHEMA)
    return segs, files


class OutputStore:
    """Reads and commits parts under one output URI (see the module docstring)."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/") if not uri.endswith("://") else uri

    def path(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    def _parts(self, sub: str) -> list[str]:
        base = self.path(sub)
        if not storage.exists(base):
            return []
        return [u for u in storage.list_files(base, (".parquet",))]

    def part_names(self) -> tuple[list[str], list[str]]:
        """Names of the committed parts and of the uncommitted ones (a segments part without its files part),
        from one listing of the store (each storage call is a round trip on S3). The commit protocol lives here."""
        found: dict[str, set[str]] = {FILES_DIR: set(), SEGMENTS_DIR: set()}
        if storage.exists(self.uri):
            root = self.uri.rstrip("/") + "/"
            for u in storage.list_files(self.uri, (".parquet",)):
                folder, _, name = u[len(root):].partition("/")
                if folder in found and "/" not in name:
                    found[folder].add(name)
        files, segments = found[FILES_DIR], found[SEGMENTS_DIR]
        return sorted(files), sorted(segments - files)

    def is_empty(self) -> bool:
        if not storage.exists(self.uri):
            return True
        fs, path = storage.filesystem(self.uri)
        return not fs.ls(path)

    def has_output(self) -> bool:
        return bool(self._parts(FILES_DIR) or self._parts(SEGMENTS_DIR) or storage.exists(self.path(MANIFEST)))

    def read_manifest(self) -> dict | None:
        uri = self.path(MANIFEST)
        if not storage.exists(uri):
            return None
        return json.loads(storage.read_bytes(uri))

    def write_manifest(self, manifest: dict) -> None:
        storage.write_bytes_atomic(self.path(MANIFEST), (json.dumps(manifest, indent=2, default=str) + "\n").encode())

    def remove_all(self) -> None:
        for sub in (SEGMENTS_DIR, FILES_DIR):
            storage.remove(self.path(sub), recursive=True)
        storage.remove(self.path(MANIFEST))

    def remove_uncommitted(self) -> list[str]:
        """Delete segments parts whose files part never landed (an interrupted commit)."""
        orphans = [self.path(SEGMENTS_DIR, name) for name in self.part_names()[1]]
        for u in orphans:
            storage.remove(u)
        return orphans

    def read_files(self) -> pa.Table:
        parts = self._parts(FILES_DIR)
        if not parts:
            return FILES_SCHEMA.empty_table()
        return pa.concat_tables([pq.read_table(io.BytesIO(storage.read_bytes(u))) for u in parts])

    def committed_ids(self) -> set[str]:
        return set(self.read_files().column("file_id").to_pylist())

    def commit(self, segments: pa.Table, files: pa.Table) -> str:
        name = part_name(files.column("file_id").to_pylist())
        storage.write_bytes_atomic(self.path(SEGMENTS_DIR, name), table_to_bytes(segments))
        storage.write_bytes_atomic(self.path(FILES_DIR, name), table_to_bytes(files))
        return name


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
