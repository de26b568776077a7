"""The decode stage of ``das label``: a unit's files (or its shard's members) into chunks of int16 windows.

A unit is decoded by one task into **chunks** of at most ``chunk_windows``
10 s windows (one row each: the int16 audio of its windows plus a small JSON
description). A file that does not fit in what is left of a chunk starts a
new one when it would fit there whole; a file longer than a chunk is cut into
**pieces** along window boundaries, one piece per chunk. So no block, task or
write ever holds more than ``chunk_windows`` windows, however long the file,
and chunk boundaries depend only on the unit and its audio: a retried or
resumed unit gives the same chunks, the same part names and the same rows.

Every input ends in exactly one chunk with its outcome, however it fails. Which inputs killed earlier
attempts' processes (and are given up on) is told by a ``das_core.label.crash_watch.DecodeWatch``.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from das_core.audio.decode import AudioStream
from das_core.audio.info import DECODER_CRASH, MISSING, UNREADABLE
from das_core.audio.noise import NoiseBank
from das_core.audio.windows import SAMPLE_RATE, WINDOW_SAMPLES, quantize_int16, repeat_pad
from das_core.errors import AudioDecodeError
from das_core.io import storage
from das_core.io.inputs import DEFAULT_EXTENSIONS
from das_core.io.shards import PARQUET, TAR, Member, Skips, parquet_members, tar_members
from das_core.label.crash_watch import DecodeWatch
from das_core.output.manifest import NoiseSource

# What the decode stage hands the encoder: one row per chunk.
CHUNK_SCHEMA = pa.schema([
    pa.field("unit", pa.string()),
    pa.field("chunk", pa.int32()),
    pa.field("last", pa.bool_()),          # the unit's last chunk
    pa.field("n_windows", pa.int32()),
    pa.field("audio", pa.large_binary()),  # n_windows x WINDOW_SAMPLES int16, LAION's quantisation
    pa.field("meta", pa.string()),         # JSON: ChunkMeta
])


@dataclass(frozen=True)
class DecodeSettings:
    """What the decode stage needs of a run's settings: chunk size, noise mixing, what a shard holds."""

    chunk_windows: int = 32           # 32 int16 windows: a 30 MiB chunk row
    snr_db: float | None = None
    seed: int = 0
    noise_uris: tuple[str, ...] = ()
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS   # audio members of tar shards
    audio_column: str | None = None   # Parquet shards: default, the first struct of bytes/path or binary column
    id_column: str | None = None      # Parquet shards: default <shard>#<row>
    keep_metadata: bool = False       # tar shards: carry a sample's .json into `metadata`


_BANKS: dict[tuple, NoiseBank] = {}


def _noise_bank(settings: DecodeSettings) -> NoiseBank | None:
    """One decoded-noise cache per worker process, reused across tasks."""
    if settings.snr_db is None:
        return None
    key = settings.noise_uris
    if key not in _BANKS:
        _BANKS.clear()
        _BANKS[key] = NoiseBank(list(key))
    return _BANKS[key]


class _Chunk:
    """The chunk being filled: int16 windows and the JSON description of what they are."""

    def __init__(self, unit: str, index: int, capacity: int):
        self.unit, self.index, self.capacity = unit, index, capacity
        self.audio = bytearray()
        self.windows: list[list] = []     # [file index in files, segment, start_s, end_s, noise_source]
        self.files: list[dict] = []       # files with windows here, or closing here
        self.skipped: dict[str, int] = {}  # shard members not labelled, by reason (on the unit's last chunk)

    @property
    def free(self) -> int:
        """Windows the chunk can still take."""
        return self.capacity - len(self.windows)

    def file_entry(self, file_id: str, path: str, piece: int, extra: dict | None = None) -> int:
        """The index of the chunk's entry for ``file_id`` (a new one unless the file is the last entry)."""
        if not self.files or self.files[-1]["file_id"] != file_id:
            self.files.append({"file_id": file_id, "path": path, "piece": piece, "closes": False, **(extra or {})})
        return len(self.files) - 1

    def row(self, last: bool) -> pa.Table:
        """The chunk as one ``CHUNK_SCHEMA`` row; ``last``: the unit's last chunk."""
        meta = json.dumps({"windows": self.windows, "files": self.files, "skipped": self.skipped},
                          separators=(",", ":"))
        return pa.table({"unit": [self.unit], "chunk": [self.index], "last": [last],
                         "n_windows": [len(self.windows)], "audio": [bytes(self.audio)], "meta": [meta]},
                        schema=CHUNK_SCHEMA)


