"""The unit sink of ``das label``: a chunk's parts as it is encoded, then each unit's commit mark.

The shape of a Ray Data datasink, committing per unit instead of per dataset:

- ``write_chunk`` (the ``write`` hook): score each window once, from its embedding as stored, and write
  the chunk's ``segments`` part, the maxima of any file that spans chunks (``pieces``) and the ``files``
  rows of the files it holds whole, in that order; return the chunk's small statistics (``STATS_SCHEMA``).
- ``finish_unit`` (``on_write_complete``, per unit): once every chunk of a unit is written, pool each
  spanning file's pieces (the maximum over all its windows, exactly what pooling the windows at once
  gives), drop the windows of a spanning file that failed part-way, and write the unit's ``end`` part,
  which commits the unit (the commit rule: ``das_core.output.format``).
- ``write_refusal`` (``on_write_failed``): a worker's disk-full or permission error as the one
  ``RunFailed`` that says what is kept.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from das_core.errors import RunFailed
from das_core.failure import cannot_write, write_error_behind
from das_core.label.decode import ChunkMeta
from das_core.output.format import (
    END_TAG,
    FILES_DIR,
    OK,
    PIECES_DIR,
    SEGMENTS_DIR,
    STAGED_SUFFIX,
    PartFormat,
    part_name,
)
from das_core.output.store import OutputStore
from das_core.output.tables import (
    FileOutcome,
    embedding_array,
    files_table,
    labelled_columns,
    mean_embedding,
    normalised,
)
from das_core.scoring.cache import DriftCache
from das_core.scoring.scorer import DEFAULT_TOP_K, label_files, label_pooled, label_windows, window_scores

PIECES_SCHEMA = pa.schema([
    pa.field("file_id", pa.string()),
    pa.field("path", pa.string()),
    pa.field("chunk", pa.int32()),
    pa.field("piece", pa.int32()),
    pa.field("n_windows", pa.int32()),
    pa.field("das_max", pa.list_(pa.float32())),
    pa.field("zs_max", pa.list_(pa.float32())),
    pa.field("emb_sum", pa.list_(pa.float64())),     # sum of the piece's window embeddings (as stored)
    pa.field("closes", pa.bool_()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
    pa.field("error_kind", pa.string()),
    pa.field("duration_s", pa.float64()),
    pa.field("sample_rate", pa.int32()),
    pa.field("channels", pa.int32()),
    pa.field("decoder", pa.string()),
    pa.field("key", pa.string()),
    pa.field("metadata", pa.string()),
])

STATS_SCHEMA = pa.schema([
    pa.field("unit", pa.string()),
    pa.field("chunk", pa.int32()),
    pa.field("last", pa.bool_()),
    pa.field("windows", pa.int32()),          # windows encoded in this chunk
    pa.field("files_ok", pa.int32()),         # files that closed in this chunk
    pa.field("files_error", pa.int32()),
    pa.field("segments", pa.int64()),         # windows of the ok files that closed here
    pa.field("errors_by_kind", pa.string()),  # JSON {kind: n}
    pa.field("pieces", pa.bool_()),           # wrote a pieces part: finish_unit must read it
    pa.field("skipped", pa.string()),         # JSON {reason: n} of shard members not labelled
    pa.field("error_examples", pa.string()),  # JSON ["path (kind)", ...]: a few of the files that failed here
    pa.field("node", pa.string()),
    pa.field("seconds", pa.float64()),
])


@dataclass(frozen=True)
class WriteSettings:
    """How a run's rows are written: classes kept, embedding storage type and dimension, the noise columns,
    probabilities, and the schema metadata of every part (``das_core.output.format.run_metadata``)."""

    top_k: int = DEFAULT_TOP_K
    embedding_dtype: str = "float16"
    snr_db: float | None = None
    seed: int | None = None
    logit_scale: float | None = None       # with --probabilities: top_k_probs from softmax(scale x scores)
    embedding_dim: int | None = None       # D of FixedSizeList<dtype, D>; None: list<dtype> (a format 2 run)
    metadata: tuple[tuple[str, str], ...] = ()
    staged_suffix: str = STAGED_SUFFIX     # staged parts: Arrow IPC, or Parquet where nothing packs them

    def staged(self, unit: str, tag: str | int) -> str:
        """The name of ``unit``'s staged part ``tag`` (a chunk index or ``end``)."""
        return part_name(unit, tag, self.staged_suffix)

    @functools.cached_property
    def part(self) -> PartFormat:
        """The parts' types and metadata, with their schemas made once per settings object (per actor)."""
        return PartFormat(self.embedding_dtype, self.embedding_dim, self.metadata)


