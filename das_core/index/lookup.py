"""An index used by ``das search``: whether it covers the output searched (``open_for_search``), and its hits
re-ranked exactly (``index_hits``).

The index proposes ``CANDIDATES`` times ``top`` rows per query (inner product with the query's weights, on
the stored embeddings); each candidate's stored embedding is read back from the index (exact: see
``das_core.index.build``) and scored by ``score_embeddings``, the function the exact scan uses, so a
window's score is the scan's. ``--min-score`` and ``--lam`` apply as in the scan. Units committed after the
index was built are not in it: the search scans those exactly and merges (``uncovered``).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from das_core.index.build import META_COLUMNS, META_SCHEMA, IndexSource, load_index, stale_reason
from das_core.index.record import IndexRecord
from das_core.io import storage
from das_core.output.index_files import index_folder, rows_name
from das_core.output.manifest import RunManifest
from das_core.output.store import OutputStore
from das_core.search.queries import HITS_SCHEMA, Queries, score_embeddings, top_rows

log = logging.getLogger("das.search")

CANDIDATES = 4          # candidates per query, in multiples of --top, re-ranked exactly


@dataclass
class OpenIndex:
    """A loaded index of the output searched, its record, and the committed units it does not cover."""

    uri: str
    record: IndexRecord
    index: object                    # the FAISS index
    uncovered: list[str]


def open_for_search(uri: str, level: str, units: list[str]) -> OpenIndex | None:
    """The index of ``uri`` at ``level``, loaded, when one is there and valid for the committed ``units``;
    None otherwise (a one-line warning says why an index that is there is not used)."""
    record = IndexRecord.read(uri, level)
    if record is None:
        return None
    manifest = RunManifest.read(uri)
    checkpoint = manifest.checkpoint_fingerprint if manifest is not None else None
    source = IndexSource(uri, OutputStore(uri), units, checkpoint, level)
    why = stale_reason(source, record)
    index = load_index(uri, record) if why is None else None
    if why is None and index is None:
        why = "its index file is missing or does not match its record"
    if why is not None:
        log.warning("the index of %s at --level %s is not used: %s; searching by exact scan (rebuild it: "
                    "`das index %s --level %s --rebuild`)", uri, level, why, uri, level)
        return None
    uncovered = [u for u in units if u not in record.units]
    if uncovered:
        log.warning("the index of %s at --level %s is stale: %d of %d committed unit(s) were committed after it "
                    "was built; they are scanned exactly (refresh it: `das index %s --level %s`)", uri, level,
                    len(uncovered), len(units), uri, level)
    return OpenIndex(uri, record, index, uncovered)


def candidates(opened: OpenIndex, queries: Queries, top: int) -> np.ndarray:
    """Per query, the ids of its ``CANDIDATES * top`` best rows by inner product (``-1``: fewer rows)."""
    import faiss

    weights = np.ascontiguousarray(queries.weights().astype(np.float32))
    nprobe = int(opened.record.parameters["nprobe"])
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(opened.index).quantizer)
    # an HNSW quantizer (large indexes) must explore at least as many centres as the lists probed
    inner = faiss.SearchParametersHNSW(efSearch=2 * nprobe) if isinstance(quantizer, faiss.IndexHNSW) else None
    params = faiss.SearchParametersIVF(nprobe=nprobe, quantizer_params=inner)
    wanted = min(CANDIDATES * top, max(opened.record.rows, 1))
    return opened.index.search(weights, wanted, params=params)[1]


def index_hits(opened: OpenIndex, queries: Queries, top: int, min_score: float | None) -> pa.Table:
    """The index's best ``top`` rows per query, scored exactly (``HITS_SCHEMA``, rank still 0)."""
    if not opened.record.rows:
        return HITS_SCHEMA.empty_table()
    found = candidates(opened, queries, top)
    ids = np.unique(found[found >= 0])
    if not len(ids):
        return HITS_SCHEMA.empty_table()
    import faiss

    ivf = faiss.extract_index_ivf(opened.index)
    if ivf.direct_map.no():              # an index written without its map
        ivf.make_direct_map()
    scores = score_embeddings(opened.index.reconstruct_batch(ids.astype(np.int64)), queries)
    position = {int(i): n for n, i in enumerate(ids)}
    picked_ids, picked_scores, query_of = [], [], []
    for j in range(len(queries)):
        mine = np.array([position[int(i)] for i in found[j] if i >= 0], dtype=np.int64)
        best = mine[top_rows(scores[mine, j:j + 1], top, min_score)[0]]
        picked_ids += ids[best].tolist()
        picked_scores += scores[best, j].tolist()
        query_of += [j] * len(best)
    meta = rows_of(opened, picked_ids)
    return pa.table({
        "query": pa.array([queries.names[j] for j in query_of], pa.string()),
        "rank": pa.array(np.zeros(len(picked_ids), dtype=np.int32)),
        **{name: meta.column(name) for name in META_COLUMNS},
        "score": pa.array(np.asarray(picked_scores, dtype=np.float32), pa.float32()),
    }, schema=HITS_SCHEMA)


def rows_of(opened: OpenIndex, ids: list[int]) -> pa.Table:
    """file_id, path, start_s, end_s of the rows ``ids``, in that order: of each rows file that holds one, only
    the row groups that hold them are read (each once)."""
    if not ids:
        return META_SCHEMA.empty_table()
    folder = index_folder(opened.uri, opened.record.level)
    ids_array = np.asarray(ids, dtype=np.int64)
    which = opened.record.rows_file_of(ids_array)
    groups: dict[tuple[int, int], tuple[int, pa.Table]] = {}
    picked = []
    with ExitStack() as stack:
        files: dict[int, tuple[pq.ParquetFile, np.ndarray]] = {}
        for row_id, number in zip(ids_array.tolist(), which.tolist()):
            if number not in files:
                first, _ = opened.record.rows_files[number]
                handle = stack.enter_context(storage.open_input(storage.join(folder, rows_name(first))))
                parquet = pq.ParquetFile(handle)
                sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
                files[number] = parquet, np.cumsum([0] + sizes)
            parquet, starts = files[number]
            local = row_id - opened.record.rows_files[number][0]
            group = int(np.searchsorted(starts, local, side="right")) - 1
            if (number, group) not in groups:
                groups[number, group] = int(starts[group]), parquet.read_row_group(group, columns=META_COLUMNS)
            offset, table = groups[number, group]
            picked.append(table.slice(local - offset, 1))
    return pa.concat_tables(picked).cast(META_SCHEMA)
