"""What a container declares about its audio, and the words for how decoding fails.

Shared by both decoder backends (libsndfile in ``das_core.audio.decode``,
FFmpeg in ``das_core.audio.ffmpeg``) and by the jobs' summaries: the error
kinds below are the ``kind`` of an ``AudioDecodeError`` and the ``error``
column's prefix in the ``files/`` table; ``LIBSNDFILE`` and ``FFMPEG`` name
the decoder that read a file; ``block_frames_for`` sizes the blocks either
backend yields.
"""

from __future__ import annotations

from dataclasses import dataclass

Seconds = float

# Error kinds, shared with the jobs' summaries and the `files/` table.
EMPTY = "empty"
TRUNCATED = "truncated"
NOT_AUDIO = "not_audio"
NON_FINITE = "non_finite"
UNREADABLE = "unreadable"
UNSUPPORTED = "unsupported"
MISSING = "missing"
DECODER_CRASH = "decoder_crash"     # the decoding process died twice on this input (das_core.label.units)

# Which decoder read a file (``AudioStream.decoder``).
LIBSNDFILE = "libsndfile"
FFMPEG = "ffmpeg"

# Decoded samples (frames x channels) per block: 2 MiB of float32. Larger blocks cut per-call overhead
# (1 << 18 stereo frames measured 3-4 % faster per window than 1 << 16); memory stays a few MiB.
BLOCK_SAMPLES = 1 << 19


def block_frames_for(channels: int) -> int:
    """Frames per decoded block of ``channels`` channels: about ``BLOCK_SAMPLES`` samples, at least 4 096 frames."""
    return max(1 << 12, BLOCK_SAMPLES // max(channels, 1))


@dataclass(frozen=True)
class AudioInfo:
    """What the container declares. ``frames_exact`` is False where ``frames`` is FFmpeg's estimate
    (from a bitrate, or a duration rounded to milliseconds): it is then no basis for a truncation check."""

    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str
    frames_exact: bool = True

    @property
    def duration_s(self) -> Seconds:
        """The declared length in seconds."""
        return self.frames / self.sample_rate