def _outcome(entry: dict, embedding: np.ndarray | None = None) -> FileOutcome:
    return FileOutcome(entry["file_id"], entry["path"], entry["status"], entry.get("error"), entry.get("error_kind"),
                       entry.get("n_emitted", 0), entry.get("duration_s"), entry.get("sample_rate"),
                       entry.get("channels"), entry.get("decoder"), entry.get("key"), entry.get("metadata"),
                       embedding)


def _segments(meta: ChunkMeta, keep: np.ndarray, stored: np.ndarray | None, lab, ws: WriteSettings) -> pa.Table:
    """The chunk's window rows that are kept (those of files that did not fail)."""
    rows = np.flatnonzero(keep)
    windows = [meta.windows[i] for i in rows]
    files = [meta.files[w[0]] for w in windows]
    n = len(rows)
    cols = {
        "file_id": pa.array([f["file_id"] for f in files], pa.string()),
        "path": pa.array([f["path"] for f in files], pa.string()),
        "segment": pa.array([w[1] for w in windows], pa.int32()),
        "start_s": pa.array([w[2] for w in windows], pa.float64()),
        "end_s": pa.array([w[3] for w in windows], pa.float64()),
    }
    cols.update(labelled_columns(lab.take(rows) if lab is not None and n else None, n))
    emb = stored[rows] if stored is not None and n else None
    cols["embedding"] = embedding_array(emb, n, np.arange(n), ws.embedding_dtype, ws.embedding_dim)
    cols["snr_db"] = pa.array([ws.snr_db] * n, pa.float64())
    cols["seed"] = pa.array([ws.seed] * n, pa.int64())
    cols["noise_source"] = pa.array([w[4] for w in windows], pa.string())
    return pa.table(cols, schema=ws.part.segments)


def _float_lists(rows: list[np.ndarray | None]) -> pa.Array:
    return pa.array([None if r is None else r.astype(np.float32) for r in rows], pa.list_(pa.float32()))


def write_chunk(store: OutputStore, unit: str, chunk: int, last: bool, meta: ChunkMeta, stored: np.ndarray | None,
                cache: DriftCache, ws: WriteSettings) -> dict:
    """Score and write one chunk; ``stored``: its window embeddings as stored (``ws.embedding_dtype``)."""
    started = time.monotonic()
    n = len(meta.windows)
    owner = np.array([w[0] for w in meta.windows], dtype=np.int64)
    failed = np.array([f.get("closes", False) and f["status"] != OK for f in meta.files], dtype=bool)
    whole = np.array([f.get("closes", False) and f["piece"] == 0 for f in meta.files], dtype=bool)
    keep = ~failed[owner] if n else np.zeros(0, dtype=bool)
    das = plain = lab = None
    if n:
        das, plain = window_scores(stored.astype(np.float32), cache)
        lab = label_windows(None, cache, ws.top_k, scores=(das, plain), logit_scale=ws.logit_scale)
    segments = _segments(meta, keep, stored, lab, ws)
    if len(segments):
        store.write_part(SEGMENTS_DIR, ws.staged(unit, chunk), segments)

    pieces = [i for i, f in enumerate(meta.files) if not whole[i]]
    if pieces:
        store.write_part(PIECES_DIR, ws.staged(unit, chunk), _pieces_table(meta, pieces, owner, keep, das, plain,
                                                                          stored, chunk))
    if whole.any():
        store.write_part(FILES_DIR, ws.staged(unit, chunk), _whole_files_table(meta, whole & ~failed, whole, owner,
                                                                              keep, das, plain, stored, cache, ws))
    return _stats(unit, chunk, last, n, meta, bool(pieces), time.monotonic() - started)


