"""The tables of label and rescore output, built from labels and outcomes: ``segments`` and ``files`` rows.

Arrow columns are built from numpy arrays without a Python loop over rows; the schemas are
``das_core.output.format``'s.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from das_core.output.format import (
    EMBEDDING_TYPES,
    ERROR,
    OK,
    PartFormat,
    files_schema,
    label_column_names,
    label_fields,
)
from das_core.scoring.cache import DriftCache
from das_core.scoring.scorer import Labelled, label_files, label_windows, window_scores


def _null_mask(n: int, rows: np.ndarray) -> np.ndarray | None:
    """Which of ``n`` rows are null (not in ``rows``); None when ``rows`` are all of them, in order."""
    if len(rows) == n and np.array_equal(rows, np.arange(n)):
        return None
    mask = np.ones(n, dtype=bool)
    mask[rows] = False
    return mask


def _spread(values: np.ndarray, n: int, rows: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``values`` placed at ``rows`` of an array of length ``n`` (zeros elsewhere; ``values`` itself when
    ``rows`` are all of them in order: ``mask`` None)."""
    if mask is None:
        return values
    out = np.zeros((n,) + values.shape[1:], dtype=values.dtype)
    out[rows] = values
    return out


def _lists(values: pa.Array, n: int, rows: np.ndarray, k: int, mask: np.ndarray | None) -> pa.Array:
    if mask is None:
        return pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), values)
    lengths = np.zeros(n, dtype=np.int32)
    lengths[rows] = k
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(mask))


@functools.lru_cache(maxsize=8)
def _class_names(names: tuple[str, ...]) -> pa.Array:
    """A cache's class names as one Arrow array, made once per process (not per chunk)."""
    return pa.array(names, type=pa.string())


def labelled_columns(lab: Labelled | None, n: int, rows: np.ndarray | None = None) -> dict[str, pa.Array]:
    """Arrow columns for ``lab`` placed at positions ``rows`` of ``n`` (nulls elsewhere), built without a Python
    loop over rows."""
    if lab is None:
        return {f.name: pa.nulls(n, type=f.type) for f in label_fields()}
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    mask = _null_mask(n, rows)
    names = _class_names(lab.names)
    k = lab.top_k_index.shape[1]

    def name_column(index: np.ndarray) -> pa.Array:
        """Class names at ``index`` (per labelled row), placed at ``rows``."""
        return names.take(pa.array(_spread(index.astype(np.int64), n, rows, mask), mask=mask))

    def float_column(values: np.ndarray) -> pa.Array:
        """float32 ``values`` (per labelled row), placed at ``rows``."""
        return pa.array(_spread(values.astype(np.float32), n, rows, mask), mask=mask, type=pa.float32())

    return {
        "label": name_column(lab.top_k_index[:, 0]),
        "score": float_column(lab.score),
        "top_k_labels": _lists(names.take(pa.array(lab.top_k_index.reshape(-1).astype(np.int64))), n, rows, k,
                               mask),
        "top_k_scores": _lists(pa.array(lab.top_k_scores.reshape(-1).astype(np.float32), type=pa.float32()), n,
                               rows, k, mask),
        "zs_label": name_column(lab.zs_index),
        "zs_score": float_column(lab.zs_score),
        "top_k_probs": (_lists(pa.array(lab.top_k_probs.reshape(-1), type=pa.float32()), n, rows, k, mask)
                        if lab.top_k_probs is not None else pa.nulls(n, type=pa.list_(pa.float32()))),
    }


