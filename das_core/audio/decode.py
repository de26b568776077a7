"""Decoding audio into mono 48 kHz blocks, streamed: ``AudioStream``, the libsndfile path, choosing the reader.

Everything the model sees is mono, 48 kHz, float32 in [-1, 1], cut into
10 s windows (480 000 samples, ``das_core.audio.windows``), as LAION-CLAP was
trained:

* any container libsndfile reads (WAV, FLAC, OGG/Vorbis, AIFF, MP3, ...) is
  decoded by libsndfile (the fast path, here); everything else FFmpeg reads (AAC in
  M4A/MP4/MOV, Opus/Vorbis in WebM/Matroska, WMA, AMR, AC-3, ...) by FFmpeg
  through PyAV (``das_core.audio.ffmpeg``). Both read a file object or bytes, never
  a path, so S3 objects stream through ranged reads; ``AudioStream.decoder``
  says which one read a file;
* channels are averaged to mono, then resampled with soxr's streaming
  resampler (quality "HQ"): a one-hour file is never held whole in memory;
* headers, non-finite samples and streams that end early are refused as
  ``AudioDecodeError`` with one of the kinds of ``das_core.audio.info``.

The pipeline's fast path is ``AudioStream.int16_windows()`` (or ``windows()``
with ``quantize_int16(..., out=)`` when noise is mixed in): no allocation per
block or window, results bit-identical to ``segment(mono48k())`` + LAION's
``float32_to_int16``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import IO, Protocol

import numpy as np
import soundfile as sf
import soxr

from das_core.audio.info import (
    EMPTY,
    FFMPEG,
    LIBSNDFILE,
    NON_FINITE,
    NOT_AUDIO,
    TRUNCATED,
    UNREADABLE,
    UNSUPPORTED,
    AudioInfo,
    Seconds,
    block_frames_for,
)
from das_core.audio.windows import (
    MIN_TAIL_SECONDS,
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    Window,
    quantize_int16,
    segment,
)
from das_core.errors import AudioDecodeError

MIN_INPUT_RATE = 1_000
MAX_INPUT_RATE = 768_000
MAX_CHANNELS = 64

# Containers libsndfile cannot read: these go straight to FFmpeg. Any other
# file libsndfile refuses (MP2 and MPA it reads) is offered to FFmpeg too.
FFMPEG_EXTENSIONS = (".m4a", ".m4b", ".m4r", ".mp4", ".aac", ".mov", ".3gp", ".3g2", ".webm", ".mka", ".mkv",
                     ".wma", ".asf", ".amr", ".ac3", ".eac3", ".dts", ".ape", ".wv", ".tta")




_SHOULD_BE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Sizes that streaming writers leave in a header they never go back to fix.
_PLACEHOLDER_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFF - 8}


def _truncation_note(extra_info: str) -> str | None:
    """libsndfile trims truncated files silently; its log still says so."""
    m = _SHOULD_BE.search(extra_info)
    if m:
        declared, present = int(m.group(1)), int(m.group(2))
        if declared > present and declared not in _PLACEHOLDER_SIZES:
            return f"header declares {declared} bytes of audio data, file holds {present}"
    if "lacks an end-of-stream" in extra_info:
        return "the last Ogg page lacks its end-of-stream mark"
    return None


class _Reader(Protocol):
    """A decoder backend: the container's ``info`` and its audio as mono float32 blocks at the input rate."""

    info: AudioInfo
    frames_read: int
    truncation_slack: int | None     # frames a stream may end short of ``info.frames``; None: no check

    def blocks(self) -> Iterator[np.ndarray]:
        """The audio as mono float32 blocks at the input rate, counted in ``frames_read``; ``AudioDecodeError``
        where decoding fails."""
        ...

    def close(self) -> None:
        """Release the container (idempotent)."""
        ...


