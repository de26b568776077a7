"""The encoder's front end, on its device: chunk pieces (codec output) -> the model's 48 kHz windows.

The decode tasks hand the encoder each file's frames as the codec gave them (``das_core.label.decode``'s
pieces). ``DeviceFrontEnd`` does everything after the codec with torch on the encoder's device (the GPU, or
the CPU when there is none), in METHOD.md's order:

1. int16 -> float32 by ``/ 32768`` (libsndfile's own scale: exact), float32 sources as they are;
2. downmix: channels summed in order, then divided by their count (``das_core.audio.decode.downmix``'s
   operations: bit-identical to it on the CPU);
3. resampling to 48 kHz with julius (``das_core.audio.resample``; a piece carries the context that makes
   its windows equal the whole file's), then the windows cut at ``10 s * k``, cropped to their real length;
4. noise at the SNR (``NoiseMixer``): gain from the real samples' power and the excerpt's, in float64, the
   mix in float64 rounded once to float32; which recording and offset stays ``choose_noise`` on the host;
5. LAION's ``repeatpad`` of a short window, then LAION's int16 round trip: clip to [-1, 1], ``* 32767`` in
   float32, truncation toward zero to int16, ``/ 32767`` in float64 rounded to float32 (as numpy does).

On CUDA, a chunk's bytes are copied from pinned memory with ``non_blocking=True`` on a side stream
(``stage``), so that the copy of the next chunk overlaps the work on this one; on the CPU the tensors are
views of the Arrow buffer itself (no copy).
"""

from __future__ import annotations

import warnings

import numpy as np

from das_core.audio.noise import NoiseBank, choose_noise
from das_core.audio.resample import resample_48k
from das_core.audio.windows import SAMPLE_RATE, WINDOW_SAMPLES
from das_core.output.manifest import NoiseSource

PIECE_DTYPES = ("int16", "float32")     # what a piece's samples can be (``das_core.audio.native``)


def _torch():
    import torch

    return torch


class NoiseMixer:
    """Noise at ``snr_db`` on the device: the bank's recordings decoded once (``NoiseBank``) and kept as device
    tensors (every recording the run's windows drew; a noise bank is a few minutes of audio); ``mix`` is
    METHOD.md's power-based mix, ``das_core.audio.noise.NoiseBank.mix`` on the device."""

    def __init__(self, bank: NoiseBank, snr_db: float, seed: int, device):
        self.bank, self.snr_db, self.seed, self.device = bank, float(snr_db), int(seed), device
        self._recordings: dict[int, object] = {}

    def recording(self, index: int):
        """Recording ``index`` as a float32 tensor on the device (decoded once, on first use)."""
        if index not in self._recordings:
            self._recordings[index] = _torch().from_numpy(self.bank.recording(index)).to(self.device)
        return self._recordings[index]

    def mix(self, clean, clip_id: str, segment: int) -> tuple[object, object, str]:
        """``(mixed, mixed_at_all, noise_source)`` for ``clean`` (a window's real samples, float32 on the
        device): ``clean + g * excerpt`` in float64 rounded once to float32, with
        ``g = sqrt(P_clean / (P_noise * 10 ** (snr / 10)))``; where either power is zero (or not finite)
        ``g`` is 0 and the window stays exactly ``clean``. ``mixed_at_all`` is a bool tensor (no sync here);
        ``noise_source`` is the string for the mixed case."""
        torch = _torch()
        choice = choose_noise(len(self.bank), self.seed, clip_id, segment, self.snr_db)
        recording = self.recording(choice.index)
        n = len(recording)
        offset = choice.offset(n)
        positions = torch.arange(offset, offset + len(clean), device=self.device) % n
        excerpt = recording[positions].double()
        clean64 = clean.double()
        p_clean, p_noise = clean64.square().mean(), excerpt.square().mean()
        ok = (p_clean > 0) & (p_noise > 0) & torch.isfinite(p_clean) & torch.isfinite(p_noise)
        gain = torch.where(ok, torch.sqrt(p_clean / (p_noise * 10.0 ** (self.snr_db / 10.0))), 0.0)
        mixed = (excerpt * gain + clean64).float()
        return mixed, ok, str(NoiseSource.mixed(self.bank.uris[choice.index], offset / SAMPLE_RATE))


NOT_MIXED = str(NoiseSource.not_mixed("zero-power clip or noise"))


def downmix(frames):
    """``(frames, channels)`` float32 -> mono: channel 0 + channel 1 + ..., in order, then ``/ channels``."""
    channels = frames.shape[1]
    if channels == 1:
        return frames[:, 0]
    out = frames[:, 0] + frames[:, 1]
    for k in range(2, channels):
        out += frames[:, k]
    return out / np.float32(channels)


