"""bench.sizing: the GPU-node projection and the cores one GPU needs, from per-core decode rates."""

import pytest

from bench.sizing import GpuRate, cores_per_gpu, gpu_rate, node_rows, paper_gpu_rate, sizing_text


def test_paper_rate_is_the_flop_bound():
    assert paper_gpu_rate().windows_per_s == pytest.approx(989e12 * 0.4 / 14.1e9)


def test_node_is_bounded_by_the_slower_side():
    gpu = GpuRate(1000.0, "test")
    rows = {r["format"]: r for r in node_rows({"wav": 100.0, "flac": 50.0}, gpu, cores=16)}
    assert rows["wav"]["decode"] == 1600 and rows["wav"]["node"] == 1000 and rows["wav"]["bound"] == "GPU"
    assert rows["flac"]["node"] == 800 and rows["flac"]["bound"] == "decode"
    assert cores_per_gpu({"wav": 100.0, "flac": 50.0}, gpu) == {"wav": 10.0, "flac": 20.0}


def test_gpu_rate_prefers_a_cuda_record_and_ignores_cpu_ones():
    cpu = {"when": "t1", "gpu": {"device": "cpu", "cuda": False, "encoder_windows_per_s": {"bf16": 5.0}}}
    assert gpu_rate([cpu]).source.startswith("on paper")
    card = {"when": "t2", "gpu": {"device": "NVIDIA H100 80GB HBM3", "cuda": True,
                                  "encoder_windows_per_s": {"fp32": 9000.0, "bf16": 21000.0}}}
    rate = gpu_rate([{"results": {}}, card, cpu])
    assert rate.windows_per_s == 21000.0 and "H100" in rate.source


def test_sizing_text_shows_the_arithmetic():
    text = sizing_text({"decode_windows_per_core_ogg": 50.0}, GpuRate(20000.0, "test"), cores=8)
    assert "min(8 x per-core decode, 20,000)" in text
    assert "ogg      20,000 / 50.0 = 400 cores" in text
    assert "no decode_windows_per_core" in sizing_text({}, GpuRate(1.0, "test"))
