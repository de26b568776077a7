"""The on-disk format of ``das label`` / ``das rescore`` output: folder and part names, schemas, the commit rule.

Layout under an output URI::

    segments/part-<unit>-c<chunk>.arrow     staged: one row per 10 s window (embedding included)
    files/part-<unit>-c<chunk>.arrow        staged: one row per input file held whole by that chunk, ok or error
    files/part-<unit>-end.arrow             staged: the unit's commit mark: rows of its files that span chunks
    segments/part-<A>-<B>.parquet           a pack: the windows of the committed units A..B (A <= B), one file
    files/part-<A>-<B>.parquet              a pack's files rows: its existence commits (packs) the range A..B
    pieces/part-<unit>-c<chunk>.arrow       transient: per-chunk maxima of spanning files (deleted at the end)

Staged parts are Arrow IPC files (``STAGED_SUFFIX``), uncompressed: each is read once, by its pack or its
unit's commit, and writing one costs a twentieth of a Parquet part of the same rows (the encoder's host side,
README "Feeding the GPU"). Engines that read ``*.parquet`` therefore see packs only: committed rows, never
a unit still being written. Format 2 runs (and format 3 runs of das before this) staged Parquet parts
(``part-<unit>-c<chunk>.parquet``); both are read.
    _work/units.parquet                     the unit table: the run's work units (das_core.label.units)
    _manifest.json                          settings, fingerprints, counts and run history

Column types. ``segments.embedding`` is ``FixedSizeList<float16|float32, D>`` (format 3; D: the checkpoint's
embedding dimension), so that Polars sees an ``Array`` and numpy an ``(n, D)`` matrix; format 2 runs hold
``list<float16|float32>`` there and still read everywhere (a ``--resume`` of one keeps writing its type).
``files.embedding`` stays ``list<...>``: its error rows are null, and pyarrow 25 cannot read a Parquet
fixed-size list with null rows back (apache/arrow#35692, fixed after 25.0.1).

Schema metadata. Every part of a format 3 run carries key-value metadata saying what made it (``run_metadata``,
read back by ``part_metadata``): the same bytes for every part of a run, no time stamp in them.

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

import functools
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SEGMENTS_DIR = "segments"
FILES_DIR = "files"
PIECES_DIR = "pieces"
# 1: das 0.1 (parts named by a hash of their file ids, no units); 2: units, list<float> embeddings, one part
# per chunk; 3: packs, segments' embeddings FixedSizeList<float, D>, schema metadata on every part
FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (2, 3)        # what rescore, search, report, evaluate and --resume read
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


def embedding_type(embedding_dtype: str, dim: int | None) -> pa.DataType:
    """``FixedSizeList<embedding_dtype, dim>``, or ``list<embedding_dtype>`` where ``dim`` is None (format 2)."""
    value_type = EMBEDDING_TYPES[embedding_dtype]
    return pa.list_(value_type) if dim is None else pa.list_(value_type, dim)


def embedding_layout(arrow_type: pa.DataType) -> tuple[str, int | None]:
    """``(embedding_dtype, dim)`` of a stored embedding column's type (``embedding_type``'s inverse; dim None
    for a ``list<...>``); ``ValueError`` for any other type."""
    if pa.types.is_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        for name, value_type in EMBEDDING_TYPES.items():
            if arrow_type.value_type == value_type:
                return name, (arrow_type.list_size if pa.types.is_fixed_size_list(arrow_type) else None)
    raise ValueError(f"embedding column has type {arrow_type}, expected a list of float16 or float32")


def label_column_names() -> frozenset[str]:
    """The names of ``label_fields``: the columns das computes, as against those it carries."""
    return frozenset(f.name for f in label_fields())


def segments_schema(embedding_dtype: str = "float16", dim: int | None = None) -> pa.Schema:
    """The ``segments`` schema (one row per window), with embeddings stored as ``embedding_dtype``:
    ``FixedSizeList<embedding_dtype, dim>``, or the ``list<embedding_dtype>`` of format 2 where ``dim`` is None."""
    return pa.schema([
        pa.field("file_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("segment", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        *label_fields(),
        pa.field("embedding", embedding_type(embedding_dtype, dim)),
        pa.field("snr_db", pa.float64()),
        pa.field("seed", pa.int64()),
        pa.field("noise_source", pa.string()),
    ])


def files_schema(embedding_dtype: str = "float16") -> pa.Schema:
    """The ``files`` schema (one row per input file, ok or error), with embeddings stored as
    ``list<embedding_dtype>``, null in error rows (not a fixed-size list: see the module docstring)."""
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
        pa.field("embedding", embedding_type(embedding_dtype, None)),   # normalised mean of its windows
    ])


FILES_SCHEMA = files_schema()

# The schema metadata keys of a part and how each value is read back (``part_metadata``).
METADATA_PREFIX = "das."
_METADATA_VALUES = {
    "job": str,                       # label | rescore
    "labels": json.loads,             # the class names, in the drift cache's order (a JSON array)
    "lam": float,
    "checkpoint_fingerprint": str,
    "checkpoint_uri": str,
    "cache_fingerprint": str,
    "das_version": str,
    "format_version": int,
}


def run_metadata(job: str, labels: tuple[str, ...] | list[str], lam: float, checkpoint_fingerprint: str,
                 checkpoint_uri: str | None, cache_fingerprint: str, das_version: str,
                 format_version: int = FORMAT_VERSION) -> tuple[tuple[str, str], ...]:
    """The schema metadata of every part of one run (``das.<key>``: text), made once per run: the same for
    every part and every rerun of the same settings (nothing in it changes with time)."""
    values = {"job": job, "labels": json.dumps(list(labels), ensure_ascii=False, separators=(",", ":")),
              "lam": repr(float(lam)),
              "checkpoint_fingerprint": checkpoint_fingerprint, "checkpoint_uri": checkpoint_uri or "",
              "cache_fingerprint": cache_fingerprint, "das_version": das_version,
              "format_version": str(format_version)}
    return tuple((METADATA_PREFIX + key, values[key]) for key in _METADATA_VALUES)


def part_metadata(path_or_schema: str | Path | pa.Schema) -> dict:
    """What made a part (a local Parquet file, or its Arrow schema): ``job``, ``labels`` (a list), ``lam`` (a
    float), ``checkpoint_fingerprint``, ``checkpoint_uri``, ``cache_fingerprint``, ``das_version``,
    ``format_version`` (an int); the keys it holds of these, so ``{}`` for a part of a format 2 run."""
    schema = path_or_schema if isinstance(path_or_schema, pa.Schema) else pq.read_schema(path_or_schema)
    stored = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    return {key: read(stored[METADATA_PREFIX + key]) for key, read in _METADATA_VALUES.items()
            if METADATA_PREFIX + key in stored}


@dataclass(frozen=True)
class PartFormat:
    """How one run's parts are typed and labelled: the embedding storage type, the embedding dimension ``dim``
    (None: the ``list<...>`` of a format 2 run) and the schema ``metadata`` (``run_metadata``). The schemas
    are made once per object (per run and actor), not per part."""

    embedding_dtype: str = "float16"
    dim: int | None = None
    metadata: tuple[tuple[str, str], ...] = ()

    @functools.cached_property
    def segments(self) -> pa.Schema:
        """The ``segments`` schema, with the metadata."""
        return segments_schema(self.embedding_dtype, self.dim).with_metadata(dict(self.metadata))

    @functools.cached_property
    def files(self) -> pa.Schema:
        """The ``files`` schema, with the metadata."""
        return files_schema(self.embedding_dtype).with_metadata(dict(self.metadata))


# das's part names: a staged part (``part-<unit>-c<chunk>|end|all``) or a pack (``part-<first>-<last>``)
PART = re.compile(r"^part-(u\d+)-(c\d+|end|all|u\d+)\.(?:parquet|arrow)$")
STAGED_SUFFIX = ".arrow"        # a staged part of a label run: Arrow IPC (``staged_name``)
PACK_UNITS = "das.units"       # a pack's key-value metadata: JSON [[unit, first row, rows], ...] in unit order
LEGACY_PART = re.compile(r"^part-[0-9a-f]{20}\.parquet$")      # das 0.1: a sha1 prefix of the part's file ids


def part_name(unit: str, tag: str | int, suffix: str = ".parquet") -> str:
    """``part-<unit>-c<chunk><suffix>`` for a chunk index, ``part-<unit>-<tag><suffix>`` otherwise."""
    return f"part-{unit}-{f'c{tag:05d}' if isinstance(tag, int) else tag}{suffix}"


def staged_name(unit: str, tag: str | int) -> str:
    """The name of a label run's staged part (an Arrow IPC file): ``part_name`` with ``STAGED_SUFFIX``."""
    return part_name(unit, tag, STAGED_SUFFIX)


