"""What to label: a local folder, an ``s3://`` prefix, a single file, or a path list.

A path list is a ``.csv`` or ``.parquet`` file (given as ``--input``) with a text ``path`` column of audio
files or shards and an optional unique ``id`` column. (A ``_manifest.json`` is something else: the record
of a das run, ``das_core.output.manifest``.) The listing is a table, ``INPUT_SCHEMA``, sorted by path.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from das_core.errors import InputError
from das_core.io import storage
from das_core.io.s3 import is_s3
from das_core.output.manifest import MANIFEST

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
                      ".snd", ".caf", ".w64", ".rf64",
                      # MPEG layer II (libsndfile) and what FFmpeg decodes (das_core.audio.decode.FFMPEG_EXTENSIONS)
                      ".m4a", ".m4b", ".m4r", ".mp4", ".aac", ".mov", ".3gp", ".3g2", ".webm", ".mka", ".mkv",
                      ".wma", ".asf", ".amr", ".ac3", ".eac3", ".mp2", ".mpa", ".dts", ".ape", ".wv", ".tta")
SHARD_EXTENSIONS = (".tar", ".parquet")
# What a folder listing picks up by default: plain audio and shards. An explicit --extensions is the whole list:
# `--extensions wav` picks up .wav files only, never a .tar or .parquet that happens to lie there.
DEFAULT_EXTENSIONS = AUDIO_EXTENSIONS + SHARD_EXTENSIONS
PATH_LIST_EXTENSIONS = (".csv", ".parquet")
DAS_OUTPUT = "das output"           # the skip reason of files under a das label/rescore output folder


@dataclass(frozen=True)
class InputFile:
    """One input of a short listing (``list_inputs``): its identity and where the decoder opens it."""

    file_id: str      # stable identity: relative path, or the path list's id
    path: str         # URI the decoder opens


def normalise_extensions(extensions: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """``--extensions`` as a tuple of lower-case ``.ext`` names (a comma-separated string or a sequence);
    ``InputError`` when it names none."""
    if isinstance(extensions, str):
        extensions = extensions.split(",")
    out = tuple("." + e.strip().lower().lstrip(".") for e in extensions if e.strip())
    if not out:
        raise InputError("no audio extensions given")
    return out


def normalise_uri(uri: str) -> str:
    """One spelling per location (``archive/``, ``./archive`` and its absolute path are the same input):
    ``storage.absolute``."""
    return storage.absolute(uri)


def member_extensions(extensions: tuple[str, ...]) -> tuple[str, ...]:
    """The extensions of audio members inside tar shards: the audio ones among ``extensions`` (a shard's
    members are never shards), or every audio extension when ``extensions`` names shard kinds only."""
    audio = tuple(e for e in extensions if e.lower() not in SHARD_EXTENSIONS)
    return audio or AUDIO_EXTENSIONS


@dataclass
class Skipped:
    """Objects under the input that are not labelled: counted by reason, with a few examples each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, uri: str, keep: int = 3) -> None:
        """Count ``uri`` as skipped for ``reason``, keeping it as an example while fewer than ``keep`` are."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < keep:
            shown.append(uri)

    @property
    def total(self) -> int:
        """Objects skipped, over all reasons."""
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        """The manifest's ``skipped`` block: the total, the counts by reason (sorted), the examples."""
        return {"total": self.total, "by_reason": dict(sorted(self.counts.items())), "examples": self.examples}


INPUT_SCHEMA = pa.schema([pa.field("file_id", pa.string()), pa.field("path", pa.string()),
                          pa.field("size", pa.int64()), pa.field("shard", pa.string())])
SHARD_KINDS = {".tar": "tar", ".parquet": "parquet"}


def shard_kind(name: str) -> str | None:
    """``tar`` or ``parquet`` for a shard's name, None for anything else."""
    lower = name.lower()
    return next((kind for ext, kind in SHARD_KINDS.items() if lower.endswith(ext)), None)


