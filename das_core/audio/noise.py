"""Additive noise at a target SNR, with noise chosen reproducibly per clip.

Mixing is power-based (METHOD.md §4, chosen here): with ``P = mean(x**2)``
over the clip's real samples (never over repeat-padding), the noise is
scaled by ``g = sqrt(P_s / (P_n * 10**(snr/10)))`` so that the realised SNR,
``10 log10(P_s / P(g * n))``, equals the target to floating-point precision.
A clip or noise excerpt with zero power has no defined SNR: the clip is
passed through unchanged and the mix is reported as skipped.

Which noise recording and which offset a clip gets is drawn from an RNG
seeded by (seed, clip id, segment, SNR), so every method and every rerun sees
the same noisy clip, while different clips and SNRs get different noise.
Noise shorter than the clip, or an offset near its end, loops around.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from das_core.audio.decode import load_mono48k
from das_core.audio.windows import SAMPLE_RATE
from das_core.io import storage

Decibels = float


def signal_power(x: np.ndarray) -> float:
    """Mean square of ``x`` (summed in float64); 0.0 for no samples."""
    return float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0


def noise_gain(clean: np.ndarray, noise: np.ndarray, snr_db: Decibels) -> float | None:
    """The factor that puts ``noise`` at ``snr_db`` below ``clean``; ``None`` if either has zero power."""
    p_clean, p_noise = signal_power(clean), signal_power(noise)
    if not (p_clean > 0.0 and p_noise > 0.0 and np.isfinite(p_clean) and np.isfinite(p_noise)):
        return None
    return float(np.sqrt(p_clean / (p_noise * 10.0 ** (snr_db / 10.0))))


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: Decibels) -> np.ndarray:
    """``clean + g * noise`` with ``g`` from ``noise_gain``; ``clean`` unchanged if the SNR is undefined.

    ``noise`` must have ``len(clean)`` samples (see ``loop_excerpt``). The
    result is float32 and is not clipped: the int16 step before the model
    clips, as LAION does.
    """
    if len(noise) != len(clean):
        raise ValueError(f"noise has {len(noise)} samples, clean has {len(clean)}: use loop_excerpt first")
    return _mix(clean, noise, noise_gain(clean, noise, snr_db))


def _mix(clean: np.ndarray, noise: np.ndarray, gain: float | None) -> np.ndarray:
    """``clean + gain * noise`` in float64, rounded once to float32; ``clean`` itself for ``gain=None``."""
    if gain is None:
        return np.array(clean, dtype=np.float32, copy=True)
    acc = noise.astype(np.float64)          # in place: the same operations as clean64 + gain * noise64
    acc *= gain
    acc += clean
    return acc.astype(np.float32)


def realised_snr_db(clean: np.ndarray, mixed: np.ndarray) -> Decibels:
    """The SNR of ``mixed`` against its clean part."""
    residual = mixed.astype(np.float64) - clean.astype(np.float64)
    return float(10.0 * np.log10(signal_power(clean) / signal_power(residual)))


def loop_excerpt(noise: np.ndarray, offset: int, length: int) -> np.ndarray:
    """``length`` samples of ``noise`` from ``offset``, wrapping around its end as often as needed."""
    n = len(noise)
    if n == 0:
        raise ValueError("noise recording has no samples")
    if length > 64 * n:     # many short loops: one gather beats a slice per loop
        return noise[(offset + np.arange(length)) % n]
    out = np.empty(length, dtype=noise.dtype)
    pos, src = 0, offset % n
    while pos < length:     # slices instead of a modulo gather: the same samples, a tenth of the time
        take = min(n - src, length - pos)
        out[pos:pos + take] = noise[src:src + take]
        pos, src = pos + take, 0
    return out


def noise_rng(seed: int, clip_id: str, segment: int, snr_db: Decibels) -> np.random.Generator:
    """An RNG that depends on (seed, clip id, segment, SNR) and nothing else."""
    key = f"{int(seed)}|{clip_id}|{int(segment)}|{float(snr_db)!r}".encode()
    entropy = int.from_bytes(hashlib.sha256(key).digest()[:16], "little")
    return np.random.default_rng(np.random.SeedSequence(entropy))


@dataclass(frozen=True)
class NoiseChoice:
    """Which noise recording a window gets, and where in it the excerpt starts."""

    index: int          # which recording of the bank
    position: float     # offset as a fraction of that recording's length, in [0, 1)

    def offset(self, n_samples: int) -> int:
        """The start sample for a recording of ``n_samples`` samples (always inside it)."""
        return min(int(self.position * n_samples), max(n_samples - 1, 0))


def choose_noise(n_recordings: int, seed: int, clip_id: str, segment: int, snr_db: Decibels) -> NoiseChoice:
    """The recording and position for one window, a pure function of ``seed``, clip, segment and SNR (the same on
    every rerun and worker); ``ValueError`` for an empty bank."""
    if n_recordings <= 0:
        raise ValueError("the noise bank is empty")
    rng = noise_rng(seed, clip_id, segment, snr_db)
    return NoiseChoice(int(rng.integers(n_recordings)), float(rng.random()))


@dataclass(frozen=True)
class NoisyClip:
    """A window with noise mixed in, and where the noise came from (recorded in the ``segments/`` rows)."""

    samples: np.ndarray
    noise_uri: str
    offset_s: float
    gain: float | None          # None: the mix was skipped (zero power)


class NoiseBank:
    """A sorted list of noise recordings, decoded lazily and kept in a bounded LRU cache.

    Recordings are decoded whole to mono 48 kHz (at most ``max_seconds``
    each); ``cache_bytes`` bounds what one process keeps decoded.
    """

    def __init__(self, uris: list[str], *, max_seconds: float = 1800.0, cache_bytes: int = 512 * 2**20):
        if not uris:
            raise ValueError("the noise bank is empty: no audio files found")
        self.uris = list(uris)
        self.max_seconds = max_seconds
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.uris)

    def __getstate__(self):
        return {"uris": self.uris, "max_seconds": self.max_seconds, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state):
        self.__init__(state["uris"], max_seconds=state["max_seconds"], cache_bytes=state["cache_bytes"])

    def recording(self, index: int) -> np.ndarray:
        """Recording ``index`` of the bank, decoded whole to mono 48 kHz (cached; the least recently used ones
        are dropped beyond ``cache_bytes``); ``AudioDecodeError`` if it cannot be decoded or is too long."""
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        uri = self.uris[index]
        with storage.open_input(uri) as f:
            samples = load_mono48k(f, uri, max_seconds=self.max_seconds)
        with self._lock:
            self._cache[index] = samples
            while sum(a.nbytes for a in self._cache.values()) > self.cache_bytes and len(self._cache) > 1:
                self._cache.popitem(last=False)
        return samples

    def mix(self, clean: np.ndarray, snr_db: Decibels, *, seed: int, clip_id: str, segment: int = 0) -> NoisyClip:
        """Mix this bank's noise into ``clean`` (real samples only) at ``snr_db``."""
        choice = choose_noise(len(self), seed, clip_id, segment, snr_db)
        recording = self.recording(choice.index)
        offset = choice.offset(len(recording))
        excerpt = loop_excerpt(recording, offset, len(clean))
        gain = noise_gain(clean, excerpt, snr_db)          # once: mix_at_snr would compute it again
        return NoisyClip(_mix(clean, excerpt, gain), self.uris[choice.index], offset / SAMPLE_RATE, gain)
