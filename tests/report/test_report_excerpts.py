"""report.html's excerpts without a browser: which windows are picked, how they are cut and encoded, what a
missing or broken source gives, which names a report record may hold, and --excerpts refused before work."""

from __future__ import annotations

import io
import random
import tarfile

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BROKEN_WAV, sine, write_audio

from das_core.audio.decode import AudioStream
from das_core.errors import ReportRefused
from das_core.output.report_files import _is_report_name
from das_core.report.excerpts import cut_source, encode_opus, open_source
from das_core.report.picks import (
    DEFAULT_EXCERPTS,
    MAX_EXCERPTS,
    PICK_COLUMNS,
    TIMELINE_PLAYABLE,
    Pick,
    TopWindows,
    timeline_picks,
)
from jobs.report import main


def _pick(path: str, start_s: float, end_s: float, segment: int = 0, file_id: str = "f", label: str = "rain",
          score: float = 0.5) -> Pick:
    return Pick(file_id, path, segment, start_s, end_s, label, score, label, score, None, None)


def _table(picks: list[Pick]) -> pa.Table:
    return pa.table({c: [getattr(p, c) for p in picks] for c in PICK_COLUMNS})


def _decoded(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as f:
        return np.concatenate([fr.to_ndarray().reshape(-1) for fr in f.decode(audio=0)])


def test_the_best_windows_per_label_do_not_depend_on_the_order_units_are_read():
    rng = np.random.default_rng(1)
    picks = [_pick("p", 0, 10, segment=i % 7, file_id=f"file{i // 7}", label=["a", "b", "c"][i % 3],
                   score=float(rng.choice([0.1, 0.2, 0.3, 0.4]))) for i in range(70)]   # ties: by file, window
    picks = list({(p.file_id, p.segment): p for p in picks}.values())
    expected = {lb: sorted((p for p in picks if p.label == lb), key=lambda p: (-p.score, p.file_id, p.segment))[:4]
                for lb in "abc"}
    for seed in range(3):
        random.Random(seed).shuffle(picks)
        top = TopWindows(4)
        for i in range(0, len(picks), 9):                                  # one table per "unit"
            top.add(_table(picks[i:i + 9]))
        assert {lb: top.best(lb) for lb in "abc"} == expected
    assert TopWindows(0).best("a") == []


def test_a_long_timeline_gets_an_evenly_spaced_capped_set_of_playable_windows():
    windows = [_pick("p", 10 * i, 10 * i + 10, segment=i) for i in range(361)]     # an hour
    chosen = sorted(timeline_picks(windows))
    assert len(chosen) == TIMELINE_PLAYABLE and chosen[0] == 0 and chosen[-1] == 360
    assert max(np.diff(chosen)) - min(np.diff(chosen)) <= 1
    assert timeline_picks(windows[:5]) == {0, 1, 2, 3, 4}


def test_an_excerpt_is_the_window_as_das_decodes_it(tmp_path):
    path = write_audio(tmp_path / "tone.wav", sine(440.0, 13.25, 22050, channels=2, amp=0.3), 22050)
    with AudioStream(open(path, "rb").read(), path) as stream:
        reference = np.concatenate(list(stream.mono48k()))
    windows = [_pick(path, 0.0, 10.0, 0), _pick(path, 10.0, len(reference) / 48000, 1)]   # as das label ends it
    excerpts = cut_source(path, windows)
    for w in windows:
        assert excerpts[w].note is None
        decoded = _decoded(excerpts[w].data)
        a, b = round(w.start_s * 48000), round(w.end_s * 48000)
        assert len(decoded) == b - a                                     # to the sample: 10 s and a 3.25 s tail
        middle = slice(4800, len(decoded) - 4800)                        # a lossy codec: compare the level
        assert np.sqrt(np.mean(decoded[middle] ** 2)) == pytest.approx(
            np.sqrt(np.mean(reference[a:b][middle] ** 2)), rel=0.1)
    assert 25_000 < len(excerpts[windows[0]].data) < 36_000              # 24 kbit/s CBR: about 31 KB per 10 s


def test_shard_members_are_read_as_the_job_reads_them(tmp_path):
    import soundfile as sf

    clip = io.BytesIO()
    sf.write(clip, sine(300.0, 4.0, 16000, amp=0.3), 16000, format="WAV")
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for name in ("x.json", "x.wav"):
            data = b"{}" if name.endswith(".json") else clip.getvalue()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pq.write_table(pa.table({"audio": [{"bytes": b"not this", "path": "a.wav"}, {"bytes": clip.getvalue(),
                                                                                  "path": "b.wav"}]}),
                   tmp_path / "shard.parquet", row_group_size=1)
    for path in (f"{tmp_path}/shard.tar/x.wav", f"{tmp_path}/shard.parquet#1"):
        with open_source(path) as member:
            assert member.read() == clip.getvalue(), path
        w = _pick(path, 0.0, 4.0)
        assert len(_decoded(cut_source(path, [w])[w].data)) == 4 * 48000
    for path in (f"{tmp_path}/shard.tar/y.wav", f"{tmp_path}/shard.parquet#2"):
        w = _pick(path, 0.0, 4.0)
        assert "no longer there" in cut_source(path, [w])[w].note, path


def test_a_gone_broken_or_shortened_source_gives_a_note(tmp_path):
    (tmp_path / "broken.wav").write_bytes(BROKEN_WAV)
    short = write_audio(tmp_path / "short.wav", sine(440.0, 6.0, 16000), 16000)
    cases = {str(tmp_path / "gone.wav"): "no longer there", str(tmp_path / "broken.wav"): "no longer decodes",
             short: "has changed since it was labelled"}
    for path, note in cases.items():
        w = _pick(path, 0.0, 10.0)
        excerpt = cut_source(path, [w])[w]
        assert excerpt.data is None and note in excerpt.note, (path, excerpt.note)


def test_encoded_length_is_exact_for_every_window_length():
    for n in (48000 * 10, 48000 * 3 + 17, 48000):              # a window, a tail, the shortest tail (1 s)
        assert len(_decoded(encode_opus(np.zeros(n, np.float32)))) == n


def test_a_report_record_names_only_report_files():
    for name in ("report.md", "report.html", "timeline_1.png", "excerpts/0123456789abcdef0123.ogg"):
        assert _is_report_name(name), name
    for name in ("../x.md", "excerpts/../x.ogg", "excerpts/x.ogg", "sub/a.png", "a.md\n", ".hidden.md",
                 "excerpts/0123456789abcdef.ogg/..", "report.wav", "/abs/a.png", 3):
        assert not _is_report_name(name), name


@pytest.mark.parametrize("value", ["-1", str(MAX_EXCERPTS + 1)])
def test_excerpts_out_of_range_are_refused_before_any_work(tmp_path, capsys, value):
    assert main([str(tmp_path / "nowhere"), "--excerpts", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--excerpts {value} is outside 0..{MAX_EXCERPTS}" in err[0]
    assert not (tmp_path / "nowhere").exists()


def test_excerpts_reach_the_reports_that_label_and_rescore_write():
    from jobs.label import build_parser as label_parser
    from jobs.label import config_from_args as label_config
    from jobs.rescore import build_parser as rescore_parser
    from jobs.rescore import config_from_args as rescore_config

    for parser, config, base in (
            (label_parser, label_config, ["--input", "in", "--cache", "c.npz", "--checkpoint", "x.pt", "--out", "o"]),
            (rescore_parser, rescore_config, ["--embeddings", "e", "--cache", "c.npz", "--out", "o"])):
        assert config(parser().parse_args(base)).report_excerpts == DEFAULT_EXCERPTS
        assert config(parser().parse_args([*base, "--excerpts", "3"])).report_excerpts == 3
        with pytest.raises(ReportRefused, match="--excerpts 51 is outside"):
            config(parser().parse_args([*base, "--excerpts", "51"]))


def test_a_unit_whose_windows_all_score_below_the_kept_ones_changes_nothing():
    """At scale most units hold no window better than those kept: folding one in is a no-op (it took an empty
    list as an Arrow null array and failed the report of a 10^6-window run)."""
    top = TopWindows(2)
    high = [_pick("p", 0, 10, segment=i, file_id=f"h{i}", label="a", score=0.9) for i in range(2)]
    top.add(_table(high))
    top.add(_table([_pick("p", 0, 10, segment=0, file_id="low", label="a", score=0.1)]))
    assert top.best("a") == sorted(high, key=lambda p: p.file_id)
