"""The benchmark's smoke mode: every benchmark still runs and reports measured numbers."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration    # Ray, S3 (moto) or subprocesses: `make test-fast` skips it

KEYS = ("encoder_clips_per_s", "pipeline_clips_per_s", "pipeline_over_encoder", "naive_clips_per_s",
        "pipeline_over_naive", "das_overhead", "rescore_over_read", "rss_ratio_60_over_10_min", "peak_rss_gib",
        "cache_build_s", "decode_per_core", "decode_scaling", "hf_encoder_clips_per_s", "hf_over_laion_encoder",
        "search_rows_per_s_1q", "search_over_read_1q", "search_rows_per_s_100q", "search_over_read_100q")


def test_bench_smoke(tmp_path):
    results = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--results", str(results)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads(results.read_text())
    assert len(history) == 1 and history[0]["smoke"] is True
    measured = history[0]["results"]
    for key in KEYS:
        assert isinstance(measured[key], float) and measured[key] == measured[key], key   # a number, not NaN
    for key in ("encoder_clips_per_s", "hf_encoder_clips_per_s", "pipeline_clips_per_s", "naive_clips_per_s",
                "decode_per_core",
                "peak_rss_gib", "cache_build_s"):
        assert measured[key] > 0, key
    assert measured["pipeline_over_encoder"] == pytest.approx(
        measured["pipeline_clips_per_s"] / measured["encoder_clips_per_s"])
    assert "pipeline_over_encoder" in proc.stdout and ">= 0.85" in proc.stdout
    for fmt in ("wav", "flac", "ogg", "mp3", "m4a"):        # the decode stage over the bare codec, per format
        assert measured[f"decode_over_codec_{fmt}"] > 0 and measured[f"decode_windows_per_core_{fmt}"] > 0, fmt
    assert "decode_over_codec_m4a" in proc.stdout and "<= 1.25" in proc.stdout
    assert "projected GPU node" in proc.stdout and "CPU cores one GPU needs" in proc.stdout
    table = subprocess.run([sys.executable, "-m", "bench.run", "--table", "--results", str(results)],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "projected GPU node" in table.stdout, table.stderr[-3000:]
    rate = measured["decode_windows_per_core_flac"]
    assert f"flac     {rate:9.1f}" in table.stdout        # the projection is made of this run's per-core rates


def test_only_decode_prints_the_decode_figures_without_ray(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--only", "decode", "--results",
                           str(tmp_path / "none.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for fmt in ("wav", "flac", "ogg", "mp3", "m4a"):
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"decode_over_codec_{fmt} "))
        assert float(line.split()[1]) > 0, line
    assert "GPU rate" in proc.stdout and "on paper" in proc.stdout     # no GPU record: the FLOP bound
    assert "Ray" not in proc.stderr
