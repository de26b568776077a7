"""The decode stage against the bare codec, per format, on the same bytes (single-threaded CPU time per
window), with soxr's share and the stage as it was before the fast path."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from bench.common import Sizes, best_cpu_of, log
from bench.inputs import sine_mix

CODEC_FORMATS = (("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"),
                 ("mp3", "MP3", "MPEG_LAYER_III"), ("m4a", None, "aac"))


def codec_file(seconds: float, ext: str, fmt: str | None, codec: str, rate: int = 44100) -> bytes:
    """``seconds`` of stereo Gaussian noise encoded as ``ext``: libsndfile for ``fmt``, else PyAV with ``codec``."""
    import io

    import soundfile as sf

    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    pieces = [(0.1 * rng.standard_normal((int(min(10.0, seconds - t) * rate), 2))).astype(np.float32)
              for t in np.arange(0.0, seconds, 10.0)]
    if fmt is not None:
        with sf.SoundFile(buf, "w", rate, 2, format=fmt, subtype=codec) as f:
            for piece in pieces:        # 10 s writes: libsndfile's lossy encoders crash on huge ones
                f.write(piece)
        return buf.getvalue()
    import av

    with av.open(buf, "w", format="ipod" if ext == "m4a" else ext) as out:
        stream = out.add_stream(codec, rate=rate, layout="stereo")
        for piece in pieces:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece.T), format="fltp", layout="stereo")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def bare_decode(data: bytes, ext: str, block: int | None = None) -> None:
    """The codec alone: libsndfile's float32 read into one reused buffer (in the stage's block size), or
    PyAV's frame decode."""
    import io

    if ext in ("m4a",):
        import av

        with av.open(io.BytesIO(data)) as container:
            for _ in container.decode(audio=0):
                pass
        return
    import soundfile as sf

    from das_core.audio.info import block_frames_for

    with sf.SoundFile(io.BytesIO(data)) as f:
        block = block or block_frames_for(f.channels)
        out = np.empty((block, f.channels), dtype=np.float32)
        while len(f.read(block, dtype="float32", out=out)) == block:
            pass


_STAGE_FILES: dict[str, str] = {}


