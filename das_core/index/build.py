"""Building and refreshing an output's index (``build_index``), reading the committed units one at a time
through das's reader.

The index is FAISS IVF with inner product: k-means lists (``ivf_lists``) trained on a seeded sample of every
unit's rows, then each unit's rows added in turn. Stored float16 embeddings are kept as float16 in the lists
(``SQfp16`` without residuals: exact, half of ``Flat``), float32 ones as they are (``Flat``), so that the
stored embedding of a candidate can be read back exactly for the re-ranking (``das_core.index.lookup``). A
refresh adds the units committed since; it rebuilds instead when the index no longer matches the output,
or when the output has grown past ``REBUILD_GROWTH`` times the rows its lists were trained on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from das_core.errors import IndexRefused
from das_core.index.record import IndexRecord, now
from das_core.io import storage
from das_core.output.format import SEGMENTS_DIR
from das_core.output.index_files import INDEX_FILE, index_folder, remove_index, rows_name
from das_core.output.manifest import RunManifest
from das_core.output.store import OutputStore
from das_core.output.tables import embeddings_to_numpy
from das_core.search.queries import HITS_SCHEMA, SEGMENT, level_source, level_table

log = logging.getLogger("das.index")
logging.getLogger("faiss.loader").setLevel(logging.WARNING)       # not which CPU instructions it loaded

TRAIN_PER_LIST = 39          # k-means wants at least 39 training rows a list (FAISS warns below)
MIN_TRAIN_ROWS = 20_000
REBUILD_GROWTH = 4           # a refresh past 4x the trained rows rebuilds: the lists would grow too long
NPROBE_FRACTION = 1 / 32     # lists probed per query (bench.index: recall@10 >= 0.95 at far fewer, clustered)
MIN_NPROBE = 8
MAX_NPROBE = 128             # caps the rows one query scans at 128 lists (about 100 000 rows at 10^7 rows)
MIN_ROWS_SCANNED = 20_000    # a query scans at least this many rows (all of a small output): about 2 ms
META_COLUMNS = ["file_id", "path", "start_s", "end_s"]
META_SCHEMA = pa.schema([HITS_SCHEMA.field(name) for name in META_COLUMNS])
ROWS_PER_FILE = 100_000      # rows files hold about this many rows (a refresh's last one fewer), like packs
ADD_ROWS = 16_384            # rows handed to FAISS's add at a time: one list assignment product, not one a unit
ROWS_GROUP = 4_096           # in row groups this small: a hit reads one group of its file, not the file
HNSW_LISTS = 4_096           # from this many lists the lists' centres are found through an HNSW graph (FAISS's
                             # IVF<k>_HNSW32), not by comparing each row added with every centre


def ivf_lists(rows: int) -> int:
    """IVF lists for ``rows`` rows: 4 sqrt(n), FAISS's guideline, but at most n / 39 (k-means' training rows per
    list) and at least 1 (one list: an exact scan, for a tiny output)."""
    return max(1, min(int(4 * math.sqrt(rows)), rows // TRAIN_PER_LIST))


def default_nprobe(lists: int, rows: int) -> int:
    """Lists a query probes in an index of ``rows`` rows: 1/32 of them, at most 128, but at least 8 and enough
    for ``MIN_ROWS_SCANNED`` rows (a small output's lists hold few rows each: recall fell to 0.7 at 3000 rows
    and 8 of 76 lists in bench.index)."""
    by_rows = math.ceil(lists * MIN_ROWS_SCANNED / max(rows, 1))
    return min(lists, max(MIN_NPROBE, by_rows, min(MAX_NPROBE, math.ceil(lists * NPROBE_FRACTION))))


@dataclass
class IndexSource:
    """An output to index: its store, the committed units, the checkpoint fingerprint of its embeddings."""

    uri: str
    store: OutputStore
    units: list[str]
    checkpoint: str
    level: str


def check_indexable(uri: str, level: str) -> IndexSource:
    """The output at ``uri``, refused (one line) when it is not das's, holds no committed unit, holds no
    embeddings of its own (a rescore run referencing its label output's) or lacks the level's column."""
    from das_core.search.plan import check_columns

    uri = storage.absolute(uri)
    manifest = RunManifest.require(uri, "das index")
    checkpoint = manifest.require_checkpoint(uri)
    store = OutputStore(uri)
    source = store.embedding_source()
    if source:
        raise IndexRefused(f"{uri} holds no embeddings of its own (this rescore run reads those of {source}): "
                           f"index the label output with `das index {source}`")
    listing = store.listing()
    units = listing.committed_units()
    if not units:
        raise IndexRefused(f"{uri} has no committed unit yet: nothing to index; run `das label` (or let it "
                           "finish) first")
    check_columns(store, listing, units, level)
    return IndexSource(uri, store, units, checkpoint, level)


def unit_rows(store: OutputStore, unit: str, level: str) -> pa.Table:
    """One unit's rankable rows (file_id, path, start_s, end_s, embedding) in index order: by file_id, then
    start, whatever the order of its parts on disk."""
    columns = level_source(level)[1]
    table = (store.read_segments([unit], columns) if level == SEGMENT else store.read_files([unit], columns))
    return level_table(table, level).sort_by([("file_id", "ascending"), ("start_s", "ascending")])


def unit_tables(source: IndexSource, units: list[str] | None = None) -> Iterator[tuple[str, pa.Table]]:
    """``(unit, unit_rows)`` for ``units`` (default: every committed unit) in unit order, reading each pack once
    (a pack holds many units: reading them one at a time would read it once per unit)."""
    folder, columns = level_source(source.level)
    listing = source.store.listing()
    for _, group in listing.groups(source.units if units is None else units):
        for unit, table in source.store.read_by_unit(group, folder, listing, columns):
            if table is None:            # no rows of its own here (every file failed): an empty table, typed
                yield unit, unit_rows(source.store, unit, source.level)
            else:
                yield unit, level_table(table, source.level).sort_by([("file_id", "ascending"),
                                                                       ("start_s", "ascending")])


def training_sample(source: IndexSource, rows: int, size: int) -> tuple[np.ndarray, bool]:
    """About ``size`` of the output's rows, drawn from every unit with a seeded generator, as float32; and
    whether the stored embeddings are float16."""
    keep_share = min(1.0, size / max(rows, 1))
    picked, fp16 = [], True
    for number, (_, table) in enumerate(unit_tables(source)):
        if not len(table):
            continue
        fp16 = pa.types.is_float16(table.column("embedding").type.value_type)
        chosen = np.random.default_rng([7, number]).random(len(table)) < keep_share
        picked.append(embeddings_to_numpy(table.column("embedding").filter(pa.array(chosen))))
    sample = [p for p in picked if len(p)]
    return (np.concatenate(sample) if sample else np.zeros((0, 0), np.float32)), fp16


def count_rows(source: IndexSource) -> int:
    """The output's rankable rows (one read of file_id, and status for files)."""
    if source.level == SEGMENT:
        listing = source.store.listing()
        return sum(len(table) for _, group in listing.groups(source.units)
                   for _, table in source.store.read_by_unit(group, SEGMENTS_DIR, listing, ["file_id"])
                   if table is not None)
    return sum(len(table) for _, table in unit_tables(source))


def new_index(source: IndexSource):
    """A trained, empty FAISS index for ``source`` and its record."""
    import faiss

    rows = count_rows(source)
    lists = ivf_lists(rows)
    sample, fp16 = training_sample(source, rows, max(TRAIN_PER_LIST * lists, MIN_TRAIN_ROWS))
    if not len(sample):
        raise IndexRefused(f"{source.uri}: its committed units hold no embedding at --level {source.level}: "
                           "nothing to index")
    factory = f"IVF{lists}{'_HNSW32' if lists >= HNSW_LISTS else ''},{'SQfp16' if fp16 else 'Flat'}"
    index = faiss.index_factory(sample.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.by_residual = False                  # the lists keep the stored values themselves
    ivf.cp.min_points_per_centroid = 1       # a tiny output: fewer rows than FAISS's 39 a list is expected
    index.train(sample)
    from das_core import __version__

    record = IndexRecord(level=source.level, checkpoint=source.checkpoint, library_version=faiss.__version__,
                         das_version=__version__, built=now(), parameters={
                             "factory": factory, "metric": "inner_product", "lists": lists,
                             "nprobe": default_nprobe(lists, rows), "trained_rows": int(len(sample)),
                             "rows_when_trained": rows})
    return index, record


def load_index(uri: str, record: IndexRecord):
    """The FAISS index of ``record`` in ``uri``'s index folder, or None where it is missing or holds other rows
    than the record says (a refresh cut short)."""
    import faiss

    path = storage.join(index_folder(uri, record.level), INDEX_FILE)
    if not storage.exists(path):
        return None
    with storage.open_input(path) as f:
        reader = faiss.PyCallbackIOReader(f.read)      # streamed: the file is never in memory twice
        index = faiss.read_index(reader)
        del reader
    return index if index.ntotal == record.rows else None


def stale_reason(source: IndexSource, record: IndexRecord | None) -> str | None:
    """Why the recorded index cannot be refreshed and must be rebuilt, or None when it can."""
    if record is None:
        return "no index yet"
    if record.rows and not record.rows_files:
        return "an older das built it (one rows file per unit)"
    if record.checkpoint != source.checkpoint:
        return "it indexes embeddings of another checkpoint"
    gone = sorted(set(record.units) - set(source.units))
    if gone:
        return f"{len(gone)} unit(s) it covers are no longer committed (the output was rewritten)"
    return None


def add_units(source: IndexSource, index, record: IndexRecord, units: list[str]) -> None:
    """Add ``units``' rows to ``index`` (one unit read at a time), their metadata to rows files of about
    ``ROWS_PER_FILE`` rows each."""
    folder = index_folder(source.uri, source.level)
    pending, first, vectors = [], record.rows, []
    for unit, table in unit_tables(source, units):
        if len(table):
            vectors.append(embeddings_to_numpy(table.column("embedding")))
            pending.append(table.select(META_COLUMNS).cast(META_SCHEMA))
        record.add_unit(unit, len(table))
        if sum(map(len, vectors)) >= ADD_ROWS:
            index.add(np.ascontiguousarray(np.concatenate(vectors)))
            vectors = []
        if record.rows - first >= ROWS_PER_FILE:
            write_rows(folder, record, first, pending)
            pending, first = [], record.rows
    if vectors:
        index.add(np.ascontiguousarray(np.concatenate(vectors)))
    if pending:
        write_rows(folder, record, first, pending)


def write_rows(folder: str, record: IndexRecord, first: int, tables: list[pa.Table]) -> None:
    """Write the rows of ``tables`` (ids from ``first`` on) as one rows file, in row groups of ``ROWS_GROUP``."""
    import pyarrow.parquet as pq

    table = pa.concat_tables(tables)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, row_group_size=ROWS_GROUP, compression="snappy")
    storage.write_bytes_atomic(storage.join(folder, rows_name(first)), buffer.getvalue().to_pybytes())
    record.rows_files.append([first, len(table)])


def save(uri: str, index, record: IndexRecord) -> None:
    """Write the index, with its map from row id to list (the re-ranking reads rows back by id), then its
    record (last: the record names what the index holds). The index is streamed to its file."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    if ivf.direct_map.no():
        ivf.make_direct_map()

    def fill(f) -> None:
        """Write the index into ``f``."""
        writer = faiss.PyCallbackIOWriter(f.write)
        faiss.write_index(index, writer)
        del writer

    storage.write_atomic(storage.join(index_folder(uri, record.level), INDEX_FILE), fill)
    record.write(uri)


def build_index(uri: str, level: str, rebuild: bool = False) -> tuple[IndexRecord, list[str], str | None]:
    """Build (or refresh) ``uri``'s index at ``level``: the record, the units added, and why it was rebuilt
    (None for a refresh). Without ``rebuild`` only the units committed since are added, where that is valid."""
    source = check_indexable(uri, level)
    record = IndexRecord.read(source.uri, level)
    index = None
    why = "--rebuild" if rebuild else stale_reason(source, record)
    if why is None:
        index = load_index(source.uri, record)
        grown = record.rows + count_new_rows(source, record)
        if index is None:
            why = "its index file is missing or does not match its record"
        elif grown > REBUILD_GROWTH * max(record.parameters.get("rows_when_trained", 0), 1):
            why = f"the output grew to {grown} rows, over {REBUILD_GROWTH}x the rows its lists were made for"
    if why is not None:
        remove_index(source.uri, level)
        index, record = new_index(source)
    todo = [u for u in source.units if u not in record.units]
    add_units(source, index, record, todo)
    if why is None:
        record.refreshed = now()
    save(source.uri, index, record)
    return record, todo, why


def count_new_rows(source: IndexSource, record: IndexRecord) -> int:
    """Rows of the committed units the record does not cover yet."""
    new = [u for u in source.units if u not in record.units]
    return count_rows(IndexSource(source.uri, source.store, new, source.checkpoint, source.level)) if new else 0