def embedding_array(emb: np.ndarray | None, n: int, rows: np.ndarray, dtype: str, dim: int | None = None
                    ) -> pa.Array:
    """An embedding column of length ``n`` with ``emb`` rows at ``rows``, null elsewhere: a
    ``FixedSizeList<dtype, dim>`` (``emb`` is ``(len(rows), dim)``), or a ``list<dtype>`` where ``dim`` is None."""
    value_type = EMBEDDING_TYPES[dtype]
    arrow_type = pa.list_(value_type) if dim is None else pa.list_(value_type, dim)
    if emb is None or len(rows) == 0:
        return pa.nulls(n, type=arrow_type)
    if dim is not None and emb.shape[1] != dim:
        raise ValueError(f"embeddings of dimension {emb.shape[1]} for a column of dimension {dim}")
    present = np.zeros(n, dtype=bool)
    present[rows] = True
    mask = None if present.all() else pa.array(~present)
    if dim is not None:
        # a null row still takes dim values in a fixed-size list: zeros there
        values = _spread(np.ascontiguousarray(emb, dtype=np.dtype(dtype)), n, rows, _null_mask(n, rows))
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=value_type), dim, mask=mask)
    lengths = np.where(present, emb.shape[1], 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = pa.array(np.ascontiguousarray(emb, dtype=np.dtype(dtype)).reshape(-1), type=value_type)
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=mask)