def _expected_windows(stream: AudioStream) -> int:
    from das_core.audio.windows import window_count

    return window_count(int(round(stream.info.duration_s * SAMPLE_RATE)))


def _sources(file_id: str, path: str, shard: str | None, settings: DecodeSettings, skips: Skips
             ) -> Iterator[Member]:
    """What one unit-table entry holds: itself (a plain file), or a shard's members."""
    if shard == TAR:
        return tar_members(file_id, path, settings.extensions, settings.keep_metadata, skips)
    if shard == PARQUET:
        return parquet_members(file_id, path, settings.audio_column, settings.id_column)
    return iter([Member(file_id, path, lambda: storage.open_input(path))])


# Test-only: a decode process that reaches an input whose path contains this text kills itself, as a
# crashing native decoder would (tests/label/test_faults.py). Never set it in production.
TEST_CRASH_ENV = "DAS_TEST_CRASH_ON"


def _crash_for_tests(path: str) -> None:
    crash_on = os.environ.get(TEST_CRASH_ENV)
    if crash_on and crash_on in path:
        os.kill(os.getpid(), signal.SIGKILL)


def _give_up(member: Member, box: list[_Chunk], reached: int) -> Iterator[pa.Table]:
    """Close ``member`` as a ``decoder_crash`` error without decoding it.

    Ray keeps the chunks a dead attempt already sent (a retry's output with the same index is dropped), and
    those may hold the first windows of this input. So the error goes into the first chunk no earlier
    attempt began filling (emitting empty chunks up to it), marked as the last piece of a spanning file:
    ``finish_unit`` then writes its row and takes out any windows an earlier attempt sent.
    """
    while box[0].index <= reached:
        yield box[0].row(last=False)
        box[0] = _Chunk(box[0].unit, box[0].index + 1, box[0].capacity)
    extra = {"key": member.key, "metadata": member.metadata} if member.key or member.metadata else None
    entry = box[0].file_entry(member.file_id, member.path, 1, extra)
    box[0].files[entry].update(
        closes=True, n_emitted=0, status="error", error_kind=DECODER_CRASH,
        error=f"{member.path}: {DECODER_CRASH}: the decoder process died twice while decoding {member.path}",
        duration_s=None, sample_rate=None, channels=None, decoder=None)


def _reported(rows: Iterator[pa.Table], unit: str, watch: DecodeWatch | None) -> Iterator[pa.Table]:
    """``rows``, telling ``watch`` after each one that the next chunk is being filled."""
    for row in rows:
        yield row
        if watch is not None:
            watch.chunk(unit, row.column("chunk")[0].as_py() + 1)


def decode_unit(unit: str, file_ids: list[str], paths: list[str], settings: DecodeSettings,
                shard: str | None = None, watch: DecodeWatch | None = None) -> Iterator[pa.Table]:
    """Decode one unit's files (or its shard's members) in order into chunk rows (``CHUNK_SCHEMA``), streamed.

    Every input ends in exactly one chunk with ``closes`` and its outcome, however
    it fails; a unit always yields at least one chunk, the last one with ``last``.
    With ``watch``, an input on which earlier attempts' processes died twice is not
    decoded again: it becomes an error row (``decoder_crash``).
    """
    bank = _noise_bank(settings)
    box = [_Chunk(unit, 0, settings.chunk_windows)]
    skips = Skips({}, {})
    crashed, reached = watch.begin(unit) if watch is not None else ({}, -1)
    position = 0
    for file_id, path in zip(file_ids, paths):
        for member in _sources(file_id, path, shard, settings, skips):
            if position in crashed:
                yield from _reported(_give_up(member, box, reached), unit, watch)
            else:
                if watch is not None:
                    watch.at(unit, position, member.path)
                if member.error is None:
                    _crash_for_tests(member.path)
                yield from _reported(_decode_member(member, box, bank, settings), unit, watch)
            position += 1
    box[0].skipped = skips.counts
    if watch is not None:
        watch.done(unit)
    yield box[0].row(last=True)


@dataclass(frozen=True)
class _Placed:
    """Where a window sits in its file, and the noise mixed into it (``None``: clean)."""

    index: int
    start_s: float
    end_s: float
    noise_source: str | None = None


