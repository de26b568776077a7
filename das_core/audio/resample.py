"""Band-limited resampling to 48 kHz on the encoder's device, with julius (CUDA or CPU tensors).

The decode tasks hand the encoder audio at the file's own rate; the encoder resamples it here, on its device.
julius' ``ResampleFrac`` is a windowed-sinc resampler (24 zero crossings, cut-off at 0.945 of the lower
Nyquist frequency) written as one strided ``conv1d``, so it runs wherever torch does. Its cost grows with the
rates' reduced fraction: after dividing by their greatest common divisor, ``old / new`` must both be small
(44.1 kHz -> 48 kHz is 147 / 160, 16 kHz is 1 / 3). Rates whose fraction is large (``Ratio.on_device`` is
False: 44 056 Hz, 37 800 Hz, ...) are resampled by soxr HQ in the decode task instead, as before.

Pieces and windows. A window of 10 s starts at input frame ``10 * rate * k``, which is always a whole
frame; with ``context`` frames (a multiple of ``old``) on each side of a piece, every output sample of the
piece depends only on input the piece holds, and the piece's first real output sample is output sample
``context * new / old``. So a long file cut into pieces along window boundaries resamples to the same
windows, whatever the pieces. Frames before the file's start and after its end are zeros, as soxr's
streaming resampler assumes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from das_core.audio.windows import SAMPLE_RATE

ZEROS = 24                 # julius' default: zero crossings of the sinc kept
ROLLOFF = 0.945            # julius' default: cut-off as a fraction of the lower Nyquist frequency
MAX_REDUCED = 1024         # the largest reduced numerator / denominator resampled on the device


@dataclass(frozen=True)
class Ratio:
    """A rate's fraction of 48 kHz, reduced: output frame ``j`` sits at input frame ``j * old / new``."""

    rate: int
    old: int
    new: int

    @classmethod
    def of(cls, rate: int) -> Ratio:
        """The reduced fraction of ``rate`` -> 48 kHz."""
        g = math.gcd(int(rate), SAMPLE_RATE)
        return cls(int(rate), int(rate) // g, SAMPLE_RATE // g)

    @property
    def identity(self) -> bool:
        """48 kHz already: nothing to resample."""
        return self.old == self.new

    @property
    def on_device(self) -> bool:
        """Whether julius resamples this rate (a small reduced fraction); otherwise soxr does, on the host."""
        return self.old <= MAX_REDUCED and self.new <= MAX_REDUCED

    @property
    def context(self) -> int:
        """Input frames a piece carries on each side: julius' filter half-width, rounded up to whole ``old``
        steps so that the first real input frame falls on an output frame (0 at 48 kHz)."""
        if self.identity:
            return 0
        width = math.ceil(ZEROS * self.old / (min(self.old, self.new) * ROLLOFF))
        return self.old * math.ceil(width / self.old)

    def out_frames(self, frames: int) -> int:
        """Output frames for ``frames`` real input frames (rounded down, as julius does)."""
        return frames * self.new // self.old

    def in_frames(self, out: int) -> int:
        """Input frames that make ``out`` output frames, where ``out`` is a whole number of ``new`` steps
        (a window of 10 s always is)."""
        if out % self.new:
            raise ValueError(f"{out} output frames are not a whole number of {self.new}-frame steps")
        return out // self.new * self.old


@functools.lru_cache(maxsize=64)
def _resampler(rate: int, device: str):
    import julius

    return julius.ResampleFrac(int(rate), SAMPLE_RATE, zeros=ZEROS, rolloff=ROLLOFF).to(device)


def resample_48k(x, rate: int, context: int = 0):
    """``x`` (a float32 tensor ``[..., T]`` at ``rate``, with ``context`` frames of context on each side) at
    48 kHz: ``[..., Ratio.of(rate).out_frames(T - 2 * context)]``, on ``x``'s device. ``context`` must be
    ``Ratio.of(rate).context`` (or more, in whole ``old`` steps)."""
    ratio = Ratio.of(rate)
    real = x.shape[-1] - 2 * context
    if real < 0:
        raise ValueError(f"{x.shape[-1]} frames cannot hold {context} frames of context on each side")
    if ratio.identity:
        return x[..., context:context + real]
    if not ratio.on_device:
        raise ValueError(f"{rate} Hz -> {SAMPLE_RATE} Hz is {ratio.old}/{ratio.new} reduced: too large a "
                         "fraction for julius; resample it with soxr")
    if context < ratio.context or context % ratio.old:
        raise ValueError(f"{rate} Hz needs {ratio.context} frames of context (whole {ratio.old}-frame steps), "
                         f"got {context}")
    y = _resampler(ratio.rate, str(x.device))(x)
    first = context // ratio.old * ratio.new
    return y[..., first:first + ratio.out_frames(real)]