class _SndfileReader:
    """libsndfile: blocks read into one preallocated buffer and downmixed into another (no per-block allocation)."""

    def __init__(self, fileobj: IO[bytes], name: str, block_frames: int | None):
        self.name = name
        try:
            self.soundfile = sf.SoundFile(fileobj)
        except sf.LibsndfileError as exc:
            raise _open_error(name, exc) from None
        except (RuntimeError, ValueError, TypeError) as exc:
            raise AudioDecodeError(name, UNREADABLE, str(exc)) from None
        f = self.soundfile
        self.info = AudioInfo(f.samplerate, f.channels, f.frames, f.format, f.subtype)
        self.extra_info = f.extra_info
        self.frames_read = 0
        # MPEG audio in a WAV: the 'fact' chunk counts the encoder's padding, libsndfile's decoder drops
        # up to a frame (1 152 samples) of it; seen 504 frames short on an intact file
        self.truncation_slack = 2 * 1152 if f.subtype.startswith("MPEG_LAYER") else 0
        self._block_frames = block_frames or block_frames_for(f.channels)

    def blocks(self) -> Iterator[np.ndarray]:
        """Mono float32 blocks of ``block_frames`` frames (the last one shorter), each a view of one buffer that
        the next block overwrites; ``AudioDecodeError`` (truncated or unreadable) where libsndfile fails."""
        info, n = self.info, self._block_frames
        channels = info.channels
        raw = np.empty(n if channels == 1 else (n, channels), dtype=np.float32)
        mono = raw if channels == 1 else np.empty(n, dtype=np.float32)
        while True:
            try:
                got = len(self.soundfile.read(n, dtype="float32", out=raw))
            except sf.LibsndfileError as exc:
                decoded = self.frames_read / info.sample_rate
                kind = TRUNCATED if self.frames_read < info.frames else UNREADABLE
                raise AudioDecodeError(self.name, kind, f"decoding failed after {decoded:.2f} s of "
                                       f"{info.duration_s:.2f} s: {_libsndfile_message(exc)}") from None
            if got == 0:
                return
            if channels > 1:
                downmix(raw[:got], out=mono[:got])
            self.frames_read += got
            yield mono[:got]
            if got < n:
                return

    def close(self) -> None:
        """Close libsndfile's handle."""
        self.soundfile.close()