def shard_kinds(paths: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``shard_kind`` of every path, computed by Arrow (a path list may hold millions)."""
    lower = pc.utf8_lower(paths)
    kinds = pa.nulls(len(paths), pa.string())
    for ext, kind in reversed(SHARD_KINDS.items()):           # the first matching extension wins, as in shard_kind
        kinds = pc.if_else(pc.ends_with(lower, ext), pa.scalar(kind, pa.string()), kinds)
    return kinds


def audio_column_of(schema: pa.Schema, wanted: str | None) -> str | None:
    """The column holding audio bytes: ``wanted``, else the first struct with a binary ``bytes`` field
    (Hugging Face ``Audio``), else the first binary column."""
    if wanted:
        return wanted if wanted in schema.names else None
    for f in schema:
        if pa.types.is_struct(f.type) and any(c.name == "bytes" and pa.types.is_binary(c.type) or
                                              c.name == "bytes" and pa.types.is_large_binary(c.type)
                                              for c in f.type):
            return f.name
    for f in schema:
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
            return f.name
    return None


def _is_audio_parquet(uri: str) -> bool:
    """A single ``.parquet`` input is a shard when it has an audio column, a path list otherwise."""
    import pyarrow.parquet as pq

    try:
        with storage.open_input(uri) as f:
            schema = pq.ParquetFile(f).schema_arrow
    except (OSError, pa.ArrowInvalid):
        return False
    return audio_column_of(schema, None) is not None


def list_input_table(uri: str, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS) -> tuple[pa.Table, Skipped]:
    """The files to label as a table (``file_id``, ``path``, ``size``; sorted by path), and what was skipped.

    A folder or prefix is listed recursively; names with a part starting with
    ``.`` or ``_``, names without one of ``extensions`` (``.tar`` and ``.parquet``
    shards included: they are picked up only when listed) and everything under a
    folder holding a das label/rescore ``_manifest.json`` are skipped (and
    counted). The id is the path relative to the folder. A ``.csv``/``.parquet``
    file is a path list with a ``path`` column (relative paths are taken from the
    path list's folder) and an optional unique ``id`` column; sizes are then
    unknown. A single audio file is a one-file input.
    """
    skipped = Skipped()
    uri = normalise_uri(uri)
    if uri.lower().endswith(PATH_LIST_EXTENSIONS) and not (uri.lower().endswith(".parquet") and _is_audio_parquet(uri)):
        return _read_path_list(uri), skipped
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        raise InputError(f"input {uri} does not exist")
    if fs.isfile(path):
        size = fs.info(path).get("size")
        return pa.table({"file_id": [posixpath.basename(path)], "path": [uri], "size": [size],
                         "shard": [shard_kind(path)]}, schema=INPUT_SCHEMA), skipped
    root = path.rstrip("/")
    wanted = tuple(e.lower() for e in extensions)
    entries = fs.find(root, detail=True)
    outputs = _das_outputs(fs, entries, root)
    if "" in outputs:
        raise InputError(f"input {uri} is the output of a das run (it holds das's {MANIFEST}), not an archive; "
                         "give the folder of the audio files to label")
    ids, paths, sizes, shards = [], [], [], []
    for entry, info in sorted(entries.items()):
        rel = entry[len(root):].lstrip("/")
        full = storage.to_uri(fs, entry, uri)
        if any(rel.startswith(folder + "/") for folder in outputs):
            skipped.add(DAS_OUTPUT, full)       # das never reads its own parts back as input
        elif any(part.startswith((".", "_")) for part in rel.split("/")):
            skipped.add("hidden", full)
        elif not rel.lower().endswith(wanted):
            skipped.add("extension", full)
        else:
            ids.append(rel)
            paths.append(full)
            sizes.append(info.get("size"))
            shards.append(shard_kind(rel))
    if not ids:
        raise InputError(f"no audio files under {uri} (extensions: {', '.join(extensions)}; "
                         f"{skipped.total} other object(s) skipped); use --extensions to choose others")
    return pa.table({"file_id": ids, "path": paths, "size": sizes, "shard": shards}, schema=INPUT_SCHEMA), skipped


def _das_outputs(fs, entries: dict, root: str) -> list[str]:
    """The folders under ``root`` (relative; ``""`` for ``root`` itself) that hold the ``_manifest.json`` of a
    das label or rescore run: das output, whatever its extensions, is never an input."""
    found = []
    for entry in entries:
        rel = entry[len(root):].lstrip("/")
        if posixpath.basename(rel) != MANIFEST:
            continue
        try:
            data = json.loads(fs.cat_file(entry))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("job") in ("label", "rescore"):
            found.append(posixpath.dirname(rel))
    return found


def list_inputs(uri: str, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[InputFile]:
    """``list_input_table`` as ``InputFile`` objects (for short lists: noise recordings, datasets; plain audio
    by default)."""
    table, _ = list_input_table(uri, extensions)
    return [InputFile(i, p) for i, p in zip(table.column("file_id").to_pylist(), table.column("path").to_pylist())]


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _read_path_list(uri: str) -> pa.Table:
    """The path list at ``uri`` as an ``INPUT_SCHEMA`` table, sorted by path; ``InputError`` for a missing,
    unreadable or ill-formed one (the messages call it a manifest, as they always have)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise InputError(f"manifest {uri} does not exist") from None
    try:
        if uri.lower().endswith(".csv"):
            table = pcsv.read_csv(io.BytesIO(data), convert_options=pcsv.ConvertOptions(
                column_types={"path": "string", "id": "string"}))
        else:
            # from an Arrow buffer, not a Python file object: no reader thread calls back into Python (one that
            # does while the interpreter exits ends the process with a native abort)
            table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the path list's
        raise InputError(f"manifest {uri} cannot be read: {exc}") from None
    if "path" not in table.column_names:
        raise InputError(f"manifest {uri} has no 'path' column (columns: {', '.join(table.column_names)}); "
                         "give a CSV or Parquet file with a text column 'path' of audio files")
    if not _is_text(table.schema.field("path").type):
        raise InputError(f"manifest {uri}: the path column must be text (it holds {table.schema.field('path').type}); "
                         "give a 'path' column of file paths or URIs")
    paths = table.column("path").cast(pa.string())
    if paths.null_count or pc.any(pc.equal(pc.utf8_trim_whitespace(paths), "")).as_py():
        row = next(i for i, p in enumerate(paths.to_pylist()) if p is None or not p.strip())
        raise InputError(f"manifest {uri}, row {row + 1}: empty path")
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    if not is_s3(base):
        base = os.path.abspath(base)
    absolute = pc.or_(pc.starts_with(paths, "s3://"), pc.or_(pc.starts_with(paths, "s3a://"),
                                                                pc.starts_with(paths, "/")))
    joined = pc.binary_join_element_wise(pa.scalar(base.rstrip("/")), paths, "/")
    full = pc.if_else(absolute, paths, joined)
    ids = table.column("id").cast(pa.string()) if "id" in table.column_names else paths
    if ids.null_count:
        raise InputError(f"manifest {uri}: the 'id' column has empty values")
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        dup = next(c["values"] for c in counts.to_pylist() if c["counts"] > 1)
        raise InputError(f"manifest {uri}: id {dup!r} appears more than once")
    if not len(ids):
        raise InputError(f"manifest {uri} lists no files")
    shards = shard_kinds(full)
    out = pa.table({"file_id": ids, "path": full, "size": pa.nulls(len(ids), pa.int64()), "shard": shards},
                   schema=INPUT_SCHEMA)
    return out.sort_by([("path", "ascending"), ("file_id", "ascending")])
