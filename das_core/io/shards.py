"""Archive shards: the audio inputs inside a WebDataset tar or a Parquet file of audio bytes.

A shard is one work unit. Its members are found while it is decoded, never at
planning time (listing members means reading the shard), and each audio member
becomes one input with ``file_id`` ``<shard id>/<member>`` (tar) or the id
column's value, by default ``<shard id>#<row>`` (Parquet).

* **tar** (WebDataset): members are read in order through the shard's seekable
  reader (ranged reads on S3: a shard is never downloaded whole). The members
  of one sample share a key (the member name up to the first dot of its base
  name) and follow each other; audio members are those whose extension is one
  of the run's audio extensions (``inputs.member_extensions``), others (``.json``, ``.txt``, ``.cls``) are skipped
  and counted, and a sample's ``.json`` can be carried into the output
  (``keep_metadata``).
* **Parquet** (the Hugging Face ``datasets`` Audio layout, a column of struct
  ``bytes``/``path``, or a plain binary column): read one row group at a time.

A shard that cannot be opened, or whose audio column is missing, becomes one
error input named after the shard; a member that cannot be read becomes an
error input for that member, and the members before it are labelled.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import IO

import pyarrow as pa

from das_core.errors import AudioDecodeError
from das_core.io import storage
from das_core.io.inputs import audio_column_of, member_extensions

TAR = "tar"
PARQUET = "parquet"
SHARD_EXTENSIONS = {".tar": TAR}


@dataclass
class Member:
    """One input found in a shard, or the error that stopped the shard's reading."""

    file_id: str
    path: str                                     # shard URI + "/" + member name (tar) or "#" + row (Parquet)
    open: Callable[[], AbstractContextManager[IO[bytes]]] | None
    key: str | None = None
    metadata: str | None = None
    error: tuple[str, str] | None = None          # (error kind, message) when the member cannot be read


@dataclass
class Skips:
    """A shard's members that are not labelled (metadata, other extensions): counted by reason, with up to
    three examples each."""

    counts: dict[str, int]
    examples: dict[str, list[str]]

    def add(self, reason: str, name: str) -> None:
        """Count member ``name`` as skipped for ``reason`` (an example while fewer than three are kept)."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append(name)


def webdataset_key(name: str) -> str:
    """WebDataset's sample key: the member path up to the first dot of its base name."""
    folder, base = posixpath.split(name)
    return posixpath.join(folder, base.split(".", 1)[0])


def _bytes_reader(data: bytes) -> Callable[[], AbstractContextManager[IO[bytes]]]:
    return lambda: nullcontext(io.BytesIO(data))


def tar_members(shard_id: str, uri: str, extensions: tuple[str, ...], keep_metadata: bool,
                skips: Skips) -> Iterator[Member]:
    """The audio members of a tar shard, in order, sample by sample."""
    wanted = tuple(e.lower() for e in member_extensions(extensions))
    with storage.open_input(uri) as raw:
        try:
            tar = tarfile.open(fileobj=raw, mode="r:")
        except (tarfile.TarError, EOFError) as exc:
            yield Member(shard_id, uri, None, error=("not_audio", f"{uri}: not a tar archive ({exc})"))
            return
        sample: list[tarfile.TarInfo] = []
        key = None
        try:
            for info in tar:
                if not info.isfile():
                    continue
                if sample and webdataset_key(info.name) != key:
                    yield from _sample(tar, shard_id, uri, sample, wanted, keep_metadata, skips)
                    sample = []
                key = webdataset_key(info.name)
                sample.append(info)
        except (tarfile.TarError, EOFError, OSError) as exc:
            yield from _sample(tar, shard_id, uri, sample, wanted, keep_metadata, skips)
            yield Member(f"{shard_id}/(after {sample[-1].name if sample else 'the start'})", uri, None,
                         error=("truncated", f"{uri}: the tar archive ends early or is damaged after "
                                f"{sample[-1].name if sample else 'its start'} ({exc})"))
            return
        yield from _sample(tar, shard_id, uri, sample, wanted, keep_metadata, skips)


def _sample(tar: tarfile.TarFile, shard_id: str, uri: str, members: list[tarfile.TarInfo],
            wanted: tuple[str, ...], keep_metadata: bool, skips: Skips) -> Iterator[Member]:
    metadata = None
    audio = []
    for info in members:
        if info.name.lower().endswith(wanted):
            audio.append(info)
        else:
            skips.add("non-audio shard member", f"{uri}/{info.name}")
            if keep_metadata and info.name.lower().endswith(".json"):
                metadata = _read_text(tar, info)
    for info in audio:
        name = f"{uri}/{info.name}"
        yield Member(f"{shard_id}/{info.name}", name, _member_reader(tar, info, name),
                     key=webdataset_key(info.name), metadata=metadata)


