"""Decoding, resampling and windowing of audio, streamed block by block.

Everything the model sees is mono, 48 kHz, float32 in [-1, 1], cut into
10 s windows (480 000 samples), as LAION-CLAP was trained:

* any container libsndfile reads (WAV, FLAC, OGG/Vorbis, AIFF, MP3, ...) is
  decoded from a file object or bytes, never from a path-only API, so S3
  objects stream through ranged reads;
* channels are averaged to mono, then resampled with soxr's streaming
  resampler: a one-hour file is never held whole in memory;
* windows follow METHOD.md §6: consecutive 10 s windows; a tail of at least
  1 s becomes one more window; a file shorter than 10 s is one window; short
  windows are repeat-padded exactly as LAION's ``repeatpad`` (whole repeats,
  then zeros).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np
import soundfile as sf
import soxr

Seconds = float

SAMPLE_RATE = 48_000
WINDOW_SECONDS: Seconds = 10.0
WINDOW_SAMPLES = 480_000
MIN_TAIL_SECONDS: Seconds = 1.0

MIN_INPUT_RATE = 1_000
MAX_INPUT_RATE = 768_000
MAX_CHANNELS = 64

# Error kinds, shared with the jobs' summaries and the `files/` table.
EMPTY = "empty"
TRUNCATED = "truncated"
NOT_AUDIO = "not_audio"
NON_FINITE = "non_finite"
UNREADABLE = "unreadable"
UNSUPPORTED = "unsupported"
MISSING = "missing"


class AudioDecodeError(Exception):
    """A file that cannot be turned into audio; ``kind`` is one of the error kinds above."""

    def __init__(self, name: str, kind: str, cause: str):
        self.name = name
        self.kind = kind
        self.cause = cause
        super().__init__(f"{name}: {kind}: {cause}")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> Seconds:
        return self.frames / self.sample_rate


@dataclass(frozen=True)
class Window:
    """One model input: ``samples`` is float32 ``[WINDOW_SAMPLES]``.

    The first ``length`` samples are real audio starting at stream sample
    ``start``; the rest (if any) is repeat-padding, so ``samples[:length]``
    is always the unpadded audio.
    """

    index: int
    start: int
    length: int
    samples: np.ndarray

    @property
    def start_s(self) -> Seconds:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> Seconds:
        return (self.start + self.length) / SAMPLE_RATE

    @property
    def real(self) -> np.ndarray:
        return self.samples[: self.length]


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


class AudioStream:
    """An open audio container, decoded on demand as mono 48 kHz float32 blocks.

    ``source`` is bytes or a seekable binary file object; ``name`` is used in
    every error message. Use as a context manager.
    """

    def __init__(self, source: bytes | IO[bytes], name: str):
        self.name = name
        fileobj = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
        if _size(fileobj) == 0:
            raise AudioDecodeError(name, EMPTY, "zero bytes")
        try:
            self._sf = sf.SoundFile(fileobj)
        except sf.LibsndfileError as exc:
            raise _open_error(name, exc) from None
        except (RuntimeError, ValueError, TypeError) as exc:
            raise AudioDecodeError(name, UNREADABLE, str(exc)) from None
        f = self._sf
        self.info = AudioInfo(f.samplerate, f.channels, f.frames, f.format, f.subtype)
        try:
            self._check_header(f.extra_info)
        except AudioDecodeError:
            f.close()
            raise
        self.decoded_frames = 0

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
        if info.frames <= 0:
            raise AudioDecodeError(name, EMPTY, f"no audio frames ({info.format} container)")

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._sf.close()

    def mono48k(self, block_frames: int = 1 << 16) -> Iterator[np.ndarray]:
        """Yield consecutive mono float32 blocks at 48 kHz until the end of the file.

        Raises ``AudioDecodeError`` for non-finite samples or a stream that
        ends before the frame count its header declares.
        """
        info = self.info
        resampler = None
        if info.sample_rate != SAMPLE_RATE:
            resampler = soxr.ResampleStream(info.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        try:
            for block in self._sf.blocks(block_frames, dtype="float32", always_2d=True):
                if not np.isfinite(block).all():
                    bad = int(np.argmin(np.isfinite(block).all(axis=1)))
                    at = (self.decoded_frames + bad) / info.sample_rate
                    raise AudioDecodeError(self.name, NON_FINITE, f"NaN or infinite sample at {at:.3f} s")
                self.decoded_frames += len(block)
                mono = block[:, 0] if info.channels == 1 else block.mean(axis=1, dtype=np.float32)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono, last=False)
                if len(mono):
                    yield mono
        except sf.LibsndfileError as exc:
            decoded = self.decoded_frames / info.sample_rate
            kind = TRUNCATED if self.decoded_frames < info.frames else UNREADABLE
            raise AudioDecodeError(self.name, kind, f"decoding failed after {decoded:.2f} s of "
                                   f"{info.duration_s:.2f} s: {_libsndfile_message(exc)}") from None
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if len(tail):
                yield tail
        if self.decoded_frames < info.frames:
            raise AudioDecodeError(self.name, TRUNCATED, f"stream ends after {self.decoded_frames} of "
                                   f"{info.frames} declared frames")
        if self.decoded_frames == 0:
            raise AudioDecodeError(self.name, EMPTY, "no audio frames decoded")


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


def repeat_pad(samples: np.ndarray, length: int = WINDOW_SAMPLES) -> np.ndarray:
    """LAION's ``repeatpad``: as many whole repeats as fit, then zeros, to ``length``."""
    n = len(samples)
    if n == 0:
        raise ValueError("cannot repeat-pad zero samples")
    if n >= length:
        return np.ascontiguousarray(samples[:length], dtype=np.float32)
    out = np.zeros(length, dtype=np.float32)
    repeats = length // n
    out[: repeats * n] = np.tile(samples, repeats)
    return out