def embeddings_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An embedding column (``FixedSizeList<float, D>`` or format 2's ``list<float>``) as a float32 ``(n, D)``
    matrix, without a Python loop over rows; slices are honoured. ``ValueError`` for a column with null rows
    (filter them out first) or rows of different lengths."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise ValueError(f"{column.null_count} of {len(column)} embedding(s) are null")
    if len(column) == 0:
        dim = column.type.list_size if pa.types.is_fixed_size_list(column.type) else 0
        return np.zeros((0, dim), dtype=np.float32)
    values = column.flatten().to_numpy(zero_copy_only=False)       # flatten: from the slice's own offset
    if len(values) % len(column):
        raise ValueError(f"{len(values)} embedding values do not split into {len(column)} rows of one length")
    return values.astype(np.float32).reshape(len(column), -1)           # a copy: writable, whatever the dtype


@dataclass
class FileOutcome:
    """How one input file ended (ok or error) and what its ``files`` row says about it."""

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
    return normalised(np.asarray(windows, dtype=np.float64).sum(axis=0))


def normalised(total: np.ndarray) -> np.ndarray:
    """``total`` scaled to unit length (a zero vector stays zero)."""
    return normalised_rows(np.asarray(total, dtype=np.float64)[None])[0]


def normalised_rows(totals: np.ndarray) -> np.ndarray:
    """Each row of the float64 ``totals`` scaled to unit length (a zero row stays zero). A row's result does not
    depend on the other rows, so a file's embedding has the same bits however many files are computed with it."""
    norms = np.sqrt(np.einsum("ij,ij->i", totals, totals))
    return totals / np.where(norms > 0, norms, 1.0)[:, None]


def mean_embeddings(emb: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """``(n, D)`` float64: row f is the normalised mean of the rows of ``emb`` whose ``owner`` is f, summed in
    their order (zeros where f has none), as ``mean_embedding`` of each file's windows."""
    totals = np.zeros((n, emb.shape[1]), dtype=np.float64)
    if len(owner):
        counts = np.bincount(owner, minlength=n)
        single = counts[owner] == 1                          # a file of one window (a short clip): that window
        totals[owner[single]] = emb[single]
        if not single.all():
            rows = np.flatnonzero(~single)
            many = rows[np.argsort(owner[rows], kind="stable")]
            files, starts = np.unique(owner[many], return_index=True)
            totals[files] = np.add.reduceat(np.asarray(emb[many], dtype=np.float64), starts, axis=0)
    return normalised_rows(totals)


# The columns of a file's outcome in a ``files`` row (everything but its labels and embedding), typed.
OUTCOME_TYPES = {f.name: f.type for f in files_schema() if f.name not in label_column_names()
                 and f.name != "embedding"}


def outcome_table(files: pa.Table) -> pa.Table:
    """The ``OUTCOME_TYPES`` columns of ``files`` rows, typed; those an older output lacks (decoder, key,
    metadata) are null."""
    n = len(files)
    return pa.table({name: files.column(name).cast(kind) if name in files.column_names else pa.nulls(n, kind)
                     for name, kind in OUTCOME_TYPES.items()})


def files_rows(outcomes: pa.Table, lab: Labelled | None, n_segments: np.ndarray, embedding: np.ndarray | None,
               part: PartFormat, group: np.ndarray | None = None) -> pa.Table:
    """The ``files`` rows of ``outcomes`` (``outcome_table``'s columns) in (``group``, path, file_id) order, typed
    and labelled as ``part`` says, built with Arrow and numpy (no Python loop over rows).

    ``lab`` labels the ok rows and ``embedding`` (``(ok rows, D)``) embeds them, in their order in ``outcomes``;
    ``n_segments`` counts each row's windows (error rows get 0); ``group``: each row's unit, where the rows of
    several units are built at once (a pack).
    """
    n = len(outcomes)
    ok = pc.equal(outcomes.column("status"), OK).to_numpy(zero_copy_only=False).astype(bool)
    keys, sort_keys = outcomes.select(["path", "file_id"]), [("path", "ascending"), ("file_id", "ascending")]
    if group is not None:
        keys, sort_keys = keys.append_column("_group", pa.array(group)), [("_group", "ascending"), *sort_keys]
    order = pc.sort_indices(keys, sort_keys=sort_keys).to_numpy()
    ok_positions = np.flatnonzero(ok[order])                 # where the ok rows land
    ranks = (np.cumsum(ok) - 1)[order[ok_positions]]         # and which ok row (of lab, embedding) each is
    cols = {name: outcomes.column(name).take(pa.array(order)) for name in OUTCOME_TYPES}
    cols["n_segments"] = pa.array(np.where(ok, n_segments, 0)[order].astype(np.int32), pa.int32())
    have = len(ok_positions) > 0
    cols.update(labelled_columns(lab.take(ranks) if lab is not None and have else None, n, ok_positions))
    cols["embedding"] = embedding_array(embedding[ranks] if embedding is not None and have else None, n,
                                        ok_positions, part.embedding_dtype)
    return pa.table(cols, schema=part.files)


def files_table(outcomes: list[FileOutcome], lab: Labelled | None, n_segments: dict[str, int],
                part: PartFormat | None = None) -> pa.Table:
    """The ``files`` rows of ``outcomes`` in (path, file_id) order, typed and labelled as ``part`` says (float16
    embeddings, no metadata without it); ``lab`` labels the ok ones, in the order they have in ``outcomes``, whose
    ``embedding`` each ok one carries; ``n_segments`` counts each ok file's windows."""
    table = pa.table({name: pa.array([getattr(o, "n_emitted" if name == "n_segments" else name) for o in outcomes],
                                     kind) for name, kind in OUTCOME_TYPES.items()})
    ok = [o for o in outcomes if o.status == OK]
    if any(o.embedding is None for o in ok):
        raise ValueError("an ok file outcome without its embedding")
    return files_rows(table, lab, np.array([n_segments.get(o.file_id, 0) for o in outcomes], dtype=np.int64),
                      np.stack([o.embedding for o in ok]) if ok else None, part or PartFormat())


def window_owners(windows: pa.Table, outcomes: pa.Table, window_spans: list[tuple[int, int]] | None = None,
                  outcome_spans: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Each window's row in ``outcomes`` (by ``file_id``; -1 where none), matched within each pair of spans
    (``(first row, rows)`` of one unit in each table; one span each by default): a file id names one file
    within a unit."""
    owner = np.full(len(windows), -1, dtype=np.int64)
    spans = zip(window_spans or [(0, len(windows))], outcome_spans or [(0, len(outcomes))])
    for (w0, wn), (o0, on) in spans:
        if wn and on:
            found = pc.index_in(windows.column("file_id").slice(w0, wn), value_set=outcomes.column("file_id")
                                .slice(o0, on).combine_chunks())
            owner[w0:w0 + wn] = np.where(found.is_valid().to_numpy(zero_copy_only=False),
                                         found.fill_null(-1).to_numpy(zero_copy_only=False) + o0, -1)
    return owner


def build_tables(outcomes: pa.Table, windows: pa.Table, cache: DriftCache, top_k: int, part: PartFormat,
                 logit_scale: float | None = None, owner: np.ndarray | None = None,
                 group: np.ndarray | None = None) -> tuple[pa.Table, pa.Table]:
    """The ``segments`` and ``files`` tables of whole files, labelled from their windows' stored embeddings
    (file labels: the maximum over their windows), typed and labelled as ``part`` says (a ``list<...>``
    embedding column of ``windows`` becomes its fixed-size list); Arrow and numpy, no loop over rows.

    ``outcomes``: ``outcome_table`` rows; ``windows``: their window rows (any label columns are recomputed);
    ``owner``: each window's row in ``outcomes`` (``window_owners``; by file id if not given). Windows of error
    files (or of no file) are dropped. ``group``: each outcome row's unit, where several are built at once
    (rows stay in unit order, each unit's sorted as one unit's would be: segments by path and segment, files by
    path and file id).
    """
    owner = window_owners(windows, outcomes) if owner is None else owner
    ok = pc.equal(outcomes.column("status"), OK).to_numpy(zero_copy_only=False).astype(bool)
    kept = np.flatnonzero((owner >= 0) & ok[np.maximum(owner, 0)]) if len(owner) and len(ok) else np.zeros(0, np.int64)
    keys = windows.select(["path", "segment"]).take(pa.array(kept))
    sort_keys = [("path", "ascending"), ("segment", "ascending")]
    if group is not None:
        keys, sort_keys = keys.append_column("_group", pa.array(group[owner[kept]])), [("_group", "ascending"),
                                                                                      *sort_keys]
    rows = kept[pc.sort_indices(keys, sort_keys=sort_keys).to_numpy()]
    seg_schema = part.segments
    segs = windows.take(pa.array(rows))
    emb = embeddings_to_numpy(segs.column("embedding")) if len(rows) else np.zeros((0, cache.dim), np.float32)
    lab = file_lab = None
    ok_rank = np.cumsum(ok) - 1
    file_of = ok_rank[owner[rows]]                             # each kept window's ok file
    n_ok = int(ok.sum())
    if len(rows):
        scores = window_scores(emb, cache)
        lab = label_windows(None, cache, top_k, scores=scores, logit_scale=logit_scale)
        file_lab = label_files(None, file_of, n_ok, cache, top_k, scores=scores, logit_scale=logit_scale)
    cols = {f.name: segs.column(f.name) for f in seg_schema if f.name not in label_column_names()}
    cols.update(labelled_columns(lab, len(rows)))
    segs = pa.table({f.name: cols[f.name] for f in seg_schema}).cast(seg_schema)
    counts = np.bincount(owner[rows], minlength=len(outcomes)) if len(rows) else np.zeros(len(outcomes), np.int64)
    embedding = mean_embeddings(emb, file_of, n_ok) if n_ok else None
    return segs, files_rows(outcomes, file_lab, counts, embedding, part, group)


def count_outcomes(files: pa.Table) -> dict:
    """``files in = ok + error`` and error counts by kind, from a ``files`` table."""
    status = files.column("status")
    n_ok = int(pc.sum(pc.equal(status, OK)).as_py() or 0)
    errors = files.filter(pc.equal(status, ERROR)).column("error_kind").to_pylist()
    kinds = Counter(errors)
    return {
        "files": len(status),
        "ok": n_ok,
        "error": len(status) - n_ok,
        "segments": int(pc.sum(files.column("n_segments")).as_py() or 0),
        "errors_by_kind": dict(sorted(kinds.items())),
    }