def _read_text(tar: tarfile.TarFile, info: tarfile.TarInfo) -> str | None:
    try:
        f = tar.extractfile(info)
        return f.read().decode("utf-8", errors="replace") if f is not None else None
    except (tarfile.TarError, OSError, EOFError):
        return None


def _member_reader(tar: tarfile.TarFile, info: tarfile.TarInfo, name: str):
    def open_member():
        """The member's guarded reader (``GuardedMember``)."""
        f = tar.extractfile(info)
        if f is None:
            raise OSError(f"{name}: not a regular member")
        return GuardedMember(f, name)
    return open_member


class GuardedMember(io.RawIOBase):
    """A tar member's reader whose reads and seeks never raise: soundfile calls them from C callbacks, where
    an exception (``tarfile.ReadError`` at a truncated member) is printed as a traceback and lost. The first
    error is kept, the read returns end of data, and leaving the ``with`` block raises it as the member's
    ``truncated`` error once the decoder has returned."""

    def __init__(self, raw: IO[bytes], name: str):
        super().__init__()
        self._raw, self.name, self.error = raw, name, None

    def _guard(self, call, fallback):
        if self.error is not None:
            return fallback
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - kept and raised in __exit__, out of the C callback
            self.error = exc
            return fallback

    def readable(self) -> bool:
        """Always: a member is read."""
        return True

    def seekable(self) -> bool:
        """Always: soundfile seeks in a member, and tarfile's member reader can."""
        return True

    def readinto(self, buffer) -> int:
        """Bytes read into ``buffer``; 0 (end of data) once a read has failed."""
        return self._guard(lambda: self._raw.readinto(buffer), 0)

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all with -1); empty once a read has failed."""
        return self._guard(lambda: self._raw.read(size), b"")

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """The new position; the current one (or 0) once a read or seek has failed."""
        return self._guard(lambda: self._raw.seek(offset, whence), self._guard(self._raw.tell, 0))

    def tell(self) -> int:
        """The position; 0 once a read or seek has failed."""
        return self._guard(self._raw.tell, 0)

    def __exit__(self, *exc_info) -> None:
        from das_core.audio.info import TRUNCATED

        self.close()
        self._raw.close()
        if self.error is not None:
            raise AudioDecodeError(self.name, TRUNCATED, f"the tar member ends early or is damaged "
                                   f"({type(self.error).__name__}: {self.error})") from None


def parquet_members(shard_id: str, uri: str, audio_column: str | None, id_column: str | None) -> Iterator[Member]:
    """The audio cells of a Parquet shard, one row group at a time."""
    import pyarrow.parquet as pq

    with storage.open_input(uri) as raw:
        try:
            pf = pq.ParquetFile(raw)
        except (pa.ArrowInvalid, OSError) as exc:
            yield Member(shard_id, uri, None, error=("not_audio", f"{uri}: not a Parquet file ({exc})"))
            return
        column = audio_column_of(pf.schema_arrow, audio_column)
        if column is None or (id_column and id_column not in pf.schema_arrow.names):
            missing = f"--id-column {id_column!r}" if column else (
                f"--audio-column {audio_column!r}" if audio_column else "an audio column (struct of bytes/path "
                                                                          "or binary)")
            yield Member(shard_id, uri, None, error=("unsupported", f"{uri}: no {missing}; columns: "
                                                     f"{', '.join(pf.schema_arrow.names)}"))
            return
        row = 0
        for group in range(pf.num_row_groups):
            table = pf.read_row_group(group, columns=[column] + ([id_column] if id_column else []))
            cells = table.column(column).to_pylist()
            ids = table.column(id_column).to_pylist() if id_column else [None] * len(cells)
            for cell, given in zip(cells, ids):
                yield _parquet_member(shard_id, uri, row, cell, given)
                row += 1


def _parquet_member(shard_id: str, uri: str, row: int, cell, given) -> Member:
    file_id = str(given) if given is not None else f"{shard_id}#{row}"
    name = f"{uri}#{row}"
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    key = cell.get("path") if isinstance(cell, dict) else None
    if data is None:
        return Member(file_id, name, None, key=key, error=("empty", f"{name}: the audio cell is null"))
    return Member(file_id, name, _bytes_reader(data), key=key)
