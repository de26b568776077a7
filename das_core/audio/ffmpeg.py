"""FFmpeg (through PyAV, whose wheel ships FFmpeg) for every container libsndfile cannot read.

``FFmpegReader`` is one of ``AudioStream``'s two decoder backends: it reads a
seekable file object through PyAV's Python I/O (S3 objects stay ranged reads,
nothing is held whole) and yields mono float32 blocks at the input rate, which
``AudioStream`` checks, resamples and windows exactly as libsndfile's.

Sample conversion follows libsndfile's, so the same PCM gives the same floats
from either decoder: integers are scaled by a power of two (s16 / 2**15,
s32 / 2**31, u8 (x - 128) / 2**7); channels are summed in order and divided
by their count.

Truncation, which FFmpeg's demuxers mostly meet as a quiet end of file, is
detected three ways: an MP4/MOV or Matroska/WebM file that FFmpeg cannot open
(its index or header is cut off: a truncated MP4 whose ``moov`` box was to
come last); a decoder error after the first samples; and a stream ending more
than 0.5 s + 2 % short of the duration a container stores in its header or
index (MP4/MOV, Matroska/WebM, ASF/WMA, WAV/W64/AIFF/CAF). Durations FFmpeg estimates from the
bitrate (raw AAC/ADTS, MP3, AC-3, AMR) are no evidence and never trigger it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

import av
import numpy as np

from das_core.audio.info import EMPTY, NOT_AUDIO, TRUNCATED, UNREADABLE, UNSUPPORTED, AudioInfo, block_frames_for
from das_core.errors import AudioDecodeError

# Containers whose stored duration is a measurement (index or header), not a bitrate estimate.
_DECLARED_LENGTH = {"mov", "mp4", "m4a", "matroska", "webm", "asf", "wav", "w64", "aiff", "caf"}
_INT_SCALE = {"s16": 2.0 ** -15, "s32": 2.0 ** -31, "s64": 2.0 ** -63, "u8": 2.0 ** -7}
_MAGIC = ((4, b"ftyp", "MP4/MOV"), (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"))


def _peek(fileobj: IO[bytes], n: int) -> bytes:
    here = fileobj.tell()
    head = fileobj.read(n)
    fileobj.seek(here)
    return head


def _open_error(name: str, head: bytes, exc: Exception, libsndfile_refused: str | None) -> AudioDecodeError:
    msg = getattr(exc, "strerror", None) or str(exc)
    for at, magic, family in _MAGIC:
        if head[at:at + len(magic)] == magic:
            return AudioDecodeError(name, TRUNCATED, f"malformed or truncated {family} container: the header "
                                    f"or index FFmpeg needs is missing or cut off ({msg})")
    if isinstance(exc, av.error.InvalidDataError):
        if libsndfile_refused:
            return AudioDecodeError(name, NOT_AUDIO, f"not an audio file libsndfile or FFmpeg can read "
                                    f"(FFmpeg: {msg}; libsndfile: {libsndfile_refused})")
        return AudioDecodeError(name, NOT_AUDIO, f"not an audio file FFmpeg can read ({msg})")
    return AudioDecodeError(name, UNREADABLE, f"FFmpeg: {msg}")


class FFmpegReader:
    """The first audio stream of a container FFmpeg opens, as mono float32 blocks of about ``block_frames``."""

    def __init__(self, fileobj: IO[bytes], name: str, block_frames: int | None,
                 libsndfile_refused: str | None = None):
        self.name = name
        self.frames_read = 0
        head = _peek(fileobj, 16)
        try:
            self._container = av.open(fileobj, mode="r", metadata_errors="ignore")
        except (av.FFmpegError, EOFError, OSError, ValueError) as exc:
            raise _open_error(name, head, exc, libsndfile_refused) from None
        try:
            self._stream = self._audio_stream()
            self.info, self.truncation_slack = self._info()
            self._block_frames = block_frames or block_frames_for(2)    # one mono accumulator of 1 MiB
        except BaseException:
            self._container.close()
            raise

    def _audio_stream(self):
        streams = self._container.streams
        if not streams.audio:
            kinds = ", ".join(f"{s.type}" for s in streams) or "no streams at all"
            raise AudioDecodeError(self.name, NOT_AUDIO, f"no audio stream in this {self._container.format.name} "
                                   f"container ({kinds})")
        return streams.audio[0]

    def _info(self) -> tuple[AudioInfo, int | None]:
        stream, container = self._stream, self._container
        cc = stream.codec_context
        rate, channels = int(cc.sample_rate or 0), int(cc.channels or 0)
        seconds = 0.0
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        frames = max(int(round(seconds * rate)), 0)
        declared = bool(set(container.format.name.split(",")) & _DECLARED_LENGTH) and frames > 0
        info = AudioInfo(rate, channels, frames, container.format.name, cc.name, frames_exact=False)
        slack = rate // 2 + frames // 50 if declared else None
        return info, slack

    def blocks(self) -> Iterator[np.ndarray]:
        """Mono float32 blocks at the input rate (views of one accumulator, valid until the next block);
        ``AudioDecodeError`` where FFmpeg fails (truncated after the first samples) or the stream changes format."""
        info = self.info
        rate, channels = info.sample_rate, info.channels
        acc = np.empty(self._block_frames, dtype=np.float32)
        fill = 0
        try:
            for frame in self._container.decode(self._stream):
                n = frame.samples
                # planar float32 (AAC, MP3, Vorbis, AC-3, WMA): read in place, the hot path kept inline
                rows = ([np.frombuffer(p, np.float32, n) for p in frame.planes] if frame.format.name == "fltp"
                        else _float_planes(frame))
                if frame.sample_rate != rate or len(rows) != channels:
                    raise AudioDecodeError(self.name, UNSUPPORTED, f"the stream changes to {frame.sample_rate} Hz, "
                                           f"{len(rows)} channels after {self.frames_read + fill} frames")
                if fill + n > len(acc):
                    if fill:
                        yield self._finish(acc, fill)
                        fill = 0
                    if n > len(acc):
                        acc = np.empty(n, dtype=np.float32)
                if channels == 2:
                    np.add(rows[0], rows[1], out=acc[fill:fill + n])
                else:
                    _sum_planes(rows, acc[fill:fill + n])
                fill += n
        except (av.FFmpegError, EOFError, OSError) as exc:
            decoded = (self.frames_read + fill) / max(rate, 1)
            kind = TRUNCATED if decoded > 0 else (EMPTY if info.frames == 0 else NOT_AUDIO)
            raise AudioDecodeError(self.name, kind, f"FFmpeg decoding failed after {decoded:.2f} s: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
        if fill:
            yield self._finish(acc, fill)

    def native_dtype(self) -> type:
        """What ``native_frames`` yields: int16 for 16-bit integer samples (s16, s16p), float32 otherwise."""
        return _NATIVE.get(self._stream.codec_context.format.name, np.float32)

    def native_frames(self) -> Iterator[np.ndarray]:
        """The decoded frames as the codec gives them: ``(samples, channels)`` arrays of ``native_dtype()``,
        interleaved, counted in ``frames_read``; errors as in ``blocks``."""
        info, dtype = self.info, self.native_dtype()
        try:
            for frame in self._container.decode(self._stream):
                block = _interleaved(frame, dtype, self.name)
                if frame.sample_rate != info.sample_rate or block.shape[1] != info.channels:
                    raise AudioDecodeError(self.name, UNSUPPORTED, f"the stream changes to {frame.sample_rate} Hz, "
                                           f"{block.shape[1]} channels after {self.frames_read} frames")
                self.frames_read += len(block)
                yield block
        except (av.FFmpegError, EOFError, OSError) as exc:
            decoded = self.frames_read / max(info.sample_rate, 1)
            kind = TRUNCATED if decoded > 0 else (EMPTY if info.frames == 0 else NOT_AUDIO)
            raise AudioDecodeError(self.name, kind, f"FFmpeg decoding failed after {decoded:.2f} s: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None

    def _finish(self, acc: np.ndarray, fill: int) -> np.ndarray:
        """Channel sums -> means; counts the frames as read."""
        block = acc[:fill]
        if self.info.channels > 1:
            np.divide(block, np.float32(self.info.channels), out=block)
        self.frames_read += fill
        return block

    def close(self) -> None:
        """Close PyAV's container."""
        self._container.close()


