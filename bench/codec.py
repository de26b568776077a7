"""The decode stage against the codec's cheapest exact output, per format, on the same bytes (single-threaded
CPU time per window): what ``decode_over_codec_<fmt>`` and ``decode_windows_per_core_<fmt>`` measure."""

from __future__ import annotations

import os

import numpy as np

from bench.common import Sizes, best_cpu_of, log

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


# Frames per read of the codec baselines: at this size libsndfile's cost per call is negligible.
CODEC_BLOCK_FRAMES = 1 << 16
CODEC_CALLS = 3      # calls of each codec form per round (best kept)
# The codec's cheapest exact output per format, the baseline of ``decode_over_codec_<fmt>``: int16 where the
# source is 16-bit PCM or FLAC; libsndfile's float32 for Vorbis and MP3, which it decodes to float internally
# (its int16 read is that float output converted, so it costs more and is not exact); PyAV's own frames for AAC.
BASELINE_FORM = {"wav": "int16", "flac": "int16", "ogg": "float32", "mp3": "float32", "m4a": "frames"}


def sndfile_read(path: str, dtype: str) -> None:
    """The whole file at ``path`` read by libsndfile as ``dtype`` into one reused buffer (``read(out=...)``)."""
    import soundfile as sf

    with sf.SoundFile(path) as f:
        out = np.empty((CODEC_BLOCK_FRAMES, f.channels), dtype=dtype)
        while len(f.read(CODEC_BLOCK_FRAMES, dtype=dtype, out=out)) == CODEC_BLOCK_FRAMES:
            pass


def pyav_frames(path: str) -> None:
    """The whole file at ``path`` decoded by PyAV (FFmpeg), each frame taken as its native ndarray, unconverted."""
    import av

    with av.open(path) as container:
        for frame in container.decode(audio=0):
            frame.to_ndarray()


def codec_forms(ext: str) -> dict:
    """The codec outputs timed for ``ext``: name -> a call decoding the file at the path it is given. The first
    is the baseline (``BASELINE_FORM``); the others are shown beside it (the int16/float32 check)."""
    if ext == "m4a":
        return {"frames": pyav_frames}
    forms = ("int16", "float32")
    ordered = (BASELINE_FORM[ext], *(f for f in forms if f != BASELINE_FORM[ext]))
    return {form: (lambda path, form=form: sndfile_read(path, form)) for form in ordered}


def decode_stage(path: str) -> int:
    """das label's whole decode stage over the file at ``path`` (``das_core.label.decode.decode_units`` on a
    unit of that one file, default settings, producing chunk rows); returns the number of windows."""
    import pyarrow as pa

    from das_core.label.decode import DecodeSettings, decode_units

    batch = pa.table({"unit": ["u00000000"], "file_ids": [[os.path.basename(path)]], "paths": [[path]]})
    return sum(int(t.column("n_windows")[0].as_py()) for t in decode_units(batch, DecodeSettings()))


def bench_codec(work: str, sizes: Sizes) -> dict:
    """Per window, single-threaded CPU time (process time, best of ``sizes.codec_repeats`` interleaved rounds)
    of the whole decode stage over the codec's cheapest exact output on the same bytes, per format:
    ``decode_over_codec_<fmt>``, ``decode_windows_per_core_<fmt>`` and ``codec_ms_per_window_<fmt>`` (each form
    timed, and the stage). The input: ``sizes.codec_seconds`` of 44.1 kHz stereo noise in a file in ``work``,
    read from the page cache by both. Each round keeps the best of ``CODEC_CALLS`` calls of every form and of
    the stage alike, so that a disturbed call makes neither side look slow."""
    os.makedirs(work, exist_ok=True)
    out: dict = {}
    for ext, fmt, codec in CODEC_FORMATS:
        path = os.path.join(work, f"codec-{sizes.codec_seconds:g}s.{ext}")
        try:
            data = codec_file(sizes.codec_seconds, ext, fmt, codec)
            with open(path, "wb") as f:
                f.write(data)
            windows = decode_stage(path)
        except Exception as exc:  # noqa: BLE001 - a format this build cannot read is reported, not fatal
            log(f"codec {ext}: not measured ({type(exc).__name__}: {exc})")
            continue
        forms = codec_forms(ext)
        times: dict[str, list[float]] = {name: [] for name in (*forms, "stage")}
        for _ in range(sizes.codec_repeats):           # interleaved: every form sees the same load
            for name, decode in forms.items():
                times[name].append(best_cpu_of(lambda p=path, fn=decode: fn(p), CODEC_CALLS))
            times["stage"].append(best_cpu_of(lambda p=path: decode_stage(p), CODEC_CALLS))
        best = {name: min(t) for name, t in times.items()}
        baseline = next(iter(forms))
        out[f"decode_over_codec_{ext}"] = best["stage"] / best[baseline]
        out[f"decode_windows_per_core_{ext}"] = windows / best["stage"]
        ms = {name: 1e3 * s / windows for name, s in best.items()}
        out[f"codec_ms_per_window_{ext}"] = ms
        log(f"codec {ext}: " + ", ".join(f"{name} {v:.2f}" for name, v in ms.items() if name != "stage")
            + f" ms/window; stage {ms['stage']:.2f} ({out[f'decode_over_codec_{ext}']:.2f}x the {baseline} read), "
            f"{out[f'decode_windows_per_core_{ext}']:.0f} windows/s per core")
    return out
