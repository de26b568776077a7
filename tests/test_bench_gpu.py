"""bench.gpu on a machine without CUDA: the same code on the CPU at tiny sizes, its table and its record."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration    # a subprocess that runs das label on its own local Ray

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_runs_on_cpu_at_tiny_sizes_and_records(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test checks the CPU fallback; on a GPU run `make gpu-check`")
    results = tmp_path / "results.json"
    earlier = {"when": "earlier", "duration_s": 1.0, "results": {"decode_windows_per_core_wav": 100.0}}
    results.write_text(json.dumps([earlier]))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--record", "--results", str(results),
                           "--work", str(tmp_path / "work")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no CUDA: the CPU at tiny sizes" in proc.stdout and "random weights" in proc.stdout
    assert "GPU utilisation during the pipeline   n/a (no GPU)" in proc.stdout

    history = json.loads(results.read_text())
    assert len(history) == 2 and history[0]["when"] == "earlier"        # appended, nothing lost
    gpu = history[1]["gpu"]
    assert gpu["device"] == "cpu" and gpu["cuda"] is False and gpu["tiny"] is True
    assert all(gpu["encoder_windows_per_s"][p] > 0 for p in ("fp32", "bf16"))
    assert gpu["encoder_input"] in proc.stdout                  # the table says what the encoder was handed
    assert gpu["pipeline_windows"] == 6 and gpu["pipeline_windows_per_s"] > 0    # 3 files of 12 s: 2 windows each
    assert gpu["pipeline_cpu_s"] > 0 and gpu["cores_per_1000_windows_per_s"] > 0
    assert gpu["gpu_utilisation_pct"] is None
    # fp32 on the CPU is the reference itself; bf16 autocast differs a little but stays close
    assert gpu["agreement_with_cpu"]["fp32"]["min"] == pytest.approx(1.0, abs=1e-6)
    assert 0.99 < gpu["agreement_with_cpu"]["bf16"]["min"] < 1.0 + 1e-6
    assert os.listdir(tmp_path / "work")         # --work keeps the inputs

    table = subprocess.run([sys.executable, "-m", "bench.run", "--table", "--results", str(results)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr[-3000:]
    assert "on paper" in table.stdout         # a CPU record never stands for a GPU's rate


def test_tree_cpu_counts_a_child_process():
    from bench.gpu import TreeCpu

    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                             "'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 1.0: pass'])"])
    cpu = TreeCpu(proc.pid, every_s=0.05)
    cpu.start()
    proc.wait()
    cpu.stop()
    assert 0.8 < cpu.seconds < 3.0          # the grandchild's second of CPU, seen through its parent