def _whole_files_table(meta: ChunkMeta, ok: np.ndarray, whole: np.ndarray, owner: np.ndarray, keep: np.ndarray,
                       das, plain, stored: np.ndarray | None, cache: DriftCache, ws: WriteSettings) -> pa.Table:
    """The ``files`` rows of the files the chunk holds whole (``whole``; ``ok``: those that did not fail):
    labels max-pooled over their windows, embeddings the normalised mean of their windows as stored."""
    file_lab = None
    counts: dict[str, int] = {}
    embeddings: dict[int, np.ndarray] = {}
    if ok.any():
        ok_ids = np.flatnonzero(ok)
        mine = ok[owner] & keep
        file_index = (np.cumsum(ok) - 1)[owner[mine]]         # each kept window's rank among the ok files
        file_lab = label_files(None, file_index, len(ok_ids), cache, ws.top_k, scores=(das[mine], plain[mine]),
                               logit_scale=ws.logit_scale)
        windows = np.flatnonzero(mine)[np.argsort(file_index, kind="stable")]   # each file's windows in order
        bounds = np.concatenate([[0], np.cumsum(np.bincount(file_index, minlength=len(ok_ids)))])
        for rank, i in enumerate(ok_ids):
            counts[meta.files[i]["file_id"]] = int(bounds[rank + 1] - bounds[rank])
            embeddings[i] = mean_embedding(stored[windows[bounds[rank]:bounds[rank + 1]]])
    outcomes = [_outcome(meta.files[i], embeddings.get(i)) for i in np.flatnonzero(whole)]
    return files_table(outcomes, file_lab, counts, ws.part)


def _pieces_table(meta: ChunkMeta, entries: list[int], owner: np.ndarray, keep: np.ndarray, das, plain,
                  stored: np.ndarray | None, chunk: int) -> pa.Table:
    das_max, zs_max, emb_sum, counts = [], [], [], []
    for i in entries:
        mine = (owner == i) & keep if len(owner) else np.zeros(0, dtype=bool)
        counts.append(int(mine.sum()))
        das_max.append(das[mine].max(axis=0) if mine.any() else None)
        zs_max.append(plain[mine].max(axis=0) if mine.any() else None)
        emb_sum.append(stored[mine].astype(np.float64).sum(axis=0) if mine.any() else None)
    files = [meta.files[i] for i in entries]

    def col(key: str, typ: pa.DataType) -> pa.Array:
        """The column ``key`` of the piece entries, typed."""
        return pa.array([f.get(key) for f in files], typ)

    return pa.table({
        "file_id": col("file_id", pa.string()), "path": col("path", pa.string()),
        "chunk": pa.array([chunk] * len(files), pa.int32()), "piece": col("piece", pa.int32()),
        "n_windows": pa.array(counts, pa.int32()), "das_max": _float_lists(das_max), "zs_max": _float_lists(zs_max),
        "emb_sum": pa.array(emb_sum, pa.list_(pa.float64())),
        "closes": col("closes", pa.bool_()), "status": col("status", pa.string()), "error": col("error", pa.string()),
        "error_kind": col("error_kind", pa.string()), "duration_s": col("duration_s", pa.float64()),
        "sample_rate": col("sample_rate", pa.int32()), "channels": col("channels", pa.int32()),
        "decoder": col("decoder", pa.string()), "key": col("key", pa.string()),
        "metadata": col("metadata", pa.string()),
    }, schema=PIECES_SCHEMA)


