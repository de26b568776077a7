"""The decode stage: a unit's audio cut into bounded chunks, long files into pieces, every input closed once."""

from __future__ import annotations

import os

import soundfile as sf
from conftest import sine

from das_core.audio.windows import SAMPLE_RATE, window_count
from das_core.label.decode import ChunkMeta, DecodeSettings, decode_unit


def _wav(path, seconds: float, rate: int = 16000) -> str:
    sf.write(str(path), sine(440, seconds, rate, amp=0.3), rate)
    return str(path)


def _chunks(paths: list[str], chunk_windows: int):
    ids = [os.path.basename(p) for p in paths]
    rows = [t.to_pylist()[0] for t in decode_unit("u00000000", ids, paths, DecodeSettings(chunk_windows=chunk_windows))]
    return rows, [ChunkMeta.parse(r["meta"]) for r in rows]


def test_a_unit_is_cut_into_bounded_chunks_and_long_files_into_pieces(tmp_path):
    short = _wav(tmp_path / "a-short.wav", 3.0)
    long = _wav(tmp_path / "b-long.wav", 65.0)          # 7 windows
    two = _wav(tmp_path / "c-two.wav", 15.0)            # 2 windows
    bad = tmp_path / "d-bad.wav"
    bad.write_bytes(b"not audio at all" * 10)
    rows, metas = _chunks([short, long, two, str(bad)], chunk_windows=3)
    assert [r["chunk"] for r in rows] == list(range(len(rows)))
    assert [r["last"] for r in rows] == [False] * (len(rows) - 1) + [True]
    assert all(0 <= r["n_windows"] <= 3 and sum(len(p["lengths"]) for p in m.pieces) == r["n_windows"]
               for r, m in zip(rows, metas))
    # every window of every file, once, in order; each file closes exactly once
    seen = [(m.files[w[0]]["file_id"], w[1]) for m in metas for w in m.windows]
    expected = [("a-short.wav", 0)] + [("b-long.wav", i) for i in range(7)] + [("c-two.wav", 0), ("c-two.wav", 1)]
    assert seen == expected
    closes = [f for m in metas for f in m.files if f["closes"]]
    assert [f["file_id"] for f in closes] == ["a-short.wav", "b-long.wav", "c-two.wav", "d-bad.wav"]
    assert [f["status"] for f in closes] == ["ok", "ok", "ok", "error"] and closes[3]["error_kind"] == "not_audio"
    # the long file is cut into pieces numbered in order; the two-window file is kept whole in one chunk
    pieces = [f["piece"] for m in metas for f in m.files if f["file_id"] == "b-long.wav"]
    assert pieces == list(range(len(pieces))) and len(pieces) == 3
    assert sum(1 for m in metas for f in m.files if f["file_id"] == "c-two.wav") == 1
    # same input, same chunks: names and rows are deterministic
    again, _ = _chunks([short, long, two, str(bad)], chunk_windows=3)
    assert [(r["chunk"], r["meta"], r["audio"]) for r in again] == [(r["chunk"], r["meta"], r["audio"]) for r in rows]


def test_an_empty_unit_of_bad_files_still_yields_its_last_chunk(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"")
    rows, metas = _chunks([str(bad), str(tmp_path / "missing.wav")], chunk_windows=4)
    assert len(rows) == 1 and rows[0]["last"] and rows[0]["n_windows"] == 0
    assert [f["error_kind"] for f in metas[0].files] == ["empty", "missing"]


# ------------------------------------------------------------------ the label run on units (Ray)


def test_window_counts_match_the_documented_rule():
    # the chunking relies on this to keep short files whole
    assert window_count(int(10.5 * SAMPLE_RATE)) == 1 and window_count(int(11 * SAMPLE_RATE)) == 2
