"""A file's audio as its codec gives it: ``NativeAudio``, the decode tasks' only work on the samples.

The decode tasks of ``das label`` run the codec and nothing else; the encoder's device does the rest
(``das_core.audio.frontend``). ``NativeAudio`` reads an open ``AudioStream`` into caller-given
``(frames, channels)`` buffers, interleaved, at the file's own rate, in the cheapest exact form:

* libsndfile: ``int16`` where the subtype is 16- or 8-bit PCM (WAV, AIFF, FLAC, ...), read by libsndfile
  straight into the buffer (``x / 32768`` is then exactly its float32 read); ``float32`` otherwise;
* FFmpeg: ``s16`` / ``s16p`` frames as ``int16``, ``flt`` / ``fltp`` as ``float32``, every other sample
  format as ``float32`` by the scale ``das_core.audio.ffmpeg`` uses;
* rates julius cannot resample cheaply (``Ratio.on_device`` False) keep the host path: soxr HQ to mono
  48 kHz float32, so the buffer then holds 48 kHz mono audio and ``context`` is 0.

Float samples are checked on the host: a NaN or infinity is an ``AudioDecodeError`` (``non_finite``) with
the same message as ``AudioStream``'s; every other error kind and message is ``AudioStream``'s own.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import soundfile as sf

from das_core.audio.decode import AudioStream, _libsndfile_message
from das_core.audio.info import LIBSNDFILE, NON_FINITE, TRUNCATED, UNREADABLE
from das_core.audio.resample import Ratio
from das_core.audio.windows import SAMPLE_RATE
from das_core.errors import AudioDecodeError

# libsndfile subtypes read exactly as int16 (8-bit PCM is scaled by 256: x / 32768 equals its float read).
INT16_SUBTYPES = {"PCM_16", "PCM_S8", "PCM_U8"}


class NativeAudio:
    """The audio of an open ``AudioStream`` as the codec gives it, read into caller-given buffers.

    ``rate``, ``channels`` and ``dtype`` describe the frames ``read_into`` writes; ``context`` is the
    resampler's context (``Ratio.of(rate).context``; 0 on the host path, whose frames are already 48 kHz).
    ``length_48k(frames)`` is the 48 kHz length of ``frames`` read frames. After ``read_into`` returned 0,
    ``finish()`` refuses a stream that ended early (``AudioDecodeError``, as ``AudioStream`` does).
    """

    def __init__(self, stream: AudioStream):
        self.stream = stream
        info = stream.info
        ratio = Ratio.of(info.sample_rate)
        self.on_device = ratio.on_device
        if not self.on_device:
            self.rate, self.channels, self.dtype, self.context = SAMPLE_RATE, 1, np.dtype(np.float32), 0
            self._frames: Iterator[np.ndarray] = (b[:, None] for b in stream.mono48k())
        elif stream.decoder == LIBSNDFILE:
            self.rate, self.channels, self.context = info.sample_rate, info.channels, ratio.context
            self.dtype = np.dtype(np.int16 if info.subtype in INT16_SUBTYPES else np.float32)
            self._frames = iter(())
        else:
            self.rate, self.channels, self.context = info.sample_rate, info.channels, ratio.context
            self.dtype = np.dtype(stream.reader.native_dtype())
            self._frames = stream.reader.native_frames()
        self._left: np.ndarray | None = None        # what the last codec frame had beyond the last buffer
        self._ratio = ratio

    def length_48k(self, frames: int) -> int:
        """The 48 kHz length of ``frames`` frames as read here (julius' floor; the host path is 48 kHz)."""
        return frames if not self.on_device else self._ratio.out_frames(frames)

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` (C-contiguous ``(frames, channels)`` of ``dtype``) from its start with the next frames;
        the number written, fewer than ``len(out)`` only at the end of the stream (0 once it is over)."""
        if self.on_device and self.stream.decoder == LIBSNDFILE:
            got = self._sndfile_read(out)
        else:
            got = self._copy_frames(out)
        if got and self.dtype == np.float32 and self.on_device:
            self._check_finite(out[:got])
        return got

    def finish(self) -> None:
        """Refuse a stream that ended before its declared length, or had no frames (``AudioDecodeError``)."""
        if self.on_device:
            self.stream.check_end()

    def _sndfile_read(self, out: np.ndarray) -> int:
        reader = self.stream.reader
        info = reader.info
        try:
            got = len(reader.soundfile.read(len(out), dtype=self.dtype.name, out=out))
        except sf.LibsndfileError as exc:
            decoded = reader.frames_read / info.sample_rate
            kind = TRUNCATED if reader.frames_read < info.frames else UNREADABLE
            raise AudioDecodeError(self.stream.name, kind, f"decoding failed after {decoded:.2f} s of "
                                   f"{info.duration_s:.2f} s: {_libsndfile_message(exc)}") from None
        reader.frames_read += got
        return got

    def _copy_frames(self, out: np.ndarray) -> int:
        """Fill ``out`` from the codec's frames (FFmpeg, or the host path's 48 kHz blocks)."""
        got = 0
        while got < len(out):
            if self._left is None or not len(self._left):
                self._left = next(self._frames, None)
                if self._left is None:
                    break
            take = min(len(out) - got, len(self._left))
            out[got:got + take] = self._left[:take]
            self._left = self._left[take:]
            got += take
        return got

    def _check_finite(self, block: np.ndarray) -> None:
        if not np.isfinite(block).all():
            bad = int(np.argmin(np.isfinite(block).all(axis=1)))
            at = (self.stream.decoded_frames - self._unread() - len(block) + bad) / self.rate
            raise AudioDecodeError(self.stream.name, NON_FINITE, f"NaN or infinite sample at {at:.3f} s")

    def _unread(self) -> int:
        """Frames the reader counted as read that were not handed out yet."""
        return 0 if self._left is None else len(self._left)
