"""Windows, repeat-padding and LAION's int16 round trip (das_core.audio.windows)."""

import numpy as np
import pytest

from das_core.audio.windows import int16_round_trip, quantize_int16, repeat_pad, segment, window_count


def test_short_file_is_repeat_padded_like_laion():
    x = np.arange(1, 4, dtype=np.float32)
    padded = repeat_pad(x, 7)
    assert padded.tolist() == [1, 2, 3, 1, 2, 3, 0]
    (w,) = list(segment([x], window=7, hop=7, min_tail=2))
    assert w.length == 3 and w.real.tolist() == [1, 2, 3] and w.samples.tolist() == padded.tolist()


def test_tail_rules_and_hop():
    blocks = [np.ones(25, dtype=np.float32)]
    assert [w.length for w in segment(blocks, window=10, hop=10, min_tail=5)] == [10, 10, 5]
    assert [w.length for w in segment(blocks, window=10, hop=10, min_tail=6)] == [10, 10]
    overl = list(segment(blocks, window=10, hop=5, min_tail=5))
    assert [(w.start, w.length) for w in overl] == [(0, 10), (5, 10), (10, 10), (15, 10)]
    assert window_count(25, window=10, hop=5, min_tail=5) == 4
    # 2 samples after the last full window (15..25): a tail window from 20 holds the last 7 samples
    tail = list(segment([np.ones(27, dtype=np.float32)], window=10, hop=5, min_tail=2))
    assert [(w.start, w.length) for w in tail][-1] == (20, 7)
    assert window_count(27, window=10, hop=5, min_tail=2) == 5
    with pytest.raises(ValueError):
        list(segment(blocks, window=10, hop=11))


def test_int16_round_trip_matches_laion_formula():
    x = np.linspace(-1.2, 1.2, 1001).astype(np.float32)
    q = quantize_int16(x)
    assert q.dtype == np.int16 and q.max() == 32767 and q.min() == -32767
    expected = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16) / 32767.0
    np.testing.assert_array_equal(int16_round_trip(x), expected.astype(np.float32))


def test_quantize_into_buffers_is_laions_formula_bit_for_bit():
    rng = np.random.default_rng(3)
    x = np.r_[rng.uniform(-1.5, 1.5, 100_000), [-1.0, 1.0, -0.0, 0.0, 1 / 32767, -1 / 32767, 0.99999994,
                                                 -0.99999994, 1.0000001, 3e38, -3e38]].astype(np.float32)
    old = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
    out, scratch = np.empty(len(x), np.int16), np.empty(len(x), np.float32)
    got = quantize_int16(x, out=out, scratch=scratch)
    assert got is out and got.dtype == np.int16
    np.testing.assert_array_equal(got, old)
    np.testing.assert_array_equal(quantize_int16(x), old)
    batch = x[:99_990].reshape(10, -1)
    np.testing.assert_array_equal(quantize_int16(batch), (np.clip(batch, -1, 1) * 32767.0).astype(np.int16))


def test_windows_share_one_buffer_and_match_segment():
    x = np.sin(np.arange(250_000, dtype=np.float32) / 7.0)
    blocks = [x[i:i + 30_000] for i in range(0, len(x), 30_000)]
    copied = [(w.start, w.length, w.samples) for w in segment(blocks, window=100_000, hop=40_000, min_tail=5)]
    reused = []
    for w in segment(blocks, window=100_000, hop=40_000, min_tail=5, reuse=True):
        reused.append((w.start, w.length, w.samples.copy(), w.samples))
    assert [r[:2] for r in reused] == [c[:2] for c in copied]
    for (_, _, got, _), (_, _, want) in zip(reused, copied):
        np.testing.assert_array_equal(got, want)
    assert len({id(r[3]) for r in reused}) == 1
    short = [w.samples.copy() for w in segment([x[:7]], window=20, hop=20, min_tail=1, reuse=True)]
    np.testing.assert_array_equal(short[0], repeat_pad(x[:7], 20))

