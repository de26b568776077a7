import io
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from conftest import sine, write_audio

from das_core.audio import info
from das_core.audio.decode import AudioStream, downmix, load_mono48k
from das_core.audio.windows import SAMPLE_RATE, WINDOW_SAMPLES, segment, window_count
from das_core.errors import AudioDecodeError


def windows_of(path):
    with open(path, "rb") as f, AudioStream(f, str(path)) as stream:
        return list(segment(stream.mono48k()))


@pytest.mark.parametrize("seconds, expected", [(0.05, 1), (9.99, 1), (10.0, 1), (10.5, 1), (11.0, 2),
                                               (25.0, 3), (20.9, 2)])
def test_window_counts(tmp_path, seconds, expected):
    path = write_audio(tmp_path / "x.wav", sine(440, seconds, SAMPLE_RATE), SAMPLE_RATE)
    wins = windows_of(path)
    assert len(wins) == expected == window_count(int(round(seconds * SAMPLE_RATE)))
    assert all(w.samples.shape == (WINDOW_SAMPLES,) and w.samples.dtype == np.float32 for w in wins)
    assert [w.index for w in wins] == list(range(expected))
    assert wins[0].start_s == 0.0
    assert wins[-1].end_s == pytest.approx(seconds if seconds < 10 or expected > seconds // 10 else 10 * expected,
                                          abs=1e-4)


def test_one_hour_file_streams_in_bounded_memory(tmp_path):
    rate, minutes = 8000, 60
    path = tmp_path / "hour.wav"
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        block = sine(220, 60.0, rate, amp=0.3)
        for _ in range(minutes):
            f.write(block)
    decoded_bytes = minutes * 60 * SAMPLE_RATE * 4
    tracemalloc.start()
    count = 0
    with open(path, "rb") as fh, AudioStream(fh, str(path)) as stream:
        for w in segment(stream.mono48k()):
            count += 1
            assert w.length == WINDOW_SAMPLES
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 360
    assert peak < decoded_bytes / 20, f"peak {peak / 2**20:.1f} MiB for {decoded_bytes / 2**20:.0f} MiB decoded"


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 96000])
def test_resampling_keeps_frequency(tmp_path, rate):
    freq, seconds = 1000.0, 2.0
    path = write_audio(tmp_path / f"s{rate}.flac", sine(freq, seconds, rate), rate)
    with open(path, "rb") as f:
        y = load_mono48k(f, path)
    assert abs(len(y) - seconds * SAMPLE_RATE) <= 2
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(y)
    assert peak_hz == pytest.approx(freq, abs=1.0)
    # the energy stays where it was: little leaks away from the tone
    band = spectrum[int(0.9 * freq * len(y) / SAMPLE_RATE): int(1.1 * freq * len(y) / SAMPLE_RATE)]
    assert np.sum(band ** 2) / np.sum(spectrum ** 2) > 0.999