def downmix(block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Mean over channels of a ``(frames, channels)`` float32 block, into ``out``.

    Column sums in channel order, then one division: the same operations, in
    the same order, as ``block.mean(axis=1, dtype=np.float32)`` for up to 7
    channels (bit-identical; from 8 on numpy sums pairwise and the last bit
    may differ), at a tenth of its cost (no strided reduction per row).
    """
    frames, channels = block.shape
    if out is None:
        out = np.empty(frames, dtype=np.float32)
    if channels == 1:
        np.copyto(out, block[:, 0])
    else:
        np.add(block[:, 0], block[:, 1], out=out)
    for c in range(2, channels):
        np.add(out, block[:, c], out=out)
    if channels > 1:
        np.divide(out, np.float32(channels), out=out)
    return out


class AudioStream:
    """An open audio container, decoded on demand as mono 48 kHz float32 blocks.

    ``source`` is bytes or a seekable binary file object; ``name`` is used in
    every error message and its extension picks the decoder: libsndfile, or
    FFmpeg for ``FFMPEG_EXTENSIONS`` and for whatever libsndfile refuses
    (``decoder=`` forces one). The ``decoder`` attribute then says which one
    read the file. Use as a context manager.

    Fastest path for the pipeline: ``int16_windows()`` (or ``windows()`` plus
    ``quantize_int16(..., out=)`` when something, e.g. noise, is mixed in).
    """

    def __init__(self, source: bytes | IO[bytes], name: str, *, block_frames: int | None = None,
                 decoder: str | None = None):
        self.name = name
        fileobj = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
        if _size(fileobj) == 0:
            raise AudioDecodeError(name, EMPTY, "zero bytes")
        if decoder not in (None, LIBSNDFILE, FFMPEG):
            raise ValueError(f"decoder must be {LIBSNDFILE!r}, {FFMPEG!r} or None (choose), got {decoder!r}")
        self._reader = self._open(fileobj, name, block_frames, decoder)
        self.info = self._reader.info
        self.decoder = LIBSNDFILE if isinstance(self._reader, _SndfileReader) else FFMPEG
        try:
            self._check_header(getattr(self._reader, "extra_info", ""))
        except AudioDecodeError:
            self._reader.close()
            raise

    @staticmethod
    def _open(fileobj: IO[bytes], name: str, block_frames: int | None, decoder: str | None) -> _Reader:
        if decoder == FFMPEG or (decoder is None and name.lower().endswith(FFMPEG_EXTENSIONS)):
            from das_core.audio.ffmpeg import FFmpegReader

            return FFmpegReader(fileobj, name, block_frames)
        start = fileobj.tell()
        try:
            return _SndfileReader(fileobj, name, block_frames)
        except AudioDecodeError as exc:
            if decoder == LIBSNDFILE:
                raise
            refused = exc
        from das_core.audio.ffmpeg import FFmpegReader

        fileobj.seek(start)
        try:
            return FFmpegReader(fileobj, name, block_frames, libsndfile_refused=refused.cause)
        except AudioDecodeError:
            # a container libsndfile knows but calls malformed (a codec it lacks in a WAV 'fmt ' chunk, or
            # a cut header): FFmpeg may read it; when it cannot either, libsndfile's verdict stands
            if refused.kind == TRUNCATED:
                raise refused from None
            raise

    @property
    def reader(self) -> _Reader:
        """The decoder backend (``das_core.audio.native`` reads its frames as the codec gives them)."""
        return self._reader

    @property
    def decoded_frames(self) -> int:
        """Frames (at the input rate) decoded so far; after the last block, the file's true length."""
        return self._reader.frames_read

    def _check_header(self, extra_info: str) -> None:
        info, name = self.info, self.name
        if not (MIN_INPUT_RATE <= info.sample_rate <= MAX_INPUT_RATE):
            raise AudioDecodeError(name, UNSUPPORTED, f"sample rate {info.sample_rate} Hz is outside "
                                   f"{MIN_INPUT_RATE}..{MAX_INPUT_RATE} Hz")
        if not (1 <= info.channels <= MAX_CHANNELS):
            raise AudioDecodeError(name, UNSUPPORTED, f"{info.channels} channels (at most {MAX_CHANNELS})")
        note = _truncation_note(extra_info)
        if note:
            raise AudioDecodeError(name, TRUNCATED, note)
        if info.frames <= 0 and info.frames_exact:
            raise AudioDecodeError(name, EMPTY, f"no audio frames ({info.format} container)")

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the decoder and the container it reads (the source file object stays open)."""
        self._reader.close()

    def _checked_blocks(self) -> Iterator[np.ndarray]:
        """The reader's mono blocks, refused at the first NaN or infinity (any channel's makes the mean one)."""
        for mono in self._reader.blocks():
            if not np.isfinite(mono).all():
                bad = int(np.argmin(np.isfinite(mono)))
                at = (self.decoded_frames - len(mono) + bad) / self.info.sample_rate
                raise AudioDecodeError(self.name, NON_FINITE, f"NaN or infinite sample at {at:.3f} s")
            yield mono

    def _blocks48k(self) -> Iterator[np.ndarray]:
        """Mono 48 kHz blocks; without resampling they are views of a buffer the next block overwrites."""
        info = self.info
        resampler = None
        if info.sample_rate != SAMPLE_RATE:
            resampler = soxr.ResampleStream(info.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        for mono in self._checked_blocks():
            out = mono if resampler is None else resampler.resample_chunk(mono, last=False)
            if len(out):
                yield out
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if len(tail):
                yield tail
        self.check_end()

    def check_end(self) -> None:
        """Refuse a stream that ended short of its declared length, or decoded no frames (``AudioDecodeError``)."""
        info, decoded = self.info, self.decoded_frames
        missing = info.frames - decoded
        slack = self._reader.truncation_slack       # None: the declared length is only an estimate
        if info.frames_exact and missing > slack:
            raise AudioDecodeError(self.name, TRUNCATED, f"stream ends after {decoded} of {info.frames} "
                                   "declared frames")
        if not info.frames_exact and slack is not None and missing > slack:
            raise AudioDecodeError(self.name, TRUNCATED, f"stream ends after {decoded / info.sample_rate:.2f} s of "
                                   f"the {info.duration_s:.2f} s its container declares")
        if decoded == 0:
            raise AudioDecodeError(self.name, EMPTY, "no audio frames decoded")

    def mono48k(self, block_frames: int | None = None) -> Iterator[np.ndarray]:
        """Yield consecutive mono float32 blocks at 48 kHz until the end of the file; the caller owns each.

        Raises ``AudioDecodeError`` for non-finite samples or a stream that
        ends before the frame count its header declares. ``block_frames`` is
        kept for compatibility; the block size is set at construction.
        """
        reused = self.info.sample_rate == SAMPLE_RATE
        for block in self._blocks48k():
            yield block.copy() if reused else block

    def windows(self, *, hop: int = WINDOW_SAMPLES,
                min_tail: int = int(MIN_TAIL_SECONDS * SAMPLE_RATE)) -> Iterator[Window]:
        """``segment(self.mono48k())`` without copies: every ``Window`` shares one buffer.

        A window's ``samples`` are valid until the next window is requested:
        use (quantize, mix, copy) them before advancing.
        """
        return segment(self._blocks48k(), hop=hop, min_tail=min_tail, reuse=True)

    def int16_windows(self, *, hop: int = WINDOW_SAMPLES,
                      min_tail: int = int(MIN_TAIL_SECONDS * SAMPLE_RATE)) -> Iterator[tuple[Window, bytes]]:
        """The whole decode stage without noise: ``(window, int16 bytes for the encoder)``, one per window.

        The bytes equal ``quantize_int16(window.samples).tobytes()`` (LAION's
        ``float32_to_int16``); the ``Window`` is as in ``windows()`` (valid until
        the next one). The pipeline's per-file loop::

            with AudioStream(fileobj, path) as stream:
                info = stream.info                     # before decoding: rate, channels, declared length
                for w, pcm in stream.int16_windows():
                    emit(segment=w.index, start_s=w.start_s, end_s=w.end_s, audio=pcm)
                duration_s = stream.decoded_frames / info.sample_rate
                decoder = stream.decoder               # "libsndfile" or "ffmpeg"

        With noise, use ``windows()`` and quantize the mixed window yourself::

            pcm = np.empty(WINDOW_SAMPLES, dtype=np.int16)
            for w in stream.windows():
                mixed = bank.mix(w.real, snr_db, seed=seed, clip_id=file_id, segment=w.index)
                samples = mixed.samples if w.length == WINDOW_SAMPLES else repeat_pad(mixed.samples)
                audio = quantize_int16(samples, out=pcm).tobytes()
        """
        pcm = np.empty(WINDOW_SAMPLES, dtype=np.int16)
        scratch = np.empty(WINDOW_SAMPLES, dtype=np.float32)
        for w in self.windows(hop=hop, min_tail=min_tail):
            yield w, quantize_int16(w.samples, out=pcm, scratch=scratch).tobytes()


def _size(fileobj: IO[bytes]) -> int | None:
    try:
        here = fileobj.tell()
        end = fileobj.seek(0, io.SEEK_END)
        fileobj.seek(here)
        return end
    except (OSError, AttributeError, ValueError):
        return None


def _libsndfile_message(exc: Exception) -> str:
    msg = str(exc)
    # "Error opening <_io.BytesIO object at 0x..>: Format not recognised." -> the cause only
    return msg.split(": ", 1)[1] if msg.startswith("Error opening") and ": " in msg else msg.removeprefix("Error : ")


def _open_error(name: str, exc: Exception) -> AudioDecodeError:
    msg = _libsndfile_message(exc)
    if "not recognised" in msg.lower() or "unknown format" in msg.lower():
        return AudioDecodeError(name, NOT_AUDIO, f"not an audio file libsndfile can read ({msg})")
    if "malformed" in msg.lower():
        return AudioDecodeError(name, TRUNCATED, f"malformed or truncated container ({msg})")
    return AudioDecodeError(name, UNREADABLE, msg)


def load_mono48k(source: bytes | IO[bytes], name: str, max_seconds: Seconds | None = None) -> np.ndarray:
    """Decode a whole (short) recording to mono 48 kHz float32.

    For clips and noise recordings; archives go through ``AudioStream`` and
    ``segment``. ``max_seconds`` bounds the memory a hostile file can take.
    """
    with AudioStream(source, name) as stream:
        if max_seconds is not None and stream.info.duration_s > max_seconds:
            raise AudioDecodeError(name, UNSUPPORTED, f"{stream.info.duration_s:.1f} s is longer than the "
                                   f"{max_seconds:.0f} s allowed here")
        # FFmpeg's declared length may be an estimate: the bound holds while decoding too
        limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE) + SAMPLE_RATE
        parts, total = [], 0
        for block in stream.mono48k():
            total += len(block)
            if limit is not None and total > limit:
                raise AudioDecodeError(name, UNSUPPORTED, f"longer than the {max_seconds:.0f} s allowed here")
            parts.append(block)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
