"""The on-disk format of ``das label`` / ``das rescore`` output: folder and part names, schemas, the commit rule.

Layout under an output URI::

    segments/part-<unit>-c<chunk>.parquet   one row per 10 s window (embedding included)
    files/part-<unit>-c<chunk>.parquet      one row per input file held whole by that chunk, ok or error
    files/part-<unit>-end.parquet           the unit's commit mark: rows of its files that span chunks
    segments/part-<A>-<B>.parquet           a pack: the windows of the committed units A..B (A <= B), one file
    files/part-<A>-<B>.parquet              a pack's files rows: its existence commits (packs) the range A..B
    pieces/part-<unit>-c<chunk>.parquet     transient: per-chunk maxima of spanning files (deleted at the end)
    _work/units.parquet                     the unit table: the run's work units (das_core.label.units)
    _manifest.json                          settings, fingerprints, counts and run history

Commit rule. Each part appears atomically (rename, or a single S3 PUT). A
chunk's ``segments`` part is written before its ``files`` part, and a unit's
``end`` part only once every chunk of the unit is written, so a ``files`` row
always means that the file's windows are all there. A unit is **committed**
when its ``end`` part exists: readers (rescore, evaluate, search) read only
committed units, and ``--resume`` redoes every unit that is not, after
deleting whatever parts it left. Names derive from the unit and chunk, which
the unit table and the audio fix, so a retried unit overwrites instead of
duplicating. ``das rescore`` writes ``part-<unit>-all`` (segments) and
``part-<unit>-end`` (files) under the same rule.

Packs (format 3). Once a contiguous range of units is committed, a pack
merges their parts into one ``segments`` and one ``files`` file named by the
range (``das_core.output.pack``): segments pack first, files pack second,
then the range's staged parts are deleted. A range is **packed** when its
``files`` pack exists; readers then read its units from the pack and ignore
any staged part of them. A ``segments`` pack without its ``files`` pack (a
pack interrupted after its first write) is ignored by readers and deleted by
``--resume``. A pack's Parquet key-value metadata ``das.units`` records each
unit's row offset and count, so one unit can be read from it.

The tables are built in ``das_core.output.tables``; parts are read and written by ``das_core.output.store``.
"""

from __future__ import annotations

import io
import re

import pyarrow as pa
import pyarrow.parquet as pq

SEGMENTS_DIR = "segments"
FILES_DIR = "files"
PIECES_DIR = "pieces"
FORMAT_VERSION = 3          # 1: das 0.1 (parts named by a hash of their file ids, no units); 2: no packs
READABLE_FORMATS = (2, 3)   # the layouts this das reads, resumes and re-scores
END_TAG = "end"
MANIFEST_JOBS = ("label", "rescore")      # the jobs whose manifest describes parts under these folders
# The unit table (``das_core.label.units``): its folder and file name under an output; old runs resume from it.
UNIT_TABLE_DIR = "_work"
UNIT_TABLE_FILE = "units.parquet"

OK = "ok"
ERROR = "error"

EMBEDDING_TYPES = {"float16": pa.float16(), "float32": pa.float32()}