@pytest.mark.parametrize("channels", [2, 8])
def test_downmix_is_channel_mean(tmp_path, channels):
    x = sine(300, 1.0, SAMPLE_RATE, channels=channels, amp=0.1)
    path = write_audio(tmp_path / "multi.wav", x, SAMPLE_RATE, subtype="FLOAT")
    with open(path, "rb") as f:
        y = load_mono48k(f, path)
    np.testing.assert_allclose(y, x.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("fmt, subtype, ext", [("WAV", "PCM_16", "wav"), ("FLAC", "PCM_24", "flac"),
                                               ("OGG", "VORBIS", "ogg"), ("AIFF", "PCM_16", "aiff")])
def test_decodes_containers_from_bytes_and_file_objects(tmp_path, fmt, subtype, ext):
    x = sine(500, 1.5, 44100, channels=2, amp=0.2)
    path = write_audio(tmp_path / f"c.{ext}", x, 44100, fmt, subtype)
    data = open(path, "rb").read()
    from_bytes = load_mono48k(data, path)
    with open(path, "rb") as f:
        from_file = load_mono48k(f, path)
    np.testing.assert_array_equal(from_bytes, from_file)
    assert abs(len(from_bytes) - 1.5 * SAMPLE_RATE) <= 2
    assert np.sqrt(np.mean(from_bytes ** 2)) == pytest.approx(np.sqrt(np.mean(x.mean(axis=1) ** 2)), rel=0.05)


def flac_bytes(seconds=3.0):
    buf = io.BytesIO()
    sf.write(buf, sine(440, seconds, 16000), 16000, format="FLAC")
    return buf.getvalue()


def wav_bytes(x, rate=16000, subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def decode_all(data, name="clip"):
    with AudioStream(data, name) as s:
        return list(segment(s.mono48k()))


@pytest.mark.parametrize("data, kind, words", [
    (b"", info.EMPTY, "zero bytes"),
    (b"this is just some text, not audio at all\n" * 20, info.NOT_AUDIO, "not an audio file"),
    (np.random.default_rng(0).bytes(4096), info.NOT_AUDIO, "not an audio file"),
    (flac_bytes()[: len(flac_bytes()) // 2], info.TRUNCATED, "decoding failed"),
    (wav_bytes(sine(440, 2.0, 16000))[:30000], info.TRUNCATED, "header declares"),
    (wav_bytes(np.zeros(0, dtype=np.float32)), info.EMPTY, "no audio frames"),
    (wav_bytes(np.r_[np.zeros(100), np.nan, np.zeros(100)].astype(np.float32), subtype="FLOAT"),
     info.NON_FINITE, "NaN or infinite sample at 0.006"),
    (wav_bytes(sine(100, 0.5, 500), rate=500), info.UNSUPPORTED, "sample rate 500 Hz"),
], ids=["empty", "text", "random-bytes", "truncated-flac", "truncated-wav", "zero-frames", "nan", "absurd-rate"])
def test_bad_inputs_raise_typed_errors(data, kind, words):
    with pytest.raises(AudioDecodeError) as err:
        decode_all(data, name="s3://bucket/bad.file")
    assert err.value.kind == kind
    assert "s3://bucket/bad.file" in str(err.value) and words in str(err.value)


def old_path_int16(data: bytes, block=1 << 16) -> list[bytes]:
    """The decode stage as it was: libsndfile blocks, mean downmix, soxr HQ, copied windows, LAION's formula."""
    import soxr

    with sf.SoundFile(io.BytesIO(data)) as f:
        rs = soxr.ResampleStream(f.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        mono = [rs.resample_chunk(b.mean(axis=1, dtype=np.float32), last=False)
                for b in f.blocks(block, dtype="float32", always_2d=True)]
    mono.append(rs.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return [(np.clip(w.samples, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes() for w in segment(mono)]


@pytest.mark.parametrize("fmt, subtype, rate, channels, seconds", [
    ("WAV", "PCM_16", 44100, 2, 23.4), ("FLAC", "PCM_24", 32000, 6, 10.0), ("WAV", "FLOAT", 48000, 2, 10.7),
    ("OGG", "VORBIS", 22050, 1, 0.8)])
def test_fast_path_is_bit_identical_to_the_old_one(fmt, subtype, rate, channels, seconds):
    rng = np.random.default_rng(5)
    x = np.clip(0.4 * rng.standard_normal((int(seconds * rate), channels)), -1.1, 1.1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    data = buf.getvalue()
    with AudioStream(data, f"x.{fmt.lower()}") as stream:
        fast = [(w.index, w.start, w.length, pcm) for w, pcm in stream.int16_windows()]
    old = old_path_int16(data)
    assert len(fast) == len(old) == window_count(int(round(seconds * SAMPLE_RATE)))
    assert [pcm for *_, pcm in fast] == old
    with AudioStream(data, "x") as stream:       # the public per-window API gives the same windows
        assert [(w.index, w.start, w.length) for w in segment(stream.mono48k())] == [f[:3] for f in fast]


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5, 6, 7, 8, 12])
def test_downmix_matches_numpy_mean(channels):
    block = np.random.default_rng(channels).standard_normal((5000, channels)).astype(np.float32)
    mean = block.mean(axis=1, dtype=np.float32)
    if channels < 8:        # numpy adds up to 7 values in order: the same operations
        np.testing.assert_array_equal(downmix(block), mean)
    else:                   # from 8 on numpy sums pairwise: the last bit may differ
        np.testing.assert_allclose(downmix(block), mean, rtol=0, atol=1e-6)
