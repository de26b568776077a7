"""The encoder's device front end on CPU, against the host path it replaces (``AudioStream`` + numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import sine

from das_core.audio.decode import AudioStream
from das_core.audio.frontend import NOT_MIXED, DeviceFrontEnd, NoiseMixer
from das_core.audio.noise import NoiseBank, realised_snr_db
from das_core.audio.windows import dequantize_int16, quantize_int16, repeat_pad
from das_core.label.decode import ChunkMeta, DecodeSettings, decode_unit
from das_core.output.manifest import NoiseSource

CPU = torch.device("cpu")


def _chunks(path: str, chunk_windows: int = 32):
    return [(t.column("audio")[0].as_buffer(), ChunkMeta.parse(t.column("meta")[0].as_py()))
            for t in decode_unit("u00000000", ["clip"], [path], DecodeSettings(chunk_windows=chunk_windows))]


def _device_windows(front_end: DeviceFrontEnd, path: str):
    out, sources, metas = [], [], []
    for audio, meta in _chunks(path):
        if meta.windows:
            w, s = front_end.windows(front_end.stage(audio), meta)
            out.append(w)
            sources += s
            metas.append(meta)
    return torch.cat(out).numpy(), sources, metas


def _host_windows(path: str) -> np.ndarray:
    with AudioStream(open(path, "rb").read(), path) as stream:
        return np.stack([dequantize_int16(np.frombuffer(pcm, np.int16)) for _, pcm in stream.int16_windows()])


@pytest.mark.parametrize("subtype, channels", [("PCM_16", 2), ("FLOAT", 3), ("PCM_24", 1)])
def test_48k_windows_equal_the_host_paths_bit_for_bit(tmp_path, subtype, channels):
    """At 48 kHz nothing is resampled: scale, downmix, windows, repeat-pad and int16 round trip are the host's."""
    path = str(tmp_path / "clip.wav")
    rng = np.random.default_rng(1)
    sf.write(path, (rng.standard_normal((int(23.4 * 48000), channels)) * 0.3).astype(np.float32), 48000,
             subtype=subtype)
    got, sources, _ = _device_windows(DeviceFrontEnd(CPU), path)
    np.testing.assert_array_equal(got, _host_windows(path))
    assert sources == [None, None, None]


@pytest.mark.parametrize("rate", [44100, 16000, 22050, 96000])
def test_resampled_windows_match_soxr_within_a_tight_tolerance(tmp_path, rate):
    path = str(tmp_path / "clip.wav")
    x = sine(440, 21.0, rate, channels=2, amp=0.4) + sine(3100, 21.0, rate, channels=2, amp=0.1)
    sf.write(path, x, rate, subtype="PCM_16")
    got, _, _ = _device_windows(DeviceFrontEnd(CPU), path)
    want = _host_windows(path)
    assert got.shape == want.shape == (3, 480_000)
    # julius (windowed sinc) against soxr HQ, both band-limited: a few int16 steps at most, away from the edges
    inner = slice(2000, 478_000)
    err = got[:2, inner] - want[:2, inner]
    snr = 10 * np.log10(np.mean(want[:2, inner].astype(np.float64) ** 2) / np.mean(err.astype(np.float64) ** 2))
    assert snr > 60, snr


def test_noise_is_mixed_on_the_device_at_the_exact_snr(tmp_path):
    rate = 22050
    path = str(tmp_path / "clip.wav")
    rng = np.random.default_rng(2)
    sf.write(path, (rng.standard_normal((int(25.5 * rate), 2)) * 0.2).astype(np.float32), rate, subtype="PCM_16")
    noise_path = str(tmp_path / "noise.wav")
    sf.write(noise_path, (rng.standard_normal(7 * 16000) * 0.1).astype(np.float32), 16000)
    bank = NoiseBank([noise_path])
    mixer = NoiseMixer(bank, 5.0, 3, CPU)
    clean, _, metas = _device_windows(DeviceFrontEnd(CPU), path)
    noisy, sources, _ = _device_windows(DeviceFrontEnd(CPU, mixer), path)
    lengths = [n for m in metas for p in m.pieces for n in p["lengths"]]
    assert lengths == [480_000, 480_000, int(25.5 * rate) * 48_000 // rate - 960_000]
    for k, n in enumerate(lengths):
        # the clean window's real samples as the device has them before the round trip: recompute them
        real = _clean_real(path, k, n)
        mixed, ok, source = mixer.mix(torch.from_numpy(real), "clip", k)
        assert bool(ok) and sources[k] == source
        assert abs(realised_snr_db(real, mixed.numpy()) - 5.0) < 0.01
        # the host's formula on the same samples and excerpt: the same float32 mix to within float rounding
        host = bank.mix(real, 5.0, seed=3, clip_id="clip", segment=k)
        assert source == str(NoiseSource.mixed(host.noise_uri, host.offset_s))
        np.testing.assert_allclose(mixed.numpy(), host.samples, rtol=0, atol=1e-6)
        want = dequantize_int16(quantize_int16(repeat_pad(mixed.numpy())))
        np.testing.assert_array_equal(noisy[k], want)
    assert not np.array_equal(clean, noisy)


def _clean_real(path: str, k: int, n: int) -> np.ndarray:
    """Window ``k``'s real 48 kHz samples from the device front end, before the int16 round trip."""
    for audio, meta in _chunks(path):
        for piece in meta.pieces:
            first = piece["window"]
            index = [w[1] for w in meta.windows[first:first + len(piece["lengths"])]]
            if k in index:
                j = index.index(k)
                audio48 = DeviceFrontEnd(CPU)._piece_48k(torch.from_numpy(np.frombuffer(audio, np.uint8)), piece)
                return audio48[j * 480_000:j * 480_000 + n].numpy().copy()
    raise AssertionError(k)


def test_a_silent_window_is_not_mixed(tmp_path):
    path = str(tmp_path / "silence.wav")
    sf.write(path, np.zeros(5 * 16000, dtype=np.float32), 16000, subtype="PCM_16")
    noise_path = str(tmp_path / "noise.wav")
    sf.write(noise_path, (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32), 16000)
    got, sources, _ = _device_windows(DeviceFrontEnd(CPU, NoiseMixer(NoiseBank([noise_path]), 0.0, 0, CPU)), path)
    assert sources == [NOT_MIXED] and not got.any()
