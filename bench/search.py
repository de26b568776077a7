"""``das search`` throughput: ranking stored embeddings against text/audio query vectors, on Ray Data.

Run by ``bench.run`` (``make bench`` and ``--smoke``) while its Ray instance is up; returns a dict of figures.
"""

from __future__ import annotations

import os
import time

import numpy as np


def _queries(n: int, dim: int):
    from das_core.search.run import Queries

    rng = np.random.default_rng(7)
    v = rng.standard_normal((n, dim))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return Queries(tuple(f"query {i}" for i in range(n)), v.astype(np.float32), np.zeros((n, dim), np.float32))


def _search_seconds(labels: str, queries, top: int) -> float:
    """Wall time of the distributed ranking (one task per unit) and the driver's merge, best of two."""
    from das_core.output.store import OutputStore
    from das_core.search.run import SEGMENT, merge_hits
    from jobs.search import run_stages

    listing = OutputStore(labels).listing()
    units = listing.committed_units()
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        parts = list(run_stages(units, listing, labels, queries, top, None, SEGMENT))
        hits = merge_hits(parts, queries.names, top)
        best = min(best, time.perf_counter() - t)
        assert len(hits) == top * len(queries)
    return best


def bench_search(cache, work: str, rows: int, best_of) -> dict:
    """``das search`` rows/s at 1 and 100 queries against a plain pyarrow read of the embedding column."""
    import pyarrow.parquet as pq

    from bench.run import write_label_output
    from das_core.output.format import SEGMENTS_DIR
    from das_core.output.store import OutputStore
    from das_core.search.run import SEGMENT_COLUMNS, unit_hits

    labels = os.path.join(work, "search-labels")
    write_label_output(cache, labels, rows)
    segments_dir = os.path.join(labels, SEGMENTS_DIR)
    read_s = best_of(lambda: pq.read_table(segments_dir, columns=["embedding"]))
    n = sum(pq.read_metadata(os.path.join(segments_dir, f)).num_rows for f in os.listdir(segments_dir))
    out = {"search_rows": n, "read_rows_per_s": n / read_s}
    _search_seconds(labels, _queries(1, cache.dim), 10)            # warm-up: Ray Data start-up
    store = OutputStore(labels)
    part = store.read_part(SEGMENTS_DIR, sorted(os.listdir(segments_dir))[0], SEGMENT_COLUMNS)
    for m in (1, 100):
        queries = _queries(m, cache.dim)
        seconds = _search_seconds(labels, queries, 10)
        out[f"search_rows_per_s_{m}q"] = n / seconds
        out[f"search_over_read_{m}q"] = read_s / seconds
        # the per-unit work alone, in this process: read excluded, score + top-N of one part
        out[f"search_unit_rows_per_s_{m}q"] = len(part) / best_of(lambda q=queries: unit_hits(part, q, 10))
    return out
