"""Issue 20, items 4, 8 and 10 through the real ``das`` command: das's own Ray, never another process's
cluster; pipelines that fit no node refused, stalls stopped with what is pending; a progress line a person
can read, with Ray Data's block logs out of the way unless ``-v``.

Each test gives Ray a temp root of its own (``RAY_TMPDIR``): the "current cluster" file a plain
``ray.init()`` follows is ``$RAY_TMPDIR/ray/ray_current_cluster``, so nothing here touches /tmp/ray.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from conftest import TEST_BATCH_SIZE, free_port

from everyday.conftest import REPO, das

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent
RAY_DATA_LINES = re.compile(r"Running Dataset|Execution plan|Starting execution of Dataset|logging_progress\.py")
PROGRESS = re.compile(r"INFO das: (\d+)/(\d+) files, (\d+) windows so far, (\d+)/(\d+) units committed")


@pytest.fixture
def ray_root():
    """A short, private RAY_TMPDIR (Ray's Unix socket paths must stay under 108 characters)."""
    root = tempfile.mkdtemp(prefix="das-rt-", dir="/tmp")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HF_HUB_OFFLINE="1", **extra)
    return env


@pytest.fixture
def other_cluster(ray_root):
    """`ray start --head` of another process, on 127.0.0.1 with 1 CPU and token authentication (as Ray 2.60
    wants): Ray's current-cluster file names it."""
    from test_infra import _stop_head

    env = env_with(RAY_TMPDIR=ray_root, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    port = free_port()
    ports = {"--port": port, "--ray-client-server-port": free_port(), "--node-manager-port": free_port(),
             "--object-manager-port": free_port(), "--dashboard-agent-listen-port": free_port(),
             "--dashboard-agent-grpc-port": free_port(), "--runtime-env-agent-port": free_port(),
             "--metrics-export-port": free_port()}
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           "--include-dashboard=false", "--num-cpus=1", "--num-gpus=0", "--object-store-memory=100000000",
           "--disable-usage-stats", *[f"{k}={v}" for k, v in ports.items()]]
    log_path = Path(ray_root) / "ray-start.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    current = Path(ray_root) / "ray" / "ray_current_cluster"
    try:
        deadline = time.monotonic() + 120
        while not (current.exists() and current.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        assert current.read_text().strip().endswith(f":{port}")
        yield {"address": current.read_text().strip(), "env": env, "current": current}
    finally:
        _stop_head(proc, ray_root)


DRIVERS = textwrap.dedent("""
    import json, ray
    ray.init(address=__import__("sys").argv[1], logging_level="ERROR")
    from ray._private.state import jobs
    print(json.dumps({"drivers": len(jobs()), "cpus": ray.cluster_resources().get("CPU")}))
""")


def drivers_of(cluster: dict) -> dict:
    """How many drivers have ever connected to ``cluster`` (this probe included), and its CPUs: alive."""
    proc = subprocess.run([sys.executable, "-c", DRIVERS, cluster["address"]], env=cluster["env"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def label_args(tiny_ckpt: str, small_cache: str, out: str | None = "labels") -> list[str]:
    # --ray: a small job would run in the das process; Ray's start-up and pipeline are the point here
    return ["label", "--input", "archive", "--cache", small_cache, "--checkpoint", tiny_ckpt,
            "--max-error-fraction", "0.5", "--no-report", "--ray", "--batch-size",
            str(TEST_BATCH_SIZE)] + (["--out", out] if out else [])


def test_label_and_rescore_start_their_own_ray_and_print_a_readable_progress_line(other_cluster, workdir,
                                                                                  tiny_ckpt, small_cache):
    before = drivers_of(other_cluster)
    r = das(label_args(tiny_ckpt, small_cache), workdir, env=other_cluster["env"], timeout=300)
    assert r.rc == 0, r.out
    # das's own local Ray, not the 1-CPU cluster named in the current-cluster file
    assert "starting Ray (local," in r.out and "das label: complete" in r.out
    assert drivers_of(other_cluster) == {"drivers": before["drivers"] + 1, "cpus": 1.0}, r.out   # only the probe
    assert other_cluster["current"].read_text().strip() == other_cluster["address"]           # left as it was
    manifest = json.loads((workdir / "labels" / "_manifest.json").read_text())
    assert manifest["counts"]["files"] == 6
    # a person's view: no Ray Data block logs or token notice; das's line with files out of the total
    assert not RAY_DATA_LINES.search(r.out), r.out
    assert "Token authentication" not in r.out and "torch.meshgrid" not in r.out, r.out
    assert "ray stop" not in r.out
    assert "starting: loading the model on 1 encoder actor(s)" in r.out, r.out
    last = PROGRESS.findall(r.out)[-1]
    assert last == ("6", "6", str(manifest["counts"]["segments"]), "1", "1"), r.out
    assert "after start-up" not in r.out          # one chunk: too little to measure a steady rate

    before = drivers_of(other_cluster)
    # absolute --embeddings: relative paths are issue 20's item 1, not this test's
    r = das(["rescore", "--embeddings", workdir / "labels", "--cache", small_cache, "--out", "rescored",
             "--no-report", "-v", "--ray"], workdir, env=other_cluster["env"], timeout=300)
    assert r.rc == 0 and "1 re-scored of 1 committed" in r.out, r.out
    assert drivers_of(other_cluster)["drivers"] == before["drivers"] + 1, r.out
    assert other_cluster["current"].read_text().strip() == other_cluster["address"]
    assert RAY_DATA_LINES.search(r.out), r.out          # -v: Ray Data's own lines are back


def test_a_stalled_pipeline_ends_with_what_is_pending(workdir, tiny_ckpt, small_cache, ray_root):
    # a stall limit shorter than the encoder actors' start-up: no chunk comes in time
    env = env_with(RAY_TMPDIR=ray_root, DAS_STALL_WARN_S="1", DAS_STALL_FAIL_S="3")
    r = das(label_args(tiny_ckpt, small_cache), workdir, env=env, timeout=300)
    assert r.rc == 1, r.out
    line = r.error_line("das label")
    assert re.search(r"error: no chunk finished for [3-9] s with 6 of 6 file\(s\) to do; pending: ", line), line
    assert "stalled past DAS_STALL_FAIL_S=3" in line
    assert "pending: 1 encoder actor(s) of 1 CPU each, and decode tasks of 1 CPU + 768 MiB memory each" in line
    assert re.search(r"nodes offer \(free/total\): node 1: [\d.]+/2 CPU", line), line
    assert "WARNING das: no chunk finished for" in r.out, r.out       # the warning came first


CLUSTER_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 * 2**20,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    try:
        from jobs.cli import main
        for extra in json.loads(sys.argv[2]):
            print("rc", main(json.loads(sys.argv[1]) + extra), flush=True)
    finally:
        import ray
        ray.shutdown()
        cluster.shutdown()
""")


def test_actors_and_decode_tasks_that_fit_no_node_are_refused(workdir, tiny_ckpt, small_cache, ray_root):
    """Two nodes of 1 CPU: totals suffice, but no node hosts a 2-CPU actor, and three 0.5-CPU actors leave no
    node a whole CPU for decoding."""
    cases = [["--cpus-per-actor", "2", "--out", "two"], ["--cpus-per-actor", "0.5", "--actors", "3", "--out", "half"]]
    env = {**env_with(RAY_TMPDIR=ray_root, DAS_CLUSTER_WAIT_S="0"), "PYTHONPATH": REPO}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CLUSTER_SCRIPT, json.dumps(label_args(tiny_ckpt, small_cache, None)),
                           json.dumps(cases)], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert re.findall(r"^rc (\d+)$", proc.stdout, re.M) == ["2", "2"], out
    errors = [ln for ln in out.splitlines() if ln.startswith("das label: error: ")]
    assert len(errors) == 2, out
    assert "no node can host one encoder actor of 2 CPU (the largest node offers 1 CPU" in errors[0]
    assert ("with the 3 encoder actor(s) of 0.5 CPU placed, no node has 1 CPU and 768 MiB memory left for a "
            "decode task") in errors[1]
    assert all("--cpus-per-actor" in e for e in errors)
    assert time.monotonic() - start < 240
