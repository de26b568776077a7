"""FFmpeg (PyAV) decoding: fixtures are encoded by PyAV itself, here, at odd rates."""

import io
import tracemalloc

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from das_core.audio import info
from das_core.audio.decode import FFMPEG_EXTENSIONS, AudioStream, load_mono48k
from das_core.audio.info import FFMPEG, LIBSNDFILE
from das_core.audio.windows import SAMPLE_RATE, WINDOW_SAMPLES, window_count
from das_core.errors import AudioDecodeError
from das_core.io.inputs import DEFAULT_EXTENSIONS, list_inputs


def tones(seconds: float, rate: int, channels: int = 2) -> np.ndarray:
    """Different tones per channel under a slow envelope: aperiodic enough to align unambiguously."""
    t = np.arange(int(seconds * rate)) / rate
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 1.3 * t)
    return np.stack([0.3 * env * np.sin(2 * np.pi * (330 + 220 * c) * t + c) for c in range(channels)],
                    axis=1).astype(np.float32)


def encode(x: np.ndarray, rate: int, container: str, codec: str, *, path=None, options=None,
           bit_rate: int | None = None) -> bytes:
    """``x`` (frames, channels) encoded by PyAV's FFmpeg; to ``path`` where the muxer must seek back (faststart)."""
    target = str(path) if path else io.BytesIO()
    layout = "mono" if x.shape[1] == 1 else "stereo"
    with av.open(target, "w", format=container, options=options or {}) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if bit_rate:
            stream.bit_rate = bit_rate
        formats = [f.name for f in stream.codec_context.codec.audio_formats]
        fmt = next(f for f in ("fltp", "flt", "s16p", "s16") if f in formats)
        for i in range(0, len(x), 4096):
            piece = x[i:i + 4096]
            arr = np.ascontiguousarray(piece.T if fmt.endswith("p") else piece.reshape(1, -1))
            if fmt.startswith("s16"):
                arr = (arr * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(arr, format=fmt, layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return open(path, "rb").read() if path else target.getvalue()


def aligned_correlation(y: np.ndarray, ref: np.ndarray, max_lag: int) -> tuple[int, float]:
    """Correlation of ``y`` with ``ref`` at the lag (codec delay, within ``max_lag``) that maximises it."""
    nfft = 1 << (len(y) + len(ref) - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(y, nfft) * np.conj(np.fft.rfft(ref, nfft)), nfft)
    lags = np.r_[np.arange(0, max_lag + 1), np.arange(-max_lag, 0)]
    lag = int(lags[np.argmax(np.r_[c[: max_lag + 1], c[-max_lag:]])])
    a, b = (y[lag:], ref) if lag >= 0 else (y, ref[-lag:])
    k = min(len(a), len(b))
    return lag, float(np.corrcoef(a[:k], b[:k])[0, 1])


# ext, container, codec, rate, channels, bit rate, least correlation with the source (lossy), decoder
CODECS = [
    ("m4a", "ipod", "aac", 22050, 2, None, 0.999, FFMPEG),
    ("webm", "webm", "libopus", 24000, 2, None, 0.999, FFMPEG),
    ("wma", "asf", "wmav2", 22050, 2, 64000, 0.98, FFMPEG),
    ("ac3", "ac3", "ac3", 44100, 2, None, 0.995, FFMPEG),
    ("amr", "amr", "libopencore_amrnb", 8000, 1, 12200, 0.97, FFMPEG),
    ("mka", "matroska", "ac3", 48000, 2, None, 0.995, FFMPEG),
    ("m4a", "ipod", "alac", 44100, 2, None, 0.9999, FFMPEG),        # lossless, decoded as planar int16
    ("mp2", "mp2", "mp2", 32000, 2, None, 0.995, LIBSNDFILE),       # libsndfile reads MPEG layer II
    ("mp3", "mp3", "libmp3lame", 32000, 2, None, 0.995, LIBSNDFILE),  # MP3 encoded by PyAV's LAME
]


@pytest.mark.parametrize("ext, container, codec, rate, channels, bit_rate, least, decoder", CODECS,
                         ids=[f"{c[2]}-in-{c[0]}" for c in CODECS])
def test_ffmpeg_formats_decode_to_the_source_signal(ext, container, codec, rate, channels, bit_rate, least,
                                                    decoder):
    seconds = 12.5
    x = tones(seconds, rate, channels)
    data = encode(x, rate, container, codec, bit_rate=bit_rate)
    with AudioStream(io.BytesIO(data), f"s3://bucket/clip.{ext}") as stream:
        assert stream.decoder == decoder
        assert stream.info.channels == channels
        if decoder == FFMPEG:
            assert stream.info.subtype in codec
            assert not stream.info.frames_exact     # declared or estimated (AMR: from the bitrate, 3 % off)
        assert stream.info.duration_s == pytest.approx(seconds, rel=0.05)
        blocks = [b.copy() for b in stream.mono48k()]
        decoded_s = stream.decoded_frames / stream.info.sample_rate
    y = np.concatenate(blocks)
    assert decoded_s == pytest.approx(seconds, abs=0.2)            # codec priming/padding, at most a few frames
    assert len(y) == pytest.approx(decoded_s * SAMPLE_RATE, abs=2)
    ref = soxr.resample(x.mean(axis=1), rate, SAMPLE_RATE)
    lag, corr = aligned_correlation(y[4800:-4800], ref[4800:-4800], SAMPLE_RATE // 4)
    assert corr > least, (lag, corr)
    with AudioStream(data, f"clip.{ext}") as stream:
        windows = [w for w, _ in stream.int16_windows()]
    assert len(windows) == window_count(len(y)) == 2                 # 10 s + a tail of about 2.5 s
    assert windows[1].length == len(y) - WINDOW_SAMPLES


@pytest.mark.parametrize("subtype, channels", [("PCM_16", 2), ("PCM_24", 2), ("PCM_32", 6), ("PCM_U8", 1),
                                               ("FLOAT", 2)])
def test_same_wav_gives_the_same_samples_from_both_decoders(subtype, channels):
    x = tones(3.0, 44100, channels)
    buf = io.BytesIO()
    sf.write(buf, x, 44100, format="WAV", subtype=subtype)
    data = buf.getvalue()
    out = {}
    for decoder in (LIBSNDFILE, FFMPEG):
        with AudioStream(data, "same.wav", decoder=decoder) as stream:
            assert stream.decoder == decoder
            assert (stream.info.sample_rate, stream.info.channels) == (44100, channels)
            out[decoder] = np.concatenate(list(stream.mono48k()))
    # the same integer scaling, downmix order and (chunk-invariant) soxr stream: bit for bit
    np.testing.assert_array_equal(out[FFMPEG], out[LIBSNDFILE])


def test_lossless_alac_in_m4a_equals_the_same_pcm_in_wav():
    x = tones(4.0, 44100)
    pcm16 = (x * 32767).astype(np.int16)
    wav = io.BytesIO()
    sf.write(wav, pcm16, 44100, format="WAV", subtype="PCM_16")
    alac = encode(x, 44100, "ipod", "alac")                 # the encoder gets the same int16 samples
    with AudioStream(alac, "lossless.m4a") as stream:
        assert stream.decoder == FFMPEG and stream.info.subtype == "alac"
        from_alac = np.concatenate(list(stream.mono48k()))
    with AudioStream(wav.getvalue(), "lossless.wav") as stream:
        from_wav = np.concatenate(list(stream.mono48k()))
    np.testing.assert_array_equal(from_alac, from_wav)       # planar int16 from FFmpeg, scaled as libsndfile


def test_decoder_falls_back_to_ffmpeg_when_libsndfile_refuses():
    data = encode(tones(2.0, 22050), 22050, "ipod", "aac")
    with AudioStream(data, "misnamed.wav") as stream:      # libsndfile is tried first, then FFmpeg
        assert stream.decoder == FFMPEG and stream.info.format.startswith("mov")
    with AudioStream(io.BytesIO(data), "clip.m4a") as stream:
        assert stream.decoder == FFMPEG
    wav = io.BytesIO()
    sf.write(wav, tones(1.0, 16000), 16000, format="WAV")
    with AudioStream(wav.getvalue(), "clip.wav") as stream:
        assert stream.decoder == LIBSNDFILE


def test_codecs_inside_wav_libsndfile_lacks_go_to_ffmpeg():
    x = tones(3.0, 44100)
    ac3_in_wav = encode(x, 44100, "wav", "ac3")        # libsndfile: "Malformed 'fmt ' chunk"
    with AudioStream(ac3_in_wav, "broadcast.wav") as stream:
        y = np.concatenate(list(stream.mono48k()))
        assert stream.decoder == FFMPEG and stream.info.subtype == "ac3"
    assert aligned_correlation(y[4800:-4800], soxr.resample(x.mean(axis=1), 44100, SAMPLE_RATE)[4800:-4800],
                               SAMPLE_RATE // 4)[1] > 0.995
    mp3_in_wav = encode(tones(2.0, 22050), 22050, "wav", "libmp3lame")
    with AudioStream(mp3_in_wav, "voice.wav") as stream:   # libsndfile reads it; ends < 1 MPEG frame short
        assert len(list(stream.int16_windows())) == 1 and stream.decoder == LIBSNDFILE
        assert stream.info.frames - 2 * 1152 <= stream.decoded_frames < stream.info.frames


def test_long_ffmpeg_file_streams_in_bounded_memory(tmp_path):
    minutes, rate = 10, 16000
    minute = tones(60.0, rate, 1)
    x = np.concatenate([minute] * minutes)
    data = encode(x, rate, "ipod", "aac", bit_rate=32000)
    path = tmp_path / "long.m4a"
    path.write_bytes(data)
    del x
    decoded_bytes = minutes * 60 * SAMPLE_RATE * 4
    tracemalloc.start()
    count = 0
    with open(path, "rb") as f, AudioStream(f, str(path)) as stream:
        for w, pcm in stream.int16_windows():
            count += 1
            assert len(pcm) == 2 * WINDOW_SAMPLES and w.index == count - 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 60
    # a few windows' buffers (float window, scratch, int16, bytes), not the file: a tenth of it decoded
    assert peak < 5 * WINDOW_SAMPLES * 4 < decoded_bytes / 10, f"peak {peak / 2**20:.1f} MiB"


def test_ffmpeg_reads_s3_objects_in_ranged_reads(bucket, s3_endpoint):
    import boto3

    from das_core.io import storage

    x = tones(25.0, 22050)
    objects = {"clip.m4a": encode(x, 22050, "ipod", "aac"), "clip.webm": encode(tones(25.0, 48000), 48000,
                                                                                  "webm", "libopus")}
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=f"a/{key}", Body=data)
    for key, data in objects.items():
        uri = f"s3://{bucket}/a/{key}"
        with storage.open_input(uri, block_size=16 * 1024) as f, AudioStream(f, uri) as stream:
            got = [pcm for _, pcm in stream.int16_windows()]
            assert stream.decoder == FFMPEG
        with AudioStream(data, key) as stream:          # the same bytes from memory: the same windows
            assert got == [pcm for _, pcm in stream.int16_windows()]
        assert len(got) == 3


def video_only_mp4() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def lossy(tmp_path_factory):
    x = tones(20.0, 22050)
    fast = tmp_path_factory.mktemp("faststart") / "fast.m4a"
    return {"m4a": encode(x, 22050, "ipod", "aac"),                     # index (moov) written last
            "m4a-faststart": encode(x, 22050, "mp4", "aac", path=fast, options={"movflags": "faststart"}),
            "webm": encode(tones(20.0, 48000), 48000, "webm", "libopus")}


@pytest.mark.parametrize("key, name, cut, kind, words", [
    ("m4a", "cut.m4a", 0.9, info.TRUNCATED, "truncated MP4/MOV container"),
    ("m4a-faststart", "cut.m4a", 0.5, info.TRUNCATED, "decoding failed after"),
    ("webm", "cut.webm", 0.5, info.TRUNCATED, "of the 20.01 s its container declares"),
    ("webm", "cut.webm", 0.9, info.TRUNCATED, "its container declares"),
], ids=["m4a-no-index", "m4a-faststart", "webm-half", "webm-90"])
def test_truncated_ffmpeg_files(lossy, key, name, cut, kind, words):
    data = lossy[key]
    with pytest.raises(AudioDecodeError) as err, AudioStream(data[: int(len(data) * cut)], name) as stream:
        list(stream.int16_windows())
    assert err.value.kind == kind and words in str(err.value), str(err.value)
    with AudioStream(data, name) as stream:        # the whole file is fine
        assert len(list(stream.int16_windows())) == 2


@pytest.mark.parametrize("data, name, kind, words", [
    (b"", "empty.m4a", info.EMPTY, "zero bytes"),
    (np.random.default_rng(0).bytes(50_000), "garbage.m4a", info.NOT_AUDIO, "not an audio file FFmpeg can read"),
    (np.random.default_rng(1).bytes(50_000), "garbage.webm", info.NOT_AUDIO, "not an audio file"),
    (b"plain text, not a film\n" * 100, "notes.mp4", info.NOT_AUDIO, "not an audio file"),
    (np.random.default_rng(2).bytes(50_000), "garbage.bin", info.NOT_AUDIO, "libsndfile or FFmpeg"),
    (video_only_mp4(), "video.mp4", info.NOT_AUDIO, "no audio stream"),
    (video_only_mp4(), "video-misnamed.wav", info.NOT_AUDIO, "no audio stream"),
], ids=["empty", "garbage-m4a", "garbage-webm", "text-mp4", "garbage-fallback", "video-only", "video-misnamed"])
def test_hostile_inputs_through_ffmpeg(data, name, kind, words):
    with pytest.raises(AudioDecodeError) as err:
        with AudioStream(data, name) as stream:
            list(stream.int16_windows())
    assert err.value.kind == kind and words in str(err.value) and name in str(err.value), str(err.value)


def test_absurd_rate_through_ffmpeg_is_unsupported():
    buf = io.BytesIO()
    sf.write(buf, tones(1.0, 500, 1), 500, format="WAV")
    with pytest.raises(AudioDecodeError) as err:
        AudioStream(buf.getvalue(), "slow.wav", decoder=FFMPEG)
    assert err.value.kind == info.UNSUPPORTED and "sample rate 500 Hz" in str(err.value)


def test_load_mono48k_bounds_ffmpeg_files_by_decoded_length():
    data = encode(tones(6.0, 16000, 1), 16000, "adts", "aac")       # raw ADTS: the length is an estimate
    assert len(load_mono48k(data, "ok.aac", max_seconds=10)) == pytest.approx(6 * SAMPLE_RATE, abs=4800)
    with pytest.raises(AudioDecodeError) as err:
        load_mono48k(data, "long.aac", max_seconds=3)
    assert err.value.kind == info.UNSUPPORTED


def test_folder_listing_picks_up_ffmpeg_formats(tmp_path):
    assert set(FFMPEG_EXTENSIONS) <= set(DEFAULT_EXTENSIONS)
    (tmp_path / "a.m4a").write_bytes(encode(tones(1.0, 22050), 22050, "ipod", "aac"))
    (tmp_path / "b.webm").write_bytes(encode(tones(1.0, 48000), 48000, "webm", "libopus"))
    (tmp_path / "c.txt").write_text("not audio")
    assert sorted(f.file_id for f in list_inputs(str(tmp_path))) == ["a.m4a", "b.webm"]