def label_fields() -> list[pa.Field]:
    """The label columns that ``segments`` and ``files`` share (DAS top-k, plain zero-shot, probabilities)."""
    return [
        pa.field("label", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("top_k_labels", pa.list_(pa.string())),
        pa.field("top_k_scores", pa.list_(pa.float32())),
        pa.field("zs_label", pa.string()),
        pa.field("zs_score", pa.float32()),
        pa.field("top_k_probs", pa.list_(pa.float32())),     # with --probabilities, else null
    ]


def segments_schema(embedding_dtype: str = "float16") -> pa.Schema:
    """The ``segments`` schema (one row per window), with embeddings stored as ``embedding_dtype``."""
    return pa.schema([
        pa.field("file_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("segment", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        *label_fields(),
        pa.field("embedding", pa.list_(EMBEDDING_TYPES[embedding_dtype])),
        pa.field("snr_db", pa.float64()),
        pa.field("seed", pa.int64()),
        pa.field("noise_source", pa.string()),
    ])


def files_schema(embedding_dtype: str = "float16") -> pa.Schema:
    """The ``files`` schema (one row per input file, ok or error), with embeddings stored as ``embedding_dtype``."""
    return pa.schema([
        pa.field("file_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),
        pa.field("n_segments", pa.int32(), nullable=False),
        pa.field("duration_s", pa.float64()),
        pa.field("sample_rate", pa.int32()),
        pa.field("channels", pa.int32()),
        pa.field("decoder", pa.string()),
        pa.field("key", pa.string()),              # WebDataset key / Parquet audio path of a shard member
        pa.field("metadata", pa.string()),         # the sample's .json, with --keep-metadata
        *label_fields(),
        pa.field("embedding", pa.list_(EMBEDDING_TYPES[embedding_dtype])),   # normalised mean of its windows
    ])


FILES_SCHEMA = files_schema()

# das's part names: a staged part (``part-<unit>-c<chunk>|end|all``) or a pack (``part-<first>-<last>``)
PART = re.compile(r"^part-(u\d+)-(c\d+|end|all|u\d+)\.parquet$")
PACK_UNITS = "das.units"       # a pack's key-value metadata: JSON [[unit, first row, rows], ...] in unit order
LEGACY_PART = re.compile(r"^part-[0-9a-f]{20}\.parquet$")      # das 0.1: a sha1 prefix of the part's file ids


def part_name(unit: str, tag: str | int) -> str:
    """``part-<unit>-c<chunk>.parquet`` for a chunk index, ``part-<unit>-<tag>.parquet`` otherwise."""
    return f"part-{unit}-{f'c{tag:05d}' if isinstance(tag, int) else tag}.parquet"


def parse_part_name(name: str) -> tuple[str, str] | None:
    """``(unit, tag)`` of a part name (a pack's: its first unit and its last), None for anything else."""
    m = PART.match(name)
    return (m.group(1), m.group(2)) if m else None


def pack_name(first: str, last: str) -> str:
    """``part-<first>-<last>.parquet``: the name of the pack of the units ``first`` .. ``last``."""
    return f"part-{first}-{last}.parquet"


def parse_pack_name(name: str) -> tuple[str, str] | None:
    """``(first unit, last unit)`` of a pack's name, None for anything else (a staged part included)."""
    parsed = parse_part_name(name)
    return parsed if parsed and parsed[1].startswith("u") else None


def unit_number(unit: str) -> int:
    """The index of ``unit`` (``u00000042`` -> 42)."""
    return int(unit[1:])


def unit_range(first: str, last: str) -> list[str]:
    """Every unit from ``first`` to ``last`` (unit ids are consecutive: ``das_core.label.units.unit_id``)."""
    width = len(first) - 1
    return [f"u{i:0{width}d}" for i in range(unit_number(first), unit_number(last) + 1)]


# Dictionary encoding costs each text column a fixed setup (half the write time of a 32-row part) and pays
# for itself only in parts of many rows (faster and smaller there).
DICTIONARY_MIN_ROWS = 1024


def write_options(schema: pa.Schema, num_rows: int) -> dict:
    """The ``pq.write_table`` / ``pq.ParquetWriter`` options of a part of ``num_rows`` rows (``table_to_bytes``)."""
    def leaf(f: pa.Field) -> str:
        """The Parquet column path of ``f``'s values (a list's element)."""
        return f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name

    def is_text(f: pa.Field) -> bool:
        """Whether ``f`` holds strings (or lists of them): those get dictionary encoding."""
        return pa.types.is_string(f.type) or (pa.types.is_list(f.type) and pa.types.is_string(f.type.value_type))

    fields = list(schema)
    return {"compression": {leaf(f): ("none" if f.name == "embedding" else "snappy") for f in fields},
            "use_dictionary": [leaf(f) for f in fields if is_text(f)] if num_rows >= DICTIONARY_MIN_ROWS else False,
            "write_statistics": [leaf(f) for f in fields if not pa.types.is_list(f.type)]}


def table_to_bytes(table: pa.Table) -> bytes:
    """Parquet bytes, the same for the same table. Embeddings are stored plain: float values gain nothing from
    dictionary encoding or compression, which only slowed reads and writes (README, Performance). The other
    columns are Snappy-compressed (as small as zstd for these parts, at a third of the cost), text columns
    dictionary-encoded in parts of at least ``DICTIONARY_MIN_ROWS`` rows; min/max statistics are written for
    scalar columns only (a list column's min and max over all its elements selects nothing)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, **write_options(table.schema, table.num_rows))
    return buf.getvalue()