def repeat_pad(samples, length: int = WINDOW_SAMPLES):
    """LAION's ``repeatpad`` on the device: as many whole repeats as fit, then zeros."""
    torch = _torch()
    n = len(samples)
    if n >= length:
        return samples[:length]
    repeats = length // n
    return torch.cat([samples.repeat(repeats), samples.new_zeros(length - repeats * n)])


def int16_round_trip(x):
    """LAION's ``int16_to_float32(float32_to_int16(x))`` on the device, bit for bit as numpy computes it."""
    torch = _torch()
    q = (torch.clamp(x, -1.0, 1.0) * np.float32(32767.0)).to(torch.int16)     # truncation toward zero
    return (q.double() / 32767.0).float()


def _leading_full(lengths: list[int]) -> int:
    """How many of a piece's windows, from its first, are full (only a file's last window can be short)."""
    count = 0
    while count < len(lengths) and lengths[count] == WINDOW_SAMPLES:
        count += 1
    return count


class DeviceFrontEnd:
    """Chunk rows' pieces -> float32 ``[n, WINDOW_SAMPLES]`` model windows on ``device`` (``torch.device``),
    already repeat-padded and through LAION's int16 round trip; ``noise``: a ``NoiseMixer``, or None."""

    def __init__(self, device, noise: NoiseMixer | None = None):
        self.device, self.noise = device, noise
        self._copies = None

    def stage(self, buffer):
        """Start moving a chunk's ``audio`` (an Arrow or other buffer) to the device; on CUDA the copy runs
        from pinned memory on a side stream, ``windows`` waits for it. On the CPU: a view, no copy."""
        torch = _torch()
        with warnings.catch_warnings():        # read-only: the buffer is only read
            warnings.simplefilter("ignore", UserWarning)
            host = torch.from_numpy(np.frombuffer(buffer, dtype=np.uint8))
        if self.device.type != "cuda":
            return host, None
        if self._copies is None:
            self._copies = torch.cuda.Stream(self.device)
        pinned = torch.empty(len(host), dtype=torch.uint8, pin_memory=True)
        pinned.copy_(host)
        with torch.cuda.stream(self._copies):
            on_device = pinned.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._copies)
        return on_device, done

    def windows(self, staged, meta) -> tuple[object, list[str | None]]:
        """The chunk's windows (``meta``: its ``ChunkMeta``) as model input, and each window's noise source
        (None: no noise asked for; the strings of the ``noise_source`` column otherwise)."""
        torch = _torch()
        data, done = staged
        if done is not None:
            torch.cuda.current_stream(self.device).wait_event(done)
            data.record_stream(torch.cuda.current_stream(self.device))
        out = torch.empty((len(meta.windows), WINDOW_SAMPLES), dtype=torch.float32, device=self.device)
        sources: list = [None] * len(meta.windows)
        mixed_flags = []
        for piece in meta.pieces:
            audio48 = self._piece_48k(data, piece)
            lengths, first = piece["lengths"], piece["window"]
            whole = 0 if self.noise is not None else _leading_full(lengths)
            if whole:                   # the file's full windows at once: element-wise, the same bits
                out[first:first + whole] = int16_round_trip(audio48[:whole * WINDOW_SAMPLES].view(whole, -1))
            for j, length in enumerate(lengths[whole:], start=whole):
                w = first + j
                real = audio48[j * WINDOW_SAMPLES:j * WINDOW_SAMPLES + length]
                if self.noise is not None:
                    window = meta.windows[w]
                    real, ok, sources[w] = self.noise.mix(real, meta.files[window[0]]["file_id"], window[1])
                    mixed_flags.append((w, ok))
                out[w] = int16_round_trip(repeat_pad(real))
        if mixed_flags:                                          # one sync per chunk
            flags = torch.stack([ok for _, ok in mixed_flags]).tolist()
            for (w, _), ok in zip(mixed_flags, flags):
                sources[w] = sources[w] if ok else NOT_MIXED
        return out, sources

    def _piece_48k(self, data, piece: dict):
        """A piece's audio at 48 kHz, mono, from its first window's start to its last window's end."""
        torch = _torch()
        channels, context, frames = piece["channels"], piece["context"], piece["frames"]
        if piece["dtype"] not in PIECE_DTYPES:
            raise ValueError(f"a piece of {piece['dtype']} samples: the decode stage writes {PIECE_DTYPES}")
        dtype = getattr(torch, piece["dtype"])
        size = torch.empty(0, dtype=dtype).element_size()
        raw = data[piece["offset"]:piece["offset"] + frames * channels * size].view(dtype).view(frames, channels)
        x = raw.float() / np.float32(32768.0) if dtype == torch.int16 else raw
        mono = downmix(x)
        span = len(piece["lengths"]) * piece["rate"] * WINDOW_SAMPLES // SAMPLE_RATE + 2 * context
        if len(mono) < span:
            mono = torch.cat([mono, mono.new_zeros(span - len(mono))])
        return resample_48k(mono[:span], piece["rate"], context)
