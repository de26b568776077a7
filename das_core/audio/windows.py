"""The model's input: mono 48 kHz audio cut into 10 s windows, and LAION's int16 round trip.

Windows follow METHOD.md §6: consecutive 10 s windows (480 000 samples);
a tail of at least 1 s becomes one more window; a file shorter than 10 s is
one window; short windows are repeat-padded exactly as LAION's
``repeatpad`` (whole repeats, then zeros). ``quantize_int16`` and
``dequantize_int16`` are LAION's ``float32_to_int16`` / ``int16_to_float32``,
which LAION-CLAP applies to every waveform before embedding it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from das_core.audio.info import Seconds

SAMPLE_RATE = 48_000
WINDOW_SECONDS: Seconds = 10.0
WINDOW_SAMPLES = 480_000
MIN_TAIL_SECONDS: Seconds = 1.0


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
        """Where the window starts in the stream, in seconds."""
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> Seconds:
        """Where its real audio ends in the stream, in seconds (padding not counted)."""
        return (self.start + self.length) / SAMPLE_RATE

    @property
    def real(self) -> np.ndarray:
        """The unpadded audio: ``samples[:length]``."""
        return self.samples[: self.length]


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
    reuse: bool = False,
) -> Iterator[Window]:
    """Cut a stream of mono blocks into windows, holding at most one window in memory.

    Full windows start every ``hop`` samples. After the last full window, the
    samples it did not cover form one more (repeat-padded) window if there are
    at least ``min_tail`` of them. A stream shorter than one window yields one
    repeat-padded window if it has any sample at all.

    With ``reuse`` every window's ``samples`` is the same buffer, overwritten
    when the next window is requested (no copy per window).
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
                yield Window(index, start, window, buf if reuse else buf.copy())
                index += 1
                covered = start + window
                buf[: window - hop] = buf[hop:]
                fill -= hop
                start += hop
    total = start + fill
    tail = fill > 0 and (index == 0 or total - covered >= min_tail)
    if tail:
        yield Window(index, start, fill, _repeat_pad_in_place(buf, fill) if reuse else repeat_pad(buf[:fill], window))


def _repeat_pad_in_place(buf: np.ndarray, n: int) -> np.ndarray:
    """``repeat_pad(buf[:n], len(buf))`` written into ``buf`` itself."""
    length = len(buf)
    repeats = length // n
    done = n
    while done < repeats * n:                   # doubling copies: log2(repeats) slices
        step = min(done, repeats * n - done)
        buf[done:done + step] = buf[:step]
        done += step
    buf[repeats * n:] = 0.0
    return buf


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


def quantize_int16(samples: np.ndarray, out: np.ndarray | None = None,
                   scratch: np.ndarray | None = None) -> np.ndarray:
    """LAION's ``float32_to_int16``: clip to [-1, 1], scale by 32767, truncate toward zero.

    ``out`` (int16) and ``scratch`` (float32), both of ``samples``' shape, are
    optional buffers to reuse; the result is bit-identical to
    ``(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)`` either way.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if scratch is None:
        scratch = np.empty(samples.shape, dtype=np.float32)
    if out is None:
        out = np.empty(samples.shape, dtype=np.int16)
    np.clip(samples, -1.0, 1.0, out=scratch)
    # the float32 product is cast to int16 in the same pass (C truncation, as astype)
    np.multiply(scratch, np.float32(32767.0), out=out, casting="unsafe")
    return out


def dequantize_int16(samples: np.ndarray) -> np.ndarray:
    """LAION's ``int16_to_float32``."""
    return (samples / 32767.0).astype(np.float32)


def int16_round_trip(samples: np.ndarray) -> np.ndarray:
    """What LAION-CLAP does to every waveform before embedding it."""
    return dequantize_int16(quantize_int16(samples))

