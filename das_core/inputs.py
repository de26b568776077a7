"""What to label: a local folder, an ``s3://`` prefix, or a manifest of paths."""

from __future__ import annotations

import io
import os
import posixpath
from dataclasses import dataclass

from das_core import storage

DEFAULT_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
                      ".snd", ".caf", ".w64", ".rf64",
                      # MPEG layer II (libsndfile) and what FFmpeg decodes (das_core.audio.FFMPEG_EXTENSIONS)
                      ".m4a", ".m4b", ".m4r", ".mp4", ".aac", ".mov", ".3gp", ".3g2", ".webm", ".mka", ".mkv",
                      ".wma", ".asf", ".amr", ".ac3", ".eac3", ".mp2", ".mpa", ".dts", ".ape", ".wv", ".tta")
MANIFEST_EXTENSIONS = (".csv", ".parquet")


class InputError(Exception):
    """The input cannot be listed (missing, empty, or a manifest without a path column)."""


@dataclass(frozen=True)
class InputFile:
    file_id: str      # stable identity: relative path, or the manifest's id
    path: str         # URI the decoder opens


def normalise_extensions(extensions: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = extensions.split(",")
    out = tuple("." + e.strip().lower().lstrip(".") for e in extensions if e.strip())
    if not out:
        raise InputError("no audio extensions given")
    return out


def _relative(uri: str, root: str) -> str:
    root = root.rstrip("/")
    return uri[len(root):].lstrip("/") if uri.startswith(root + "/") else uri


def list_inputs(uri: str, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS) -> list[InputFile]:
    """The files to label, sorted by path, with unique ids.

    A folder or prefix is listed recursively and filtered by extension; the
    id is the path relative to it. A ``.csv``/``.parquet`` file is a manifest
    with a ``path`` column (relative paths are taken from the manifest's
    folder) and an optional unique ``id`` column. A single audio file is a
    one-file input.
    """
    lower = uri.lower()
    if lower.endswith(MANIFEST_EXTENSIONS):
        return _read_manifest(uri)
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        raise InputError(f"input {uri} does not exist")
    if fs.isfile(path):
        return [InputFile(posixpath.basename(path), uri)]
    files = [InputFile(_relative(u, uri), u) for u in storage.list_files(uri, extensions)]
    if not files:
        raise InputError(f"no audio files under {uri} (extensions: {', '.join(extensions)}); "
                         f"use --extensions to choose others")
    return files


def _read_manifest(uri: str) -> list[InputFile]:
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
            table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the manifest's
        raise InputError(f"manifest {uri} cannot be read: {exc}") from None
    if "path" not in table.column_names:
        raise InputError(f"manifest {uri} has no 'path' column (columns: {', '.join(table.column_names)})")
    paths = [str(p) if p is not None else "" for p in table.column("path").to_pylist()]
    ids = [str(i) for i in table.column("id").to_pylist()] if "id" in table.column_names else None
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    out = []
    for row, p in enumerate(paths):
        if not p.strip():
            raise InputError(f"manifest {uri}, row {row + 1}: empty path")
        full = p if (storage.is_s3(p) or os.path.isabs(p)) else storage.join(base, p)
        out.append(InputFile(ids[row] if ids else p, full))
    seen: set[str] = set()
    for f in out:
        if f.file_id in seen:
            raise InputError(f"manifest {uri}: id {f.file_id!r} appears more than once")
        seen.add(f.file_id)
    if not out:
        raise InputError(f"manifest {uri} lists no files")
    return sorted(out, key=lambda f: (f.path, f.file_id))
