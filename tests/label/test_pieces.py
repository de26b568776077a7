"""The decode stage's pieces: codec output at the file's own rate, with the resampler's context, streamed."""

from __future__ import annotations

import io
import os

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import sine

from das_core.audio.decode import AudioStream
from das_core.audio.frontend import DeviceFrontEnd
from das_core.audio.resample import Ratio
from das_core.errors import AudioDecodeError
from das_core.label.decode import ChunkMeta, DecodeSettings, decode_unit


def _rows(paths: list[str], chunk_windows: int = 32):
    ids = [os.path.basename(p) for p in paths]
    rows = [t.to_pylist()[0] for t in decode_unit("u00000000", ids, paths, DecodeSettings(chunk_windows=chunk_windows))]
    return rows, [ChunkMeta.parse(r["meta"]) for r in rows]


def _pcm_mka(x: np.ndarray, rate: int) -> bytes:
    """``x`` (frames, 2) as 16-bit PCM in Matroska: FFmpeg reads it (libsndfile cannot), as packed int16."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="stereo")
        for i in range(0, len(x), 4096):
            frame = av.AudioFrame.from_ndarray((x[i:i + 4096] * 32767).astype(np.int16).reshape(1, -1),
                                               format="s16", layout="stereo")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("name, subtype, dtype", [
    ("a.wav", "PCM_16", "int16"), ("b.wav", "PCM_U8", "int16"), ("c.flac", "PCM_16", "int16"),
    ("d.flac", "PCM_24", "float32"), ("e.wav", "FLOAT", "float32"), ("f.ogg", "VORBIS", "float32"),
])
def test_pieces_hold_the_codec_output_in_its_cheapest_exact_form(tmp_path, name, subtype, dtype):
    rate = 44100
    x = sine(440, 12.5, rate, channels=2, amp=0.4)
    path = str(tmp_path / name)
    sf.write(path, x, rate, subtype=subtype)
    rows, metas = _rows([path])
    (piece,) = metas[0].pieces
    context = Ratio.of(rate).context
    assert (piece["rate"], piece["channels"], piece["dtype"], piece["context"]) == (rate, 2, dtype, context)
    assert piece["lengths"] == [480_000, 120_000] and metas[0].files[0]["n_emitted"] == 2
    frames = np.frombuffer(rows[0]["audio"], dtype=dtype, count=piece["frames"] * 2,
                           offset=piece["offset"]).reshape(-1, 2)
    want = sf.read(path, dtype=dtype)[0]
    assert not frames[:context].any()                                 # zeros before the file's start
    np.testing.assert_array_equal(frames[context:], want[:len(frames) - context])
    assert piece["frames"] == context + len(want)                     # nothing stored after its end


def test_ffmpeg_frames_stay_in_their_own_form(tmp_path):
    x = sine(440, 11.5, 44100, channels=2, amp=0.4)
    path = tmp_path / "pcm.mka"
    path.write_bytes(_pcm_mka(x, 44100))
    rows, metas = _rows([str(path)])
    (piece,) = metas[0].pieces
    assert piece["dtype"] == "int16" and metas[0].files[0]["decoder"] == "ffmpeg"
    frames = np.frombuffer(rows[0]["audio"], np.int16, piece["frames"] * 2, piece["offset"]).reshape(-1, 2)
    want = (x * 32767).astype(np.int16)
    np.testing.assert_array_equal(frames[piece["context"]:], want[:len(frames) - piece["context"]])


def test_a_rate_julius_cannot_do_cheaply_stays_on_the_host(tmp_path):
    path = str(tmp_path / "odd.wav")
    sf.write(path, sine(440, 3.0, 44056, amp=0.3), 44056)
    assert not Ratio.of(44056).on_device
    _, metas = _rows([path])
    (piece,) = metas[0].pieces
    assert (piece["rate"], piece["channels"], piece["dtype"], piece["context"]) == (48000, 1, "float32", 0)


def test_a_long_file_streamed_in_pieces_gives_the_windows_of_one_piece(tmp_path):
    path = str(tmp_path / "long.wav")
    rng = np.random.default_rng(5)
    sf.write(path, (rng.standard_normal((int(53.7 * 22050), 2)) * 0.2).astype(np.float32), 22050, subtype="PCM_16")
    front_end = DeviceFrontEnd(torch.device("cpu"))

    def windows(chunk_windows):
        rows, metas = _rows([path], chunk_windows)
        return torch.cat([front_end.windows(front_end.stage(r["audio"]), m)[0] for r, m in zip(rows, metas)
                          if r["n_windows"]]), metas

    whole, one = windows(32)
    cut, many = windows(2)
    assert len(one) == 1 and len(many) == 3 and [len(m.pieces) for m in many] == [1, 1, 1]
    assert [w[1:4] for m in many for w in m.windows] == [w[1:4] for w in one[0].windows]
    assert torch.equal(whole, cut)


@pytest.mark.parametrize("name, data", [
    ("empty.wav", b""),
    ("junk.wav", b"not audio at all" * 10),
])
def test_error_rows_are_those_of_the_host_path(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    _, metas = _rows([str(path)])
    (entry,) = metas[0].files
    with pytest.raises(AudioDecodeError) as exc:
        with AudioStream(data, str(path)) as stream:
            list(stream.int16_windows())
    assert (entry["status"], entry["error_kind"], entry["error"]) == ("error", exc.value.kind, str(exc.value))


def test_non_finite_and_truncated_files_keep_their_errors(tmp_path):
    nan = sine(440, 14.0, 44100, amp=0.3)
    nan[int(12.25 * 44100)] = np.nan
    sf.write(str(tmp_path / "nan.wav"), nan, 44100, subtype="FLOAT")
    sf.write(str(tmp_path / "cut.wav"), sine(440, 14.0, 44100, amp=0.3), 44100, subtype="PCM_16")
    whole = (tmp_path / "cut.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[:len(whole) // 2])
    paths = [str(tmp_path / "nan.wav"), str(tmp_path / "cut.wav")]
    _, metas = _rows(paths, chunk_windows=1)
    closing = [f for m in metas for f in m.files if f["closes"]]
    for path, entry in zip(paths, closing):
        with pytest.raises(AudioDecodeError) as exc:
            with AudioStream(open(path, "rb").read(), path) as stream:
                list(stream.int16_windows())
        assert (entry["status"], entry["error_kind"], entry["error"]) == ("error", exc.value.kind, str(exc.value))
    assert closing[0]["error_kind"] == "non_finite" and "12.250 s" in closing[0]["error"]
