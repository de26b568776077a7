"""Work units: planning, the unit table, and the label runs built on them (resume, dry run, a failing file)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
from conftest import label_run, read_output, sine

from das_core.label.units import plan_units, read_unit_table, write_unit_table

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def inputs(n: int, sizes: list[int | None] | None = None) -> pa.Table:
    return pa.table({"file_id": [f"f{i:03d}" for i in range(n)], "path": [f"/a/f{i:03d}.wav" for i in range(n)],
                     "size": pa.array(sizes if sizes is not None else [None] * n, pa.int64())})


def test_units_are_bounded_by_count_and_bytes():
    units = plan_units(inputs(10), files_per_unit=4, unit_bytes=10**9)
    assert units.column("unit").to_pylist() == ["u00000000", "u00000001", "u00000002"]
    assert [len(x) for x in units.column("file_ids").to_pylist()] == [4, 4, 2]
    assert sum(units.column("file_ids").to_pylist(), []) == [f"f{i:03d}" for i in range(10)]
    by_bytes = plan_units(inputs(5, [40, 40, 40, 200, 10]), files_per_unit=64, unit_bytes=100)
    # a file that would take a unit past the bound starts the next; a file larger than the bound is alone
    assert by_bytes.column("file_ids").to_pylist() == [["f000", "f001"], ["f002"], ["f003"], ["f004"]]
    assert by_bytes.column("bytes").to_pylist() == [80, 40, 200, 10]
    assert plan_units(inputs(3), 2, 10, first_unit=7).column("unit").to_pylist() == ["u00000007", "u00000008"]
    assert len(plan_units(inputs(0), 4, 100)) == 0


def test_unit_table_round_trip(tmp_path):
    units = plan_units(inputs(9), files_per_unit=2, unit_bytes=10**9)
    write_unit_table(str(tmp_path), units)
    assert read_unit_table(str(tmp_path)).equals(units)
    assert read_unit_table(str(tmp_path / "elsewhere")) is None


def _wav(path, seconds: float, rate: int = 16000) -> str:
    sf.write(str(path), sine(440, seconds, rate, amp=0.3), rate)
    return str(path)


@pytest.mark.integration
def test_a_long_file_failing_part_way_leaves_no_window_and_one_error_row(ray_local, tiny_ckpt, small_cache,
                                                                         tmp_path):
    src = tmp_path / "audio"
    src.mkdir()
    _wav(src / "ok.wav", 12.0)
    buf = io.BytesIO()
    sf.write(buf, sine(300, 60.0, 16000, amp=0.3), 16000, format="FLAC")
    data = buf.getvalue()
    (src / "cut.flac").write_bytes(data[: len(data) * 2 // 3])      # decodes ~40 s, then ends early
    manifest = label_run(src, small_cache, tiny_ckpt, tmp_path / "out", chunk_windows=2)
    segs, files = read_output(tmp_path / "out")
    rows = {r["file_id"]: r for r in files.to_pylist()}
    assert rows["cut.flac"]["status"] == "error" and rows["cut.flac"]["error_kind"] == "truncated"
    assert rows["cut.flac"]["n_segments"] == 0 and "cut.flac" in rows["cut.flac"]["error"]
    assert set(segs.column("file_id").to_pylist()) == {"ok.wav"} and rows["ok.wav"]["n_segments"] == 2
    assert manifest["counts"] == {"files": 2, "ok": 1, "error": 1, "segments": 2,
                                  "errors_by_kind": {"truncated": 1}, "skipped_members": {}}
    assert not os.listdir(tmp_path / "out" / "pieces")           # transient maxima are cleaned up


@pytest.mark.integration
def test_resume_picks_up_files_added_to_the_input(ray_local, tiny_ckpt, small_cache, tmp_path):
    src = tmp_path / "audio"
    src.mkdir()
    _wav(src / "a.wav", 3.0)
    _wav(src / "b.wav", 11.0)
    label_run(src, small_cache, tiny_ckpt, tmp_path / "out", files_per_unit=1)
    _wav(src / "c.wav", 5.0)
    manifest = label_run(src, small_cache, tiny_ckpt, tmp_path / "out", files_per_unit=1, resume=True)
    assert manifest["runs"][-1]["units_to_do"] == 1 and manifest["runs"][-1]["files_to_do"] == 1
    assert manifest["counts"]["files"] == 3 and manifest["work"]["units"] == 3
    _, files = read_output(tmp_path / "out")
    assert files.column("file_id").to_pylist() == ["a.wav", "b.wav", "c.wav"]
    assert read_unit_table(str(tmp_path / "out")).column("unit").to_pylist() == [
        "u00000000", "u00000001", "u00000002"]


@pytest.mark.integration
def test_dry_run_plans_without_ray_or_model(tiny_ckpt, small_cache, tmp_path):
    src = tmp_path / "audio"
    src.mkdir()
    for i in range(5):
        _wav(src / f"clip{i}.wav", 1.0)
    (src / "notes.txt").write_text("not audio")
    (src / ".hidden.wav").write_bytes(b"x")
    out = tmp_path / "out"
    code = (f"import sys; from jobs.label import main; "
            f"rc = main(['--input', {str(src)!r}, '--cache', {small_cache!r}, '--checkpoint', {tiny_ckpt!r}, "
            f"'--out', {str(out)!r}, '--dry-run', '--files-per-unit', '2']); "
            f"print('MODULES', 'ray' in sys.modules, 'jobs.pipeline' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "5 file(s) in 3 unit(s)" in proc.stdout
    assert "extension 1" in proc.stdout and "hidden 1" in proc.stdout
    assert "MODULES False False" in proc.stdout
    assert not out.exists()


def test_unit_table_is_valid_json_free_parquet(tmp_path):
    units = plan_units(inputs(3), files_per_unit=2, unit_bytes=10)
    uri = write_unit_table(str(tmp_path), units)
    assert uri.endswith("_work/units.parquet") and os.path.exists(uri)
    assert json.dumps(units.to_pylist())          # plain values: readable by any Parquet reader
    assert np.array_equal(units.column("bytes").to_numpy(), [0, 0])