def _stats(unit: str, chunk: int, last: bool, n_windows: int, meta: ChunkMeta, pieces: bool, seconds: float) -> dict:
    closed = [f for f in meta.files if f.get("closes")]
    ok = [f for f in closed if f["status"] == OK]
    kinds = Counter(f["error_kind"] for f in closed if f["status"] != OK)
    return {"unit": unit, "chunk": chunk, "last": last, "windows": n_windows, "files_ok": len(ok),
            "files_error": len(closed) - len(ok), "segments": sum(int(f.get("n_emitted", 0)) for f in ok),
            "errors_by_kind": json.dumps(dict(sorted(kinds.items()))), "pieces": pieces,
            "skipped": json.dumps(meta.skipped),
            "error_examples": json.dumps([f"{f['path']} ({f['error_kind']})" for f in closed if f["status"] != OK][:5]),
            "node": os.environ.get("DAS_NODE_ID", os.uname().nodename), "seconds": seconds}


def finish_unit(store: OutputStore, unit: str, piece_chunks: list[int], cache: DriftCache, ws: WriteSettings
                ) -> None:
    """Commit ``unit``: rows of its spanning files (from the pieces parts of ``piece_chunks``), then its end part."""
    tables = [store.read_part(PIECES_DIR, ws.staged(unit, c)) for c in sorted(piece_chunks)]
    pieces = pa.concat_tables(tables) if tables else PIECES_SCHEMA.empty_table()
    outcomes, pooled_das, pooled_zs, counts = [], [], [], {}
    for file_id in dict.fromkeys(pieces.column("file_id").to_pylist()):
        rows = pieces.filter(pc.equal(pieces.column("file_id"), file_id)).to_pylist()
        closing = next(r for r in rows if r["closes"])
        outcome = FileOutcome(file_id, closing["path"], closing["status"], closing["error"], closing["error_kind"],
                              0, closing["duration_s"], closing["sample_rate"], closing["channels"],
                              closing["decoder"], closing["key"], closing["metadata"])
        if outcome.status != OK:
            outcomes.append(outcome)
            _drop_windows(store, ws, unit, file_id, [r["chunk"] for r in rows if r["n_windows"]])
            continue
        total = np.sum([r["emb_sum"] for r in rows if r["emb_sum"] is not None], axis=0)
        outcomes.append(dataclasses.replace(outcome, embedding=normalised(total)))
        pooled_das.append(np.max([r["das_max"] for r in rows if r["das_max"] is not None], axis=0))
        pooled_zs.append(np.max([r["zs_max"] for r in rows if r["zs_max"] is not None], axis=0))
        counts[file_id] = sum(r["n_windows"] for r in rows)
    lab = (label_pooled(np.array(pooled_das, dtype=np.float32), np.array(pooled_zs, dtype=np.float32), cache,
                        ws.top_k, ws.logit_scale) if pooled_das else None)
    store.write_part(FILES_DIR, ws.staged(unit, END_TAG), files_table(outcomes, lab, counts, ws.part))
    for c in piece_chunks:
        store.remove_part(PIECES_DIR, ws.staged(unit, c))


def _drop_windows(store: OutputStore, ws: WriteSettings, unit: str, file_id: str, chunks: list[int]) -> None:
    """A spanning file failed after some of its windows were written: take them out again."""
    for c in chunks:
        name = ws.staged(unit, c)
        table = store.read_part(SEGMENTS_DIR, name)
        kept = table.filter(pc.not_equal(table.column("file_id"), file_id))
        if len(kept):
            store.write_part(SEGMENTS_DIR, name, kept)
        else:
            store.remove_part(SEGMENTS_DIR, name)


def finish_units(out: str, units: list[tuple[str, list[int]]], cache: DriftCache, ws: WriteSettings) -> list[str]:
    """Commit whole units (``finish_unit`` for each, as ``(unit, chunks with pieces)``); the units committed."""
    store = OutputStore(out)
    for unit, piece_chunks in units:
        finish_unit(store, unit, piece_chunks, cache, ws)
    return [unit for unit, _ in units]


def write_refusal(exc: BaseException, out: str) -> RunFailed | None:
    """A RunFailed for the disk-full or permission error behind ``exc`` (a worker's write, wrapped by Ray)."""
    failed = write_error_behind(exc)
    # the part being written was a hidden temporary file, now removed: what is visible is committed
    return None if failed is None else RunFailed(cannot_write(
        failed, out, f"the units committed so far are kept: free space or fix the permissions of {out}, "
                     "then rerun with --resume"))
