"""julius on the encoder's device: pieces cut along window boundaries resample to the same samples as the
whole file, and the result agrees with soxr HQ on audio below the cut-off."""

import numpy as np
import pytest
import soxr
import torch

from das_core.audio.resample import Ratio, resample_48k


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000])
def test_pieces_along_window_boundaries_resample_to_the_whole_file(rate):
    ratio = Ratio.of(rate)
    p = ratio.context
    x = np.random.default_rng(rate).standard_normal(rate * 25 + 123).astype(np.float32) * 0.1
    padded = np.pad(x, (p, p))
    whole = resample_48k(torch.from_numpy(padded), rate, p).numpy()
    step = 10 * rate                     # a 10 s window is always a whole number of input frames
    pieces = np.concatenate([resample_48k(torch.from_numpy(padded[s:s + step + 2 * p]), rate, p).numpy()
                             for s in range(0, len(x), step)])
    assert len(whole) == ratio.out_frames(len(x)) == len(pieces)
    np.testing.assert_array_equal(whole, pieces)
    assert ratio.in_frames(480_000) == step


def test_band_limited_audio_agrees_with_soxr():
    rate = 44100
    t = np.arange(rate * 5) / rate
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t + 1)).astype(np.float32)
    p = Ratio.of(rate).context
    ours = resample_48k(torch.from_numpy(np.pad(x, (p, p))), rate, p).numpy()
    ref = soxr.resample(x, rate, 48_000, quality="HQ")[: len(ours)]
    inner = slice(4800, len(ours) - 4800)        # edges: both assume zeros outside, with different filters
    snr = 10 * np.log10(np.sum(ref[inner] ** 2) / np.sum((ours[inner] - ref[inner]) ** 2))
    assert snr > 60, snr


def test_fractions_julius_cannot_do_cheaply_are_left_to_soxr():
    assert not Ratio.of(44_056).on_device and Ratio.of(44_100).on_device
    with pytest.raises(ValueError, match="soxr"):
        resample_48k(torch.zeros(1000), 44_056, 0)
    with pytest.raises(ValueError, match="context"):
        resample_48k(torch.zeros(1000), 44_100, 10)
