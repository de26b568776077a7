"""Ranking one group of committed units: the work of one Ray task of ``das search`` (or one local call)."""

from __future__ import annotations

import pyarrow as pa

from das_core.output.store import OutputStore, with_embeddings
from das_core.search.queries import HITS_SCHEMA, SEGMENT, Queries, level_source, merge_hits, unit_hits


def search_group(row: dict, queries: Queries, *, embeddings: str, top: int, min_score: float | None,
                 level: str) -> pa.Table:
    """The task of one group of units (``row``: see ``unit_groups``): the group's best ``top`` rows per query
    (``HITS_SCHEMA``). Staged units are read one at a time, a pack at once; only their top rows are kept in
    between. The task lists the output itself: a unit packed since the plan is read from its pack."""
    store = OutputStore(embeddings)
    folder, columns = level_source(level)
    # a rescore run that references its label output's window embeddings: join them back unit by unit
    source = store.embedding_source() if level == SEGMENT else None
    src = OutputStore(source) if source else None
    src_listing = src.listing() if src else None
    own = [name for name in columns if name != "embedding"] + ["segment"] if src else columns
    out = []
    listing = store.listing()
    for _, units in listing.groups(row["units"]):
        tables = store.read_units(units, folder, listing, own)
        if tables:
            table = pa.concat_tables(tables, promote_options="permissive")
            if src is not None:
                table = with_embeddings(table, src, src_listing, units).select(columns)
            out.append(unit_hits(table, queries, top, min_score, level))
    # the top N of a union is the top N of its parts' top N: send the group's, not each unit's
    return merge_hits(out, queries.names, top) if out else HITS_SCHEMA.empty_table()
