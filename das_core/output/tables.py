"""The tables of label and rescore output, built from labels and outcomes: ``segments`` and ``files`` rows.

Arrow columns are built from numpy arrays without a Python loop over rows; the schemas are
``das_core.output.format``'s.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from das_core.output.format import EMBEDDING_TYPES, ERROR, OK, PartFormat, label_fields
from das_core.scoring.cache import DriftCache
from das_core.scoring.scorer import Labelled, label_files


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
    total = np.asarray(windows, dtype=np.float64).sum(axis=0)
    return normalised(total)


def normalised(total: np.ndarray) -> np.ndarray:
    """``total`` scaled to unit length (a zero vector stays zero)."""
    norm = np.linalg.norm(total)
    return total / norm if norm > 0 else total


def files_table(outcomes: list[FileOutcome], lab: Labelled | None, n_segments: dict[str, int],
                part: PartFormat | None = None) -> pa.Table:
    """The ``files`` rows of ``outcomes`` in (path, file_id) order, typed and labelled as ``part`` says (float16
    embeddings, no metadata without it); ``lab`` labels the ok ones, in the order they have in ``outcomes``;
    ``n_segments`` counts each ok file's windows."""
    part = part or PartFormat()
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
    cols["embedding"] = embedding_array(emb, len(ordered), with_emb, part.embedding_dtype)
    return pa.table(cols, schema=part.files)


def build_tables(outcomes: list[FileOutcome], windows: pa.Table | None, cache: DriftCache, top_k: int,
                 part: PartFormat, scores: tuple[np.ndarray, np.ndarray] | None = None,
                 logit_scale: float | None = None) -> tuple[pa.Table, pa.Table]:
    """The ``segments`` and ``files`` tables for whole files (file labels: max over their windows), typed and
    labelled as ``part`` says (a ``list<...>`` embedding column of ``windows`` becomes its fixed-size list).

    ``scores``: the ``window_scores`` of ``windows``' rows, when the caller has them (not computed twice).
    """
    ok_ids = [o.file_id for o in outcomes if o.status == OK]
    seg_schema = part.segments
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
    return segs, files_table(outcomes, file_lab, Counter(segs.column("file_id").to_pylist()), part)


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
