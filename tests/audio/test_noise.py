import numpy as np
import pytest
from conftest import sine, write_audio

from das_core.audio.noise import (
    NoiseBank,
    choose_noise,
    loop_excerpt,
    mix_at_snr,
    noise_gain,
    realised_snr_db,
)
from das_core.audio.windows import SAMPLE_RATE

rng = np.random.default_rng(7)
CLEAN = sine(440, 2.0, SAMPLE_RATE, amp=0.3)
NOISE = (rng.standard_normal(len(CLEAN)) * 0.05).astype(np.float32)


@pytest.mark.parametrize("snr", [-5.0, 0.0, 5.0, 10.0, 20.0])
def test_realised_snr_equals_target(snr):
    mixed = mix_at_snr(CLEAN, NOISE, snr)
    assert mixed.dtype == np.float32
    assert realised_snr_db(CLEAN, mixed) == pytest.approx(snr, abs=0.01)


def test_zero_power_is_passed_through_without_nan():
    silent = np.zeros_like(CLEAN)
    assert noise_gain(silent, NOISE, 0.0) is None
    np.testing.assert_array_equal(mix_at_snr(silent, NOISE, 0.0), silent)
    assert noise_gain(CLEAN, np.zeros_like(NOISE), 0.0) is None
    out = mix_at_snr(CLEAN, np.zeros_like(NOISE), 0.0)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, CLEAN)


def test_mix_refuses_length_mismatch():
    with pytest.raises(ValueError, match="loop_excerpt"):
        mix_at_snr(CLEAN, NOISE[:10], 0.0)


def test_loop_excerpt_wraps():
    noise = np.arange(5, dtype=np.float32)
    assert loop_excerpt(noise, 3, 9).tolist() == [3, 4, 0, 1, 2, 3, 4, 0, 1]


def test_choice_is_seeded_by_seed_clip_segment_and_snr():
    a = choose_noise(100, 0, "clip-a", 0, 10.0)
    assert a == choose_noise(100, 0, "clip-a", 0, 10.0)
    others = [choose_noise(100, 1, "clip-a", 0, 10.0), choose_noise(100, 0, "clip-b", 0, 10.0),
              choose_noise(100, 0, "clip-a", 1, 10.0), choose_noise(100, 0, "clip-a", 0, 5.0)]
    assert all(o != a for o in others)
    assert 0 <= a.position < 1 and 0 <= a.index < 100


@pytest.fixture
def bank(tmp_path):
    uris = []
    for i, seconds in enumerate([0.7, 3.0, 12.0]):       # the first is shorter than a clip: it loops
        x = (np.random.default_rng(i).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
        uris.append(write_audio(tmp_path / f"noise{i}.flac", x, 16000))
    return NoiseBank(uris)


def test_bank_mix_is_repeatable_and_varies(bank):
    clean = sine(440, 2.0, SAMPLE_RATE, amp=0.3)
    first = bank.mix(clean, 5.0, seed=3, clip_id="x", segment=0)
    again = NoiseBank(bank.uris).mix(clean, 5.0, seed=3, clip_id="x", segment=0)
    np.testing.assert_array_equal(first.samples, again.samples)
    assert first.noise_uri == again.noise_uri and first.offset_s == again.offset_s
    assert realised_snr_db(clean, first.samples) == pytest.approx(5.0, abs=0.01)
    variants = [bank.mix(clean, 5.0, seed=3, clip_id=f"x{i}", segment=0).samples for i in range(4)]
    variants.append(bank.mix(clean, 0.0, seed=3, clip_id="x", segment=0).samples)
    assert all(not np.array_equal(v, first.samples) for v in variants)


def test_bank_survives_pickling(bank):
    import pickle

    bank.recording(0)
    clone = pickle.loads(pickle.dumps(bank))
    assert clone.uris == bank.uris and not clone._cache


@pytest.mark.parametrize("n, offset, length", [(1000, 0, 1000), (1000, 999, 5), (1000, 250, 3500), (7, 3, 480_000),
                                               (480_000, 123_456, 480_000), (100, 150, 64 * 100)])
def test_loop_excerpt_is_the_modulo_gather(n, offset, length):
    noise = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    np.testing.assert_array_equal(loop_excerpt(noise, offset, length), noise[(offset + np.arange(length)) % n])


def test_mix_is_the_float64_formula_bit_for_bit():
    gain = noise_gain(CLEAN, NOISE, 3.0)
    want = (CLEAN.astype(np.float64) + gain * NOISE.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(mix_at_snr(CLEAN, NOISE, 3.0), want)
