"""das label on a Ray cluster of three nodes on 127.0.0.1: work spreads over nodes, output equals one node's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import TEST_BATCH_SIZE, sine, write_audio

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs in its own process: a driver connects to one Ray cluster at a time, and the test session's driver
# is attached to the session's single-node Ray.
CLUSTER_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from ray.cluster_utils import Cluster

    args = json.loads(sys.argv[1])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 300 * 2**20})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=300 * 2**20)
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    try:
        from jobs.label import main
        rc = main(args)
    finally:
        import ray
        ray.shutdown()
        cluster.shutdown()
    sys.exit(rc)
""")


def test_three_node_cluster_gives_the_single_node_output(ray_local, tiny_ckpt, encoder, tmp_path):
    from das_core.output.store import OutputStore
    from das_core.scoring.cache import DriftCache
    from jobs.label import LabelConfig, run

    src = tmp_path / "audio"
    src.mkdir()
    for i in range(8):
        write_audio(src / f"clip{i}.wav", sine(200 + 90 * i, 4.0 + 3 * i, 16000, amp=0.3), 16000)
    (src / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    cache = str(tmp_path / "cache.npz")
    DriftCache.build(encoder.embed_text, ["siren", "hum", "bird"], ["traffic noise"],
                     encoder_id=encoder.encoder_id).save(cache)
    single, multi = tmp_path / "single", tmp_path / "multi"
    common = dict(cache=cache, checkpoint=tiny_ckpt, files_per_unit=2, chunk_windows=2, max_error_fraction=1.0,
                  batch_size=TEST_BATCH_SIZE)
    run(LabelConfig(input=str(src), out=str(single), progress_every_s=1e9, **common))

    args = ["--input", str(src), "--cache", cache, "--checkpoint", tiny_ckpt, "--out", str(multi),
            "--files-per-unit", "2", "--chunk-windows", "2", "--max-error-fraction", "1", "--actors", "2",
            "--cpus-per-actor", "0.5", "--batch-size", str(TEST_BATCH_SIZE)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", CLUSTER_SCRIPT, json.dumps(args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "das label: complete" in proc.stdout

    manifest = json.loads((multi / "_manifest.json").read_text())
    assert manifest["runs"][-1]["nodes"] >= 2, manifest["runs"][-1]       # decode and encode ran on 2+ nodes
    a, b = OutputStore(str(single)), OutputStore(str(multi))
    key = [("file_id", "ascending"), ("segment", "ascending")]
    sa, sb = a.read_segments().sort_by(key), b.read_segments().sort_by(key)
    assert sa.num_rows == sb.num_rows > 8
    assert sa.drop_columns(["embedding"]).equals(sb.drop_columns(["embedding"]))
    assert np.array_equal(np.array(sa.column("embedding").to_pylist()), np.array(sb.column("embedding").to_pylist()))
    fa = a.read_files().sort_by([("file_id", "ascending")])
    fb = b.read_files().sort_by([("file_id", "ascending")])
    assert fa.equals(fb) and fa.num_rows == 9
    assert manifest["counts"] == json.loads((single / "_manifest.json").read_text())["counts"]
