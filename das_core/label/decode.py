"""The decode stage of ``das label``: a unit's files (or its shard's members) into chunks of codec output.

A unit is decoded by one task into **chunks** of at most ``chunk_windows``
10 s windows (one row each: the audio of its windows as the codec gave it,
plus a small JSON description). The task runs only the codec
(``das_core.audio.native``): a chunk's ``audio`` holds one **piece** per
(file, chunk), the file's frames at its own rate and channel count, int16
or float32, covering its windows plus the resampler's context on each side;
the encoder's device does everything after (``das_core.audio.frontend``).
A file that does not fit in what is left of a chunk starts a new one when it
would fit there whole; a file longer than a chunk is cut into pieces along
window boundaries, one piece per chunk. So no block, task or
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
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from das_core.audio.decode import AudioStream
from das_core.audio.info import DECODER_CRASH, MISSING, UNREADABLE
from das_core.audio.native import NativeAudio
from das_core.audio.windows import SAMPLE_RATE, WINDOW_SAMPLES, window_count
from das_core.errors import AudioDecodeError
from das_core.io import storage
from das_core.io.inputs import DEFAULT_EXTENSIONS
from das_core.io.shards import PARQUET, TAR, Member, Skips, parquet_members, tar_members
from das_core.label.crash_watch import DecodeWatch

# What the decode stage hands the encoder: one row per chunk.
CHUNK_SCHEMA = pa.schema([
    pa.field("unit", pa.string()),
    pa.field("chunk", pa.int32()),
    pa.field("last", pa.bool_()),          # the unit's last chunk
    pa.field("n_windows", pa.int32()),
    pa.field("audio", pa.large_binary()),  # the pieces, back to back (ChunkMeta.pieces says where and what)
    pa.field("meta", pa.string()),         # JSON: ChunkMeta
])


@dataclass(frozen=True)
class DecodeSettings:
    """What the decode stage needs of a run's settings: chunk size and what a shard holds (noise is mixed on
    the encoder's device: ``das_core.label.encode.EncodeSettings``)."""

    chunk_windows: int = 32           # 32 windows: 54 MiB of 44.1 kHz stereo int16
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS   # audio members of tar shards
    audio_column: str | None = None   # Parquet shards: default, the first struct of bytes/path or binary column
    id_column: str | None = None      # Parquet shards: default <shard>#<row>
    keep_metadata: bool = False       # tar shards: carry a sample's .json into `metadata`


_ALIGN = 64                           # bytes: every piece starts aligned for any sample type


_POOL: list[np.ndarray] = []          # chunk buffers of this process, filled again once no row uses them
_POOL_SIZE = 2
_POOL_LOCK = threading.Lock()


def _free_buffer(size: int) -> np.ndarray:
    """A byte buffer of at least ``size``: one of the pool's that nothing references any more (the rows made
    of it are gone: Arrow's buffer and every view hold the array), else a new one. Reusing memory saves the
    page faults of fresh memory, which cost more than the int16 read itself."""
    with _POOL_LOCK:
        for buf in _POOL:
            # the pool's list, the loop's name and getrefcount's argument: nothing else holds it
            if len(buf) >= size and sys.getrefcount(buf) == 3:
                return buf
        buf = np.empty(size, dtype=np.uint8)
        _POOL.append(buf)
        if len(_POOL) > _POOL_SIZE:
            _POOL.pop(0)
        return buf