def segment(
    blocks: Iterable[np.ndarray],
    *,
    window: int = WINDOW_SAMPLES,
    hop: int = WINDOW_SAMPLES,
    min_tail: int = int(MIN_TAIL_SECONDS * SAMPLE_RATE),
) -> Iterator[Window]:
    """Cut a stream of mono blocks into windows, holding at most one window in memory.

    Full windows start every ``hop`` samples. After the last full window, the
    samples it did not cover form one more (repeat-padded) window if there are
    at least ``min_tail`` of them. A stream shorter than one window yields one
    repeat-padded window if it has any sample at all.
    """
    if not 0 < hop <= window:
        raise ValueError(f"hop must be in 1..{window} samples, got {hop}")
    buf = np.empty(window, dtype=np.float32)
    fill = 0            # valid samples in buf
    start = 0           # stream position of buf[0]
    covered = 0         # stream position up to which full windows have covered
    index = 0
    for block in blocks:
        pos = 0
        while pos < len(block):
            take = min(window - fill, len(block) - pos)
            buf[fill:fill + take] = block[pos:pos + take]
            fill += take
            pos += take
            if fill == window:
                yield Window(index, start, window, buf.copy())
                index += 1
                covered = start + window
                buf[: window - hop] = buf[hop:]
                fill -= hop
                start += hop
    total = start + fill
    if index == 0:
        if fill > 0:
            yield Window(0, 0, fill, repeat_pad(buf[:fill], window))
    elif total - covered >= min_tail and fill > 0:
        yield Window(index, start, fill, repeat_pad(buf[:fill], window))


def window_count(n_samples: int, *, window: int = WINDOW_SAMPLES, hop: int = WINDOW_SAMPLES,
                 min_tail: int = int(MIN_TAIL_SECONDS * SAMPLE_RATE)) -> int:
    """How many windows ``segment`` yields for ``n_samples`` samples at 48 kHz."""
    if n_samples <= 0:
        return 0
    if n_samples < window:
        return 1
    full = (n_samples - window) // hop + 1
    covered = (full - 1) * hop + window
    return full + (1 if n_samples - covered >= min_tail else 0)


def quantize_int16(samples: np.ndarray) -> np.ndarray:
    """LAION's ``float32_to_int16``: clip to [-1, 1], scale by 32767, truncate."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def dequantize_int16(samples: np.ndarray) -> np.ndarray:
    """LAION's ``int16_to_float32``."""
    return (samples / 32767.0).astype(np.float32)


def int16_round_trip(samples: np.ndarray) -> np.ndarray:
    """What LAION-CLAP does to every waveform before embedding it."""
    return dequantize_int16(quantize_int16(samples))


def load_mono48k(source: bytes | IO[bytes], name: str, max_seconds: Seconds | None = None) -> np.ndarray:
    """Decode a whole (short) recording to mono 48 kHz float32.

    For clips and noise recordings; archives go through ``AudioStream`` and
    ``segment``. ``max_seconds`` bounds the memory a hostile file can take.
    """
    with AudioStream(source, name) as stream:
        if max_seconds is not None and stream.info.duration_s > max_seconds:
            raise AudioDecodeError(name, UNSUPPORTED, f"{stream.info.duration_s:.1f} s is longer than the "
                                   f"{max_seconds:.0f} s allowed here")
        parts = list(stream.mono48k())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