def is_end_of(unit: str, names) -> bool:
    """Whether ``names`` hold ``unit``'s ``end`` part, staged (Arrow IPC) or Parquet (format 2, rescore)."""
    return part_name(unit, END_TAG) in names or staged_name(unit, END_TAG) in names


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


def _is_list(f: pa.Field) -> bool:
    """Whether ``f`` is a list column (variable or fixed size: Parquet stores both as a LIST)."""
    return pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)


def write_options(schema: pa.Schema, num_rows: int) -> dict:
    """The ``pq.write_table`` / ``pq.ParquetWriter`` options of a part of ``num_rows`` rows (``table_to_bytes``)."""
    def leaf(f: pa.Field) -> str:
        """The Parquet column path of ``f``'s values (a list's element)."""
        return f"{f.name}.list.element" if _is_list(f) else f.name

    def is_text(f: pa.Field) -> bool:
        """Whether ``f`` holds strings (or lists of them): those get dictionary encoding."""
        return pa.types.is_string(f.type) or (_is_list(f) and pa.types.is_string(f.type.value_type))

    fields = list(schema)
    return {"compression": {leaf(f): ("none" if f.name == "embedding" else "snappy") for f in fields},
            "use_dictionary": [leaf(f) for f in fields if is_text(f)] if num_rows >= DICTIONARY_MIN_ROWS else False,
            "write_statistics": [leaf(f) for f in fields if not _is_list(f)]}


def staged_bytes(table: pa.Table) -> bytes:
    """Arrow IPC file bytes of ``table`` (its schema metadata included), uncompressed: a staged part."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def table_to_bytes(table: pa.Table) -> bytes:
    """Parquet bytes, the same for the same table. Embeddings are stored plain: float values gain nothing from
    dictionary encoding or compression, which only slowed reads and writes (README, Performance). The other
    columns are Snappy-compressed (as small as zstd for these parts, at a third of the cost), text columns
    dictionary-encoded in parts of at least ``DICTIONARY_MIN_ROWS`` rows; min/max statistics are written for
    scalar columns only (a list column's min and max over all its elements selects nothing). The table's schema
    metadata (``PartFormat.metadata``) becomes the file's key-value metadata."""
    buf = io.BytesIO()
    pq.write_table(table, buf, **write_options(table.schema, table.num_rows))
    return buf.getvalue()


