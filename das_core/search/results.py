"""The end of a ``das search``: the groups' hits merged into the ranking, printed, written and summarised."""

from __future__ import annotations

import io
import time
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from das_core.io import storage
from das_core.search.plan import SearchPlan
from das_core.search.queries import format_hits, merge_hits


def finish_search(plan: SearchPlan, parts: Sequence[pa.Table]) -> pa.Table:
    """Merge the groups' hits into the ranking, print it, write it to ``--out`` if given, and return it."""
    config = plan.config
    hits = merge_hits(parts, plan.queries.names, config.top)
    print(format_hits(hits), flush=True)
    if config.out:
        write_hits(hits, config.out)
    print(summary_line(hits, len(plan.queries), len(plan.units), time.monotonic() - plan.start, config.out),
          flush=True)
    return hits


def write_hits(hits: pa.Table, uri: str) -> None:
    """Write ``hits`` as one Parquet file at ``uri`` (local or s3://), atomically."""
    buf = io.BytesIO()
    pq.write_table(hits, buf)
    storage.write_bytes_atomic(uri, buf.getvalue())


def summary_line(hits: pa.Table, n_queries: int, n_units: int, seconds: float, out: str | None) -> str:
    """The last line ``das search`` prints."""
    return (f"das search: {len(hits)} match(es) for {n_queries} quer{'y' if n_queries == 1 else 'ies'} over "
            f"{n_units} unit(s) in {seconds:.1f} s" + (f"; written to {out}" if out else ""))