def _int16_windows(stream: AudioStream, bank: NoiseBank | None, settings: DecodeSettings, file_id: str
                   ) -> Iterator[tuple[_Placed, bytes]]:
    """The file's windows as the encoder's int16 bytes, noise mixed in first when the run asks for it."""
    if bank is None:
        for w, pcm in stream.int16_windows():
            yield _Placed(w.index, w.start_s, w.end_s), pcm
        return
    out = np.empty(WINDOW_SAMPLES, dtype=np.int16)
    for w in stream.windows():
        mixed = bank.mix(w.real, settings.snr_db, seed=settings.seed, clip_id=file_id, segment=w.index)
        samples = mixed.samples if w.length == WINDOW_SAMPLES else repeat_pad(mixed.samples)
        source = (NoiseSource.mixed(mixed.noise_uri, mixed.offset_s) if mixed.gain is not None
                  else NoiseSource.not_mixed("zero-power clip or noise"))
        yield _Placed(w.index, w.start_s, w.end_s, str(source)), quantize_int16(samples, out=out).tobytes()


def _decode_member(member: Member, box: list[_Chunk], bank: NoiseBank | None, settings: DecodeSettings
                   ) -> Iterator[pa.Table]:
    """Decode one input into ``box[0]`` (the chunk being filled), yielding every chunk it fills."""
    file_id, path = member.file_id, member.path
    extra = {"key": member.key, "metadata": member.metadata} if member.key or member.metadata else None
    pieces = emitted = 0
    meta: dict = {"duration_s": None, "sample_rate": None, "channels": None, "decoder": None}
    outcome: dict = {"status": "ok", "error": None, "error_kind": None}
    try:
        if member.error is not None:
            kind, message = member.error
            raise AudioDecodeError(path, kind, message.removeprefix(f"{path}: "))
        with member.open() as fileobj, AudioStream(fileobj, path) as stream:
            info = stream.info
            meta = {"duration_s": info.duration_s, "sample_rate": info.sample_rate, "channels": info.channels,
                    "decoder": getattr(stream, "decoder", "libsndfile")}
            chunk = box[0]
            if chunk.windows and chunk.free < _expected_windows(stream) <= chunk.capacity:
                yield chunk.row(last=False)               # keep the file whole in the next chunk
                box[0] = _Chunk(chunk.unit, chunk.index + 1, settings.chunk_windows)
            for w, pcm in _int16_windows(stream, bank, settings, file_id):
                if box[0].free == 0:
                    yield box[0].row(last=False)
                    box[0] = _Chunk(box[0].unit, box[0].index + 1, settings.chunk_windows)
                    pieces += 1 if emitted else 0
                chunk = box[0]
                entry = chunk.file_entry(file_id, path, pieces, extra)
                chunk.audio += pcm
                chunk.windows.append([entry, w.index, w.start_s, w.end_s, w.noise_source])
                emitted += 1
            meta["duration_s"] = stream.decoded_frames / info.sample_rate
    except AudioDecodeError as exc:
        outcome = {"status": "error", "error": str(exc), "error_kind": exc.kind}
    except FileNotFoundError:
        outcome = {"status": "error", "error": f"{path}: {MISSING}: no such file or object", "error_kind": MISSING}
    except Exception as exc:  # noqa: BLE001 - one bad file must never fail its unit
        outcome = {"status": "error", "error": f"{path}: {UNREADABLE}: {type(exc).__name__}: {exc}",
                   "error_kind": UNREADABLE}
    entry = box[0].file_entry(file_id, path, pieces, extra)
    box[0].files[entry].update(closes=True, n_emitted=emitted, **outcome, **meta)


def decode_units(batch: pa.Table, settings: DecodeSettings, watch: DecodeWatch | None = None
                 ) -> Iterator[pa.Table]:
    """The decode stage over unit-table rows (a Ray Data UDF, or the local runner's call): every unit of
    the batch, decoded into chunk rows."""
    shards = batch.column("shard").to_pylist() if "shard" in batch.column_names else [None] * len(batch)
    for unit, ids, paths, shard in zip(batch.column("unit").to_pylist(), batch.column("file_ids").to_pylist(),
                                       batch.column("paths").to_pylist(), shards):
        yield from decode_unit(unit, ids, paths, settings, shard, watch)


@dataclass(frozen=True)
class ChunkMeta:
    """The parsed ``meta`` of a chunk row."""

    windows: list[list]
    files: list[dict]
    skipped: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> ChunkMeta:
        """The ``meta`` JSON of a chunk row, parsed."""
        data = json.loads(text)
        return cls(data["windows"], data["files"], data.get("skipped") or {})