def decode_stage(data: bytes, name: str, noise_path: str | None = None) -> int:
    """das label's decode stage over ``data`` (``das_core.label.units.decode_unit``: the file's windows as int16
    bytes packed into chunk rows for the encoder); returns the number of windows.

    With ``noise_path`` every window is mixed at 10 dB first, as ``das label --snr-db`` does."""
    from das_core.label.decode import DecodeSettings, decode_unit

    path = _STAGE_FILES.get(name)
    if path is None:
        fd, path = tempfile.mkstemp(suffix=os.path.splitext(name)[1], prefix="das-bench-stage-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _STAGE_FILES[name] = path
    settings = DecodeSettings()     # noise is mixed on the encoder's device now: noise_path no longer changes it
    return sum(t.column("n_windows")[0].as_py() for t in decode_unit("u00000000", [name], [path], settings))


def decode_stage_before(data: bytes) -> int:
    """The decode stage as it was before the fast path (libsndfile formats), kept as the reference it is
    measured against: soundfile's ``blocks`` (a new array per block), finiteness of every sample, ``mean``
    downmix, copied windows, LAION's quantisation formula with its temporaries."""
    import io

    import soundfile as sf
    import soxr

    from das_core.audio.windows import SAMPLE_RATE, segment

    def mono(f):
        """The file's mono 48 kHz signal, block by block, as the old stage made it."""
        rs = soxr.ResampleStream(f.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        for block in f.blocks(1 << 16, dtype="float32", always_2d=True):
            assert np.isfinite(block).all()
            yield rs.resample_chunk(block.mean(axis=1, dtype=np.float32), last=False)
        yield rs.resample_chunk(np.zeros(0, dtype=np.float32), last=True)

    n = 0
    with sf.SoundFile(io.BytesIO(data)) as f:
        for w in segment(mono(f)):
            (np.clip(w.samples, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
            n += 1
    return n


def resample_alone(rate: int, frames: int, block: int = 1 << 16, quality: str = "HQ") -> float:
    """CPU seconds soxr takes, streamed in the decoder's blocks, to bring ``frames`` mono samples to 48 kHz."""
    import soxr

    from das_core.audio.windows import SAMPLE_RATE

    if rate == SAMPLE_RATE:
        return 0.0
    mono = (0.1 * np.random.default_rng(0).standard_normal(frames)).astype(np.float32)

    def run():
        """One streamed resampling of the whole signal."""
        rs = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality=quality)
        for i in range(0, len(mono), block):
            rs.resample_chunk(mono[i:i + block])
        rs.resample_chunk(mono[:0], last=True)

    return best_cpu_of(run, 1)


def _rate_and_frames(data: bytes, name: str) -> tuple[int, int]:
    import io

    from das_core.audio.decode import AudioStream

    with AudioStream(io.BytesIO(data), name) as stream:
        for _ in stream.windows():
            pass
        return stream.info.sample_rate, stream.decoded_frames


def bench_codec(work: str, sizes: Sizes) -> dict:
    """Per window, single-threaded CPU time: the whole decode stage over the bare codec on the same bytes.

    Also times soxr alone on a signal as long as the file (``resample`` in ``codec_ms_per_window_*``): the
    part of the stage no decoder change can remove. ``wav_noisy`` is the WAV stage with noise mixed in."""
    noise_path = os.path.join(work, "codec-noise.wav")
    if not os.path.exists(noise_path):
        import soundfile as sf

        sf.write(noise_path, sine_mix(30.0, 48000, 1, seed=99), 48000)
    out: dict = {}
    variants = [(ext, ext, fmt, codec, 44100, None) for ext, fmt, codec in CODEC_FORMATS]
    variants += [("wav48k", "wav", "WAV", "PCM_16", 48000, None),
                 ("wav_noisy", "wav", "WAV", "PCM_16", 44100, noise_path)]
    for key, ext, fmt, codec, rate, with_bank in variants:
        name = f"bench-{key}.{ext}"
        try:
            data = codec_file(sizes.codec_seconds, ext, fmt, codec, rate)
            windows = decode_stage(data, name, with_bank)
            rate, frames = _rate_and_frames(data, name)
        except Exception as exc:  # noqa: BLE001 - a format this build cannot read is reported, not fatal
            log(f"codec {key}: not measured ({type(exc).__name__}: {exc})")
            continue
        before = with_bank is None and ext != "m4a"
        bare, stage, resample, old = [], [], [], []
        for _ in range(sizes.codec_repeats):           # interleaved: all see the same load
            bare.append(best_cpu_of(lambda d=data, e=ext: bare_decode(d, e), 1))
            stage.append(best_cpu_of(lambda d=data, n=name, b=with_bank: decode_stage(d, n, b), 1))
            resample.append(resample_alone(rate, frames))
            if before:
                old.append(best_cpu_of(lambda d=data: decode_stage_before(d), 1))
        bare_s, stage_s, resample_s = min(bare), min(stage), min(resample)
        if before:
            out[f"decode_speedup_{key}"] = min(old) / stage_s
        out[f"decode_over_codec_{key}"] = stage_s / bare_s
        out[f"decode_windows_per_core_{key}"] = windows / stage_s
        ms = {k: 1e3 * v / windows for k, v in (("bare", bare_s), ("stage", stage_s), ("resample", resample_s),
                                                *((("before", min(old)),) if before else ()))}
        ms["rest"] = ms["stage"] - ms["bare"] - ms["resample"]
        out[f"codec_ms_per_window_{key}"] = ms
        log(f"codec {key}: bare {ms['bare']:.2f} ms/window, stage {ms['stage']:.2f} ({stage_s / bare_s:.2f}x; "
            f"soxr alone {ms['resample']:.2f}, the rest {ms['rest']:.2f}), {windows / stage_s:.0f} windows/s per core"
            + (f"; before this change {ms['before']:.2f}" if before else ""))
        if key == "wav":        # what a cheaper soxr quality would save (the stage keeps HQ)
            times: dict[str, list[float]] = {q: [] for q in ("QQ", "LQ", "MQ", "HQ", "VHQ")}
            for _ in range(sizes.codec_repeats):        # interleaved, as above
                for q, t in times.items():
                    t.append(resample_alone(rate, frames, quality=q))
            by_q = {q: 1e3 * min(t) / windows for q, t in times.items()}
            out["soxr_ms_per_window_by_quality"] = by_q
            log("soxr alone, ms per window by quality: " + ", ".join(f"{q} {v:.2f}" for q, v in by_q.items()))
    return out