class _Chunk:
    """The chunk being filled: its pieces in one growing buffer, and the JSON description of what they are."""

    def __init__(self, unit: str, index: int, capacity: int):
        self.unit, self.index, self.capacity = unit, index, capacity
        self.buffer: np.ndarray | None = None     # bytes; the pieces are typed views of it
        self.used = 0
        self.windows: list[list] = []     # [file index in files, segment, start_s, end_s, noise_source]
        self.files: list[dict] = []       # files with windows here, or closing here
        self.pieces: list[dict] = []      # ChunkMeta.pieces
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

    def reserve(self, audio: NativeAudio, per_window: int) -> np.ndarray:
        """A view for ``free`` windows of ``per_window`` frames of ``audio`` and its context on both sides, at
        the end of the buffer (grown when it lacks room: the first piece sizes it for a whole chunk of pieces
        of its format). Only ``add_piece`` makes it part of the chunk."""
        frame_bytes = audio.channels * audio.dtype.itemsize
        frames = self.free * per_window + 2 * audio.context
        need = frames * frame_bytes
        if self.buffer is None or self.used + need > len(self.buffer):
            size = self.capacity * ((per_window + 2 * audio.context) * frame_bytes + _ALIGN)
            if self.buffer is not None:
                size = max(2 * len(self.buffer), self.used + need)
            grown = _free_buffer(size + _ALIGN)
            if self.used:
                grown[:self.used] = self.buffer[:self.used]
            self.buffer = grown
        return self.buffer[self.used:self.used + need].view(audio.dtype).reshape(frames, audio.channels)

    def add_piece(self, entry: int, first: int, lengths: list[int], frames: int, audio: NativeAudio) -> None:
        """Make the first ``frames`` frames of the last ``reserve``d view a piece holding windows ``first``,
        ``first + 1``, ... of file entry ``entry``, of ``lengths`` real 48 kHz samples each."""
        self.pieces.append({"offset": self.used, "frames": frames, "channels": audio.channels, "rate": audio.rate,
                            "dtype": audio.dtype.name, "context": audio.context, "window": len(self.windows),
                            "lengths": lengths})
        end = self.used + frames * audio.channels * audio.dtype.itemsize
        self.used = -(-end // _ALIGN) * _ALIGN
        self.buffer[end:self.used] = 0                           # the rows' bytes depend on the audio alone
        for k, length in enumerate(lengths, first):
            start = k * WINDOW_SAMPLES
            self.windows.append([entry, k, start / SAMPLE_RATE, (start + length) / SAMPLE_RATE, None])

    def row(self, last: bool) -> pa.Table:
        """The chunk as one ``CHUNK_SCHEMA`` row; ``last``: the unit's last chunk. The audio is the buffer
        itself, handed to Arrow without a copy."""
        meta = json.dumps({"windows": self.windows, "files": self.files, "skipped": self.skipped,
                           "pieces": self.pieces}, separators=(",", ":"))
        data = pa.py_buffer(self.buffer[:self.used] if self.used else b"")
        audio = pa.Array.from_buffers(pa.large_binary(), 1, [None, pa.py_buffer(np.array([0, self.used], np.int64)),
                                                             data])
        return pa.table({"unit": [self.unit], "chunk": [self.index], "last": [last],
                         "n_windows": [len(self.windows)], "audio": audio, "meta": [meta]}, schema=CHUNK_SCHEMA)


def _expected_windows(stream: AudioStream) -> int:
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
                yield from _reported(_decode_member(member, box, settings), unit, watch)
            position += 1
    box[0].skipped = skips.counts
    if watch is not None:
        watch.done(unit)
    yield box[0].row(last=True)


def _read_ahead(audio: NativeAudio, frames: int) -> np.ndarray:
    """Up to ``frames`` next frames of ``audio`` (fewer only at its end)."""
    out = np.empty((frames, audio.channels), dtype=audio.dtype)
    return out[:_fill(audio, out, 0)]


def _fill(audio: NativeAudio, view: np.ndarray, pos: int) -> int:
    """Read ``audio`` into ``view[pos:]`` until it is full or the stream ends; the frames ``view`` then holds."""
    while pos < len(view):
        got = audio.read_into(view[pos:])
        if got == 0:
            break
        pos += got
    return pos


def _pieces(audio: NativeAudio, box: list[_Chunk], settings: DecodeSettings, place: dict) -> Iterator[pa.Table]:
    """Read one file into pieces, one per chunk it reaches, yielding every chunk it fills; ``place`` counts
    the file's windows (``emitted``) and the piece being filled (``piece``), and makes its entries (``entry``).

    A piece holding file windows ``k0 .. k1 - 1`` holds the native frames ``[F * k0 - P, F * k1 + P)``
    (``F`` frames a window, ``P`` the context; zeros before the file's start, nothing stored after its end).
    A full piece is followed by a read of up to 1 s more: only a file with another window goes on into the
    next chunk (a tail window needs 1 s of audio), so chunks fill as they did before pieces existed.
    """
    per_window, context = audio.rate * WINDOW_SAMPLES // SAMPLE_RATE, audio.context
    first, carry = 0, np.zeros((context, audio.channels), dtype=audio.dtype)
    if box[0].free == 0:                                        # a full chunk: on only if the file has audio
        ahead = _read_ahead(audio, 1)
        if not len(ahead):
            audio.finish()
            return
        carry = np.concatenate([carry, ahead])
        yield from _next_chunk(box, settings)
    while True:
        chunk = box[0]
        view = chunk.reserve(audio, per_window)
        view[:len(carry)] = carry
        pos = _fill(audio, view, len(carry))
        if pos < len(view):                                     # the file ends in this piece
            total = audio.length_48k(first * per_window - context + pos)
            audio.finish()
            n = window_count(total) - first
            lengths = [min(WINDOW_SAMPLES, total - k * WINDOW_SAMPLES) for k in range(first, first + n)]
            if n > 0:
                chunk.add_piece(place["entry"](chunk), first, lengths, min(pos, n * per_window + 2 * context),
                                audio)
                place["emitted"] += n
            return
        n = chunk.free
        chunk.add_piece(place["entry"](chunk), first, [WINDOW_SAMPLES] * n, len(view), audio)
        place["emitted"] += n
        ahead = _read_ahead(audio, audio.rate - context)
        if len(ahead) < audio.rate - context:                 # under 1 s more: no other window
            audio.finish()
            return
        first += n
        carry = np.concatenate([view[len(view) - 2 * context:], ahead])
        yield from _next_chunk(box, settings)
        place["piece"] += 1


def _next_chunk(box: list[_Chunk], settings: DecodeSettings) -> Iterator[pa.Table]:
    """Emit the chunk being filled and start the next one."""
    yield box[0].row(last=False)
    box[0] = _Chunk(box[0].unit, box[0].index + 1, settings.chunk_windows)


def _decode_member(member: Member, box: list[_Chunk], settings: DecodeSettings) -> Iterator[pa.Table]:
    """Decode one input into ``box[0]`` (the chunk being filled), yielding every chunk it fills."""
    file_id, path = member.file_id, member.path
    extra = {"key": member.key, "metadata": member.metadata} if member.key or member.metadata else None
    meta: dict = {"duration_s": None, "sample_rate": None, "channels": None, "decoder": None}
    outcome: dict = {"status": "ok", "error": None, "error_kind": None}
    place: dict = {"emitted": 0, "piece": 0}
    place["entry"] = lambda chunk: chunk.file_entry(file_id, path, place["piece"], extra)

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
                yield from _next_chunk(box, settings)            # keep the file whole in the next chunk
            yield from _pieces(NativeAudio(stream), box, settings, place)
            meta["duration_s"] = stream.decoded_frames / info.sample_rate
    except AudioDecodeError as exc:
        outcome = {"status": "error", "error": str(exc), "error_kind": exc.kind}
    except FileNotFoundError:
        outcome = {"status": "error", "error": f"{path}: {MISSING}: no such file or object", "error_kind": MISSING}
    except Exception as exc:  # noqa: BLE001 - one bad file must never fail its unit
        outcome = {"status": "error", "error": f"{path}: {UNREADABLE}: {type(exc).__name__}: {exc}",
                   "error_kind": UNREADABLE}
    entry = place["entry"](box[0])
    box[0].files[entry].update(closes=True, n_emitted=place["emitted"], **outcome, **meta)


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
    # per piece: offset (bytes into ``audio``), frames (stored; zeros after them), channels, rate, dtype,
    # context (frames before the first window's start), window (its first window in ``windows``), lengths
    # (each window's real 48 kHz samples)
    pieces: list[dict] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> ChunkMeta:
        """The ``meta`` JSON of a chunk row, parsed."""
        data = json.loads(text)
        return cls(data["windows"], data["files"], data.get("skipped") or {}, data.get("pieces") or [])
