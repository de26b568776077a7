"""``das search`` throughput: ranking stored embeddings against text/audio query vectors, on Ray Data.

Run by ``bench.run`` (``make bench`` and ``--smoke``) while its Ray instance is up; returns a dict of figures.
"""

from __future__ import annotations

import os
import time

import numpy as np

from bench.common import Sizes, best_of, log
from bench.inputs import write_label_output


def _queries(n: int, dim: int):
    from das_core.search.queries import Queries

    rng = np.random.default_rng(7)
    v = rng.standard_normal((n, dim))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return Queries(tuple(f"query {i}" for i in range(n)), v.astype(np.float32), np.zeros((n, dim), np.float32))


def _search_seconds(labels: str, queries, top: int) -> float:
    """Wall time of the distributed ranking (one task per unit) and the driver's merge, best of two."""
    import ray

    from das_core.output.store import OutputStore
    from das_core.search.plan import unit_groups, units_per_task
    from das_core.search.queries import SEGMENT, merge_hits
    from das_core.search.task import search_group
    from jobs.common import worker_env
    from jobs.pipeline import map_rows

    listing = OutputStore(labels).listing()
    units = listing.committed_units()
    groups = unit_groups(units, listing, SEGMENT, units_per_task(len(units), ray.cluster_resources().get("CPU", 1)))
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        parts = list(map_rows(groups, search_group, queries, env=worker_env(), embeddings=labels, top=top,
                              min_score=None, level=SEGMENT))
        hits = merge_hits(parts, queries.names, top)
        best = min(best, time.perf_counter() - t)
        assert len(hits) == top * len(queries)
    return best


def bench_search(cache, work: str, rows: int) -> dict:
    """``das search`` rows/s at 1 and 100 queries against a plain pyarrow read of the embedding column."""
    import pyarrow.parquet as pq

    from das_core.output.format import SEGMENTS_DIR
    from das_core.output.store import OutputStore
    from das_core.search.queries import SEGMENT_COLUMNS, unit_hits

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


def bench_search_figures(cache, work: str, sizes: Sizes) -> dict:
    """``bench_search`` at the re-scoring size, its figures logged."""
    out = bench_search(cache, work, sizes.rescore_rows)
    log(f"search over {out['search_rows']} windows: " + ", ".join(
        f"{m} quer{'y' if m == 1 else 'ies'} {out[f'search_rows_per_s_{m}q']:.0f} rows/s "
        f"({out[f'search_over_read_{m}q']:.2f} of a plain read; one unit in-process "
        f"{out[f'search_unit_rows_per_s_{m}q']:.0f} rows/s)" for m in (1, 100))
        + f"; plain read {out['read_rows_per_s']:.0f} rows/s")
    return out
