"""das report: the Markdown report and its figures, from a real das label run and from a synthetic output."""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import BROKEN_WAV

from das_core.errors import ReportRefused
from das_core.output.manifest import RunManifest
from das_core.output.report_files import REPORT_DIR, REPORT_HTML, REPORT_MD, REPORT_RECORD, remove_report
from das_core.output.store import OutputStore
from das_core.report.tally import tally, top_with_other
from das_core.report.write import report_after_run, write_report
from jobs.report import main
from jobs.rescore import RescoreConfig
from jobs.rescore import run as rescore_run

LABELS = ["siren", "dog_bark", "engine_idling", "rain"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.integration


def assert_valid_png(path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC, path
    assert os.path.getsize(path) > 5_000, path
    pixels = mpimg.imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 300, path
    assert pixels[..., :3].std() > 0.05, path           # not a blank canvas
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 20, path


def linked_figures(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)


@pytest.fixture(scope="module")
def cache_uri(make_cache) -> str:
    return make_cache(LABELS)


@pytest.fixture(scope="module")
def labelled(make_label_output, cache_uri) -> str:
    """A label output with a 45 s file, short clips and two broken files (its report written by das label)."""
    clips = {name: (seconds, 16000, freq, 0.1) for name, (seconds, freq) in {
        "long.wav": (45.0, 440.0), "a.wav": (3.0, 880.0), "b.wav": (12.0, 300.0), "c.wav": (2.0, 1500.0)}.items()}
    return make_label_output(clips, cache_uri, seed=5, broken={"broken.wav": BROKEN_WAV, "empty.wav": b""},
                             files_per_unit=2)


def test_label_run_writes_a_report_with_valid_figures(labelled):
    md_path = os.path.join(labelled, REPORT_DIR, REPORT_MD)
    md = open(md_path).read()
    figures = linked_figures(md)
    for name in ("label_distribution.png", "das_vs_zero_shot.png", "scores.png", "errors.png", "durations.png",
                 "throughput.png", "timeline_1.png"):
        assert name in figures, name
    for name in figures:
        assert_valid_png(os.path.join(labelled, REPORT_DIR, name))
    assert "long.wav" in md                      # the longest file gets the first timeline
    assert md.index("long.wav") < md.index("timeline_1.png")


def test_report_lists_the_error_kinds(labelled):
    files = pq.read_table(os.path.join(labelled, "files")).to_pylist()
    kinds = Counter(r["error_kind"] for r in files if r["status"] == "error")
    assert sum(kinds.values()) == 2
    md = open(os.path.join(labelled, REPORT_DIR, REPORT_MD)).read()
    errors = md[md.index("## Errors by kind"):]
    for kind, n in kinds.items():
        assert f"| {kind} | {n} |" in errors
    assert "6 = 4 ok + 2 error" in md


def test_report_counts_equal_the_parquet(labelled):
    store = OutputStore(labelled)
    t = tally(store)
    segments = pq.read_table(os.path.join(labelled, "segments")).to_pylist()
    files = [r for r in pq.read_table(os.path.join(labelled, "files")).to_pylist() if r["status"] == "ok"]
    assert t.windows == len(segments) and t.files_ok == len(files) == 4
    assert t.windows_by_label == Counter(r["label"] for r in segments)
    assert t.files_by_label == Counter(r["label"] for r in files)
    assert t.window_changes == Counter((r["zs_label"], r["label"]) for r in segments if r["zs_label"] != r["label"])
    assert sum(int(h.sum()) for h in t.score_hist.values()) == len(segments)
    assert max(t.longest)[1] == "long.wav"


def test_cli_rewrites_the_report_and_refuses_a_non_output(labelled, tmp_path, capsys):
    folder = os.path.join(labelled, REPORT_DIR)
    os.remove(os.path.join(folder, "scores.png"))
    stale = os.path.join(folder, "timeline_9.png")          # from an earlier, larger report: on das's record
    open(stale, "wb").write(PNG_MAGIC)
    record = json.load(open(os.path.join(folder, REPORT_RECORD)))
    json.dump({**record, "files": record["files"] + ["timeline_9.png"]}, open(os.path.join(folder, REPORT_RECORD), "w"))
    assert main([labelled]) == 0
    assert os.path.exists(os.path.join(labelled, REPORT_DIR, "scores.png")) and not os.path.exists(stale)
    assert "das report: written to" in capsys.readouterr().out
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "_manifest.json" in err[0]


def test_a_report_failure_is_only_a_warning(tmp_path, caplog):
    (tmp_path / "_manifest.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="das"):
        report_after_run(str(tmp_path))            # must not raise
    assert "could not write the report" in caplog.text


def test_rescore_writes_its_report_unless_told_not_to(labelled, cache_uri, tmp_path):
    rescore_run(RescoreConfig(embeddings=labelled, cache=cache_uri, out=str(tmp_path), run_id="r1",
                              progress_every_s=1e9))
    md = open(tmp_path / "run_id=r1" / REPORT_DIR / REPORT_MD).read()
    assert "`das rescore`" in md and "label_distribution.png" in md
    rescore_run(RescoreConfig(embeddings=labelled, cache=cache_uri, out=str(tmp_path), run_id="r2",
                              progress_every_s=1e9, report=False))
    assert not (tmp_path / "run_id=r2" / REPORT_DIR).exists()
    assert json.load(open(tmp_path / "run_id=r2" / "_manifest.json"))["status"] == "complete"


def test_top_with_other_keeps_every_count():
    counts = Counter({f"label {i}": 100 - i for i in range(50)})
    top = top_with_other(counts, 20)
    assert len(top) == 21 and top[-1][0] == "other (30 labels)"
    assert sum(v for _, v in top) == counts.total()
    assert top_with_other(Counter({"a": 2, "b": 1}), 20) == [("a", 2), ("b", 1)]


def test_no_report_flags_reach_the_configs():
    from jobs.label import build_parser as label_parser
    from jobs.label import config_from_args as label_config
    from jobs.rescore import build_parser as rescore_parser
    from jobs.rescore import config_from_args as rescore_config

    base = ["--input", "in", "--cache", "c.npz", "--checkpoint", "x.pt", "--out", "out"]
    assert label_config(label_parser().parse_args(base)).report is True
    assert label_config(label_parser().parse_args([*base, "--no-report"])).report is False
    base = ["--embeddings", "e", "--cache", "c.npz", "--out", "out"]
    assert rescore_config(rescore_parser().parse_args(base)).report is True
    assert rescore_config(rescore_parser().parse_args([*base, "--no-report"])).report is False


def test_the_report_replaces_only_the_files_it_recorded(tmp_path, monkeypatch):
    RunManifest(job="label", status="complete").write(str(tmp_path / "out"))
    folder = tmp_path / "out" / REPORT_DIR
    folder.mkdir()
    (folder / "field_report.mp3").write_bytes(b"ID3 the user's")
    monkeypatch.chdir(tmp_path)
    target = write_report("out")                                    # relative: made absolute
    assert target == str(folder / REPORT_MD)
    record = json.load(open(folder / REPORT_RECORD))
    assert record["files"] == [REPORT_HTML, REPORT_MD]               # no window: no figure, no excerpt
    (folder / "old.png").write_bytes(PNG_MAGIC)                      # das's, from an earlier report
    os.makedirs(folder / "excerpts")
    (folder / "excerpts" / "0123456789abcdef.ogg").write_bytes(b"OggS")
    json.dump({"files": [REPORT_HTML, REPORT_MD, "old.png", "excerpts/0123456789abcdef.ogg"]},
              open(folder / REPORT_RECORD, "w"))
    write_report("out")
    assert not (folder / "old.png").exists() and (folder / "field_report.mp3").read_bytes() == b"ID3 the user's"
    assert not (folder / "excerpts").exists()                        # its last excerpt gone, so is the folder
    os.remove(folder / REPORT_RECORD)                                # report.html is now nobody's das file
    with pytest.raises(ReportRefused, match="report.html is there and das did not write it"):
        write_report("out")
    json.dump({"files": [REPORT_HTML, REPORT_MD, "../escape.md", "excerpts/../x.ogg"]},
              open(folder / REPORT_RECORD, "w"))
    assert remove_report("out") == 3                                 # a record names nothing outside report/
    assert sorted(os.listdir(folder)) == ["field_report.mp3"]


def test_the_after_start_up_rate_is_shown_only_where_it_was_measured():
    from das_core.report.tally import run_rates

    runs = [  # issue 20: "972 clips/s" from 64 windows in 47 s, recorded before the rule: left out
        {"started": "a", "segments_per_s": 1.36, "wall_time_s": 47.0, "startup_s": 46.9,
         "steady_segments_per_s": 972.0},
        {"started": "b", "segments_per_s": 5.0, "wall_time_s": 60.0, "startup_s": 20.0,
         "steady_segments_per_s": 7.5, "steady_chunks": 12},
        {"started": "c", "segments_per_s": 5.0, "wall_time_s": 25.0, "startup_s": 20.0,
         "steady_segments_per_s": 7.5, "steady_chunks": 12}]                  # only 5 s after start-up
    assert [r["steady"] for r in run_rates({"runs": runs})] == [None, 7.5, None]
