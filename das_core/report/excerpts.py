"""The playable excerpts of report.html: windows cut from the source audio with das's own decoder and written
as Opus in Ogg (``cut_excerpts``).

An excerpt is the window exactly as the label job read it: the source decoded by ``AudioStream`` (libsndfile
or FFmpeg, the same choice and the same checks), downmixed to mono, resampled to 48 kHz, samples
``start_s * 48000`` to ``end_s * 48000``. It is the *source* audio: noise that a run mixed in (``--snr-db``)
is not in it. Shard members are read as the job reads them: a tar member through the shard's reader
(``<shard>.tar/<member>``), a Parquet shard's audio cell by its row (``<shard>.parquet#<row>``).

A source that has gone, changed or fails to decode gives a note in place of its excerpts, never an error.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import numpy as np
import pyarrow as pa

from das_core.audio.decode import AudioStream
from das_core.audio.windows import SAMPLE_RATE
from das_core.errors import AudioDecodeError
from das_core.io import storage
from das_core.io.inputs import audio_column_of
from das_core.io.shards import GuardedMember
from das_core.report.picks import Pick

OPUS_BITRATE = 24_000           # bits/s, constant bit rate: 30 000 bytes per 10 s window, plus Ogg framing
_TAR_MEMBER = re.compile(r"^(.+?\.tar)/(.+)$", re.IGNORECASE)
_PARQUET_ROW = re.compile(r"^(.+\.parquet)#(\d+)$", re.IGNORECASE)
# What a missing, changed or undecodable source raises: each becomes a note in the report, never its failure.
SOURCE_ERRORS = (AudioDecodeError, OSError, EOFError, tarfile.TarError, pa.ArrowException, ValueError, KeyError)


@dataclass(frozen=True)
class Excerpt:
    """One window's excerpt: the Ogg/Opus bytes, or a note saying why there are none."""

    data: bytes | None
    note: str | None = None


def encode_opus(samples: np.ndarray) -> bytes:
    """Mono 48 kHz float32 ``samples`` as an Ogg/Opus file at ``OPUS_BITRATE`` (PyAV's libopus). Its decoded
    length is the input's, to the sample, from 1 s (das's shortest window) on: the Ogg granule positions trim
    the encoder's padding."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=SAMPLE_RATE, layout="mono",
                                options={"b": str(OPUS_BITRATE), "vbr": "off", "application": "audio"})
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32)[None, :], format="flt",
                                           layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


@contextmanager
def open_source(path: str, audio_column: str | None = None) -> Iterator[IO[bytes]]:
    """A seekable reader of the audio at ``path`` as a ``files``/``segments`` row names it: a plain file or
    object, a tar shard's member, or a Parquet shard's audio cell (``audio_column``: the run's
    ``--audio-column``). ``FileNotFoundError`` when the source, or the member, is not there."""
    tar_member, parquet_row = _TAR_MEMBER.match(path), _PARQUET_ROW.match(path)
    if tar_member and not storage.exists(path):
        with storage.open_input(tar_member.group(1)) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            info = next((m for m in tar if m.name == tar_member.group(2) and m.isfile()), None)
            if info is None:
                raise FileNotFoundError(f"{path}: the shard no longer holds this member")
            with GuardedMember(tar.extractfile(info), path) as member:
                yield member
    elif parquet_row and not storage.exists(path):
        yield io.BytesIO(_parquet_cell(parquet_row.group(1), int(parquet_row.group(2)), audio_column, path))
    else:
        with storage.open_input(path) as raw:
            yield raw


def _parquet_cell(shard: str, row: int, audio_column: str | None, path: str) -> bytes:
    """The audio bytes of row ``row`` of a Parquet shard (its row group only is read)."""
    import pyarrow.parquet as pq

    with storage.open_input(shard) as raw:
        pf = pq.ParquetFile(raw)
        column = audio_column_of(pf.schema_arrow, audio_column)
        if column is None:
            raise KeyError(f"{shard}: no audio column")
        first = 0
        for group in range(pf.num_row_groups):
            rows = pf.metadata.row_group(group).num_rows
            if row < first + rows:
                cell = pf.read_row_group(group, columns=[column]).column(column)[row - first].as_py()
                data = cell.get("bytes") if isinstance(cell, dict) else cell
                if not data:
                    raise FileNotFoundError(f"{path}: the audio cell is empty")
                return data
            first += rows
    raise FileNotFoundError(f"{path}: the shard has only {first} rows")


def _cut(stream: AudioStream, windows: list[Pick]) -> dict[Pick, np.ndarray]:
    """The mono 48 kHz samples of each window, decoding the stream only as far as the last window's end."""
    bounds = {w: (round(w.start_s * SAMPLE_RATE), round(w.end_s * SAMPLE_RATE)) for w in windows}
    pieces: dict[Pick, list[np.ndarray]] = {w: [] for w in windows}
    last = max(end for _, end in bounds.values())
    pos = 0
    for block in stream.mono48k():
        end = pos + len(block)
        for w, (a, b) in bounds.items():
            lo, hi = max(a, pos), min(b, end)
            if lo < hi:
                pieces[w].append(block[lo - pos:hi - pos])
        pos = end
        if pos >= last:
            break
    return {w: np.concatenate(p) if p else np.zeros(0, np.float32) for w, p in pieces.items()}


def _source_note(exc: BaseException) -> str:
    """What the report says in place of the excerpts of a source that raised ``exc``."""
    if isinstance(exc, FileNotFoundError):
        return f"the source is no longer there ({exc})"
    if isinstance(exc, AudioDecodeError):
        return f"the source no longer decodes ({exc})"
    return f"the source cannot be read ({type(exc).__name__}: {exc})"


def cut_source(path: str, windows: list[Pick], audio_column: str | None = None) -> dict[Pick, Excerpt]:
    """The excerpts of ``windows``, all of the source ``path``, which is decoded once (see the module)."""
    try:
        with open_source(path, audio_column) as raw, AudioStream(raw, path) as stream:
            cut = _cut(stream, windows)
    except SOURCE_ERRORS as exc:
        note = _source_note(exc)
        return {w: Excerpt(None, note) for w in windows}
    out = {}
    for w, samples in cut.items():
        expected = round(w.end_s * SAMPLE_RATE) - round(w.start_s * SAMPLE_RATE)
        if len(samples) != expected:
            out[w] = Excerpt(None, f"the source has changed since it was labelled: it ends before "
                                   f"{w.end_s:.2f} s (decoded {len(samples) / SAMPLE_RATE:.2f} s of the window)")
        else:
            out[w] = Excerpt(encode_opus(samples))
    return out


def cut_excerpts(windows: list[Pick], audio_column: str | None = None) -> dict[tuple[str, int], Excerpt]:
    """The excerpt of every window, keyed by (file id, segment); each source is opened and decoded once."""
    by_source: dict[str, list[Pick]] = {}
    for w in windows:
        by_source.setdefault(w.path, []).append(w)
    out: dict[tuple[str, int], Excerpt] = {}
    for path, picks in sorted(by_source.items()):
        for w, excerpt in cut_source(path, picks, audio_column).items():
            out[(w.file_id, w.segment)] = excerpt
    return out