_DTYPES = {"flt": np.float32, "dbl": np.float64, "s16": np.int16, "s32": np.int32, "s64": np.int64, "u8": np.uint8}


_NATIVE = {"s16": np.int16, "s16p": np.int16, "flt": np.float32, "fltp": np.float32}


def _interleaved(frame, dtype: type, name: str) -> np.ndarray:
    """One frame's samples as ``(samples, channels)`` of ``dtype``: in place where the frame is packed and of
    that type, else written column by column (other formats as float32, scaled as ``_float_planes``)."""
    fmt, n = frame.format, frame.samples
    native = _NATIVE.get(fmt.name)
    if native is not None and native != dtype:
        raise AudioDecodeError(name, UNSUPPORTED, f"the stream changes its sample format to {fmt.name}")
    if native is not None and not fmt.is_planar:
        return np.frombuffer(frame.planes[0], dtype, n * frame.layout.nb_channels).reshape(n, -1)
    if dtype == np.int16 and native is None:
        raise AudioDecodeError(name, UNSUPPORTED, f"the stream changes its sample format to {fmt.name}")
    rows = [np.frombuffer(q, dtype, n) for q in frame.planes] if native is not None else _float_planes(frame)
    block = np.empty((n, len(rows)), dtype=dtype)
    for i, row in enumerate(rows):
        block[:, i] = row
    return block


def _float_planes(frame) -> list[np.ndarray]:
    """A frame's samples as ``channels`` float rows, read in place from its planes where they are float32.

    ``frame.to_ndarray()`` copies through ``np.vstack``: for 1 024-sample AAC
    frames that Python overhead alone was twice the decoding time.
    """
    fmt, n = frame.format, frame.samples
    kind = fmt.name.rstrip("p")
    dtype = _DTYPES[kind]
    if fmt.is_planar:
        rows = [np.frombuffer(plane, dtype, n) for plane in frame.planes]
    else:
        channels = frame.layout.nb_channels
        rows = list(np.frombuffer(frame.planes[0], dtype, n * channels).reshape(n, channels).T)
    if kind == "flt":
        return rows
    if kind == "dbl":
        return [r.astype(np.float32) for r in rows]
    if kind == "u8":
        return [(r.astype(np.float32) - np.float32(128.0)) * np.float32(_INT_SCALE["u8"]) for r in rows]
    return [r.astype(np.float32) * np.float32(_INT_SCALE[kind]) for r in rows]


def _sum_planes(planes: list[np.ndarray], out: np.ndarray) -> None:
    """Channel 0 + channel 1 + ... into ``out``, in channel order (``_finish`` divides)."""
    if len(planes) == 1:
        np.copyto(out, planes[0])
        return
    np.add(planes[0], planes[1], out=out)
    for plane in planes[2:]:
        np.add(out, plane, out=out)
