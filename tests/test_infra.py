"""infra/: every definition parses, every entry point passes the real parser, and `ray job submit` really works."""

from __future__ import annotations

import importlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TEST_BATCH_SIZE, free_port, sine, write_audio

pytestmark = pytest.mark.integration    # Ray, S3 (moto) or subprocesses: `make test-fast` skips it

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
VENV_BIN = Path(sys.executable).parent
TOKEN_SECRET = "das-ray-auth"

# Values substituted for the shell variables of entry-point commands before they meet the parser.
SHELL_SAMPLES = {"RAY_DASHBOARD": "http://das-head-svc:8265"}
# The README sections that document infra/ (the others belong to other commands' docs).
README_SECTIONS = ("Re-scoring stored embeddings", "Running on a cluster")


def pinned(package: str) -> str:
    """The exact version pyproject.toml pins for ``package``."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.match(rf"^{re.escape(package)}(\[[^\]]*\])?==([\w.]+)$", dep)
        if m:
            return m.group(2)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


def python_tag() -> str:
    """'py311' for requires-python '>=3.11,<3.12'."""
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    m = re.search(r">=\s*3\.(\d+)", spec)
    assert m, spec
    return f"py3{m.group(1)}"


def yaml_documents() -> dict[Path, list[dict]]:
    return {path: [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
            for path in sorted(INFRA.rglob("*.yaml"))}


def by_kind(kind: str) -> list[dict]:
    return [d for docs in yaml_documents().values() for d in docs if d.get("kind") == kind]


def walk(node, path=()):
    """Every (path, value) in a parsed YAML document."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [ln for ln in (INFRA / "Dockerfile").read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in joined.splitlines() if ln.strip()]


def containers(spec: dict) -> list[dict]:
    """Every container of every pod template in ``spec``."""
    found = []
    for path, value in walk(spec):
        if path and path[-1] == "containers":
            found += value
    return found


def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def group_resources(group: dict) -> dict:
    """A KubeRay group's custom Ray resources: rayStartParams ``resources``, a shell-quoted JSON string."""
    text = group.get("rayStartParams", {}).get("resources")
    return json.loads(shlex.split(text)[0]) if text else {}


# ------------------------------------------------------------------ entry points


def substitute_shell(command: str) -> str:
    def var(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in SHELL_SAMPLES:
            raise AssertionError(f"no sample value for ${name} in {command!r}: add one to SHELL_SAMPLES")
        return SHELL_SAMPLES[name]

    command = re.sub(r"\$\([^)]*\)", "sample", command)
    return re.sub(r"\$\{(\w+)[^}]*\}|\$(\w+)", var, command)


def entry_points_in(text: str) -> list[str]:
    """``python -m jobs.X ...`` commands in shell text, each up to the end of its line or shell operator."""
    text = text.replace("\\\n", " ")
    found = []
    for m in re.finditer(r"python3? -m jobs\.", text):
        line = text[m.start():].split("\n", 1)[0]
        lexer = shlex.shlex(substitute_shell(line), posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        tokens = []
        for token in lexer:
            if set(token) <= set(";&|()<>"):
                break
            tokens.append(token)
        found.append(shlex.join(tokens))
    return found


def infra_entry_points() -> list[tuple[str, str]]:
    """(where, command) for every entry point in infra/ (YAML values, Dockerfile) and README's shell blocks."""
    found = []
    for path, docs in yaml_documents().items():
        for doc in docs:
            for where, value in walk(doc):
                if isinstance(value, str):
                    found += [(f"{path.relative_to(ROOT)}:{'.'.join(map(str, where))}", c)
                              for c in entry_points_in(value)]
                elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                    for i in range(len(value) - 2):
                        if value[i].startswith("python") and value[i + 1] == "-m" and value[i + 2].startswith("jobs."):
                            found.append((f"{path.relative_to(ROOT)}:{'.'.join(map(str, where))}",
                                          shlex.join(value[i:])))
    docker = "\n".join(args for instr, args in dockerfile_instructions() if instr in ("RUN", "CMD", "ENTRYPOINT"))
    found += [("infra/Dockerfile", c) for c in entry_points_in(docker)]
    for title in README_SECTIONS:
        found += [(f"README.md ({title})", c) for c in entry_points_in(readme_shell(title))]
    return found


def readme_shell(title: str) -> str:
    """The shell blocks of one README section, `das X` spelled `python -m jobs.X`, comments dropped."""
    from jobs.cli import COMMANDS

    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"\n## {title}\n")
    end = readme.find("\n## ", start + 1)
    section = readme[start:end if end > 0 else None]
    lines = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            if line.lstrip().startswith("#"):
                continue
            m = re.match(r"^das ([\w-]+)(?= )", line)
            lines.append(f"python -m {COMMANDS[m.group(1)][0]}{line[m.end():]}" if m else line)
    return "\n".join(lines)


def test_every_entry_point_passes_the_real_parser():
    commands = infra_entry_points()
    modules = {shlex.split(c)[2] for _, c in commands}
    # the label RayJob, the nightly CronJob and the README's ray job submit commands at least
    assert {"jobs.label", "jobs.rescore"} <= modules, commands
    assert any(w.startswith("infra/k8s/label/") for w, _ in commands)
    assert any(w.startswith("infra/k8s/cronjob") and "--since-last-run" in c for w, c in commands)
    assert sum(w.startswith("README.md") for w, _ in commands) >= 4
    # the README documents the very commands the manifests run
    readme = {c for w, c in commands if w.startswith("README.md")}
    assert all(c in readme for w, c in commands if w.startswith("infra/k8s/")), "README and infra/k8s disagree"
    for where, command in commands:
        argv = shlex.split(command)
        assert argv[:2] in (["python", "-m"], ["python3", "-m"]), (where, command)
        module = importlib.import_module(argv[2])
        parser = module.build_parser(f"python -m {argv[2]}")
        try:
            args = parser.parse_args(argv[3:])
        except SystemExit:
            pytest.fail(f"{where}: {command!r} is refused by the {argv[2]} parser")
        if argv[2] in ("jobs.rescore", "jobs.label"):
            module.config_from_args(args)          # the config checks its settings when made


def test_the_entry_point_extraction_sees_what_it_must():
    assert entry_points_in('ray job submit --address "$RAY_DASHBOARD" -- python -m jobs.rescore --out s3://b/o '
                           '--since-last-run; echo done') == ["python -m jobs.rescore --out s3://b/o --since-last-run"]
    assert entry_points_in("x \\\n  -- python -m jobs.label --input a \\\n  --out b\nnext") == [
        "python -m jobs.label --input a --out b"]
    with pytest.raises(AssertionError, match="UNKNOWN"):
        entry_points_in("python -m jobs.label --input $UNKNOWN")


# ------------------------------------------------------------------ the definitions themselves


def test_every_manifest_parses():
    docs = yaml_documents()
    names = {str(p.relative_to(INFRA)) for p in docs}
    assert {"runtime_env.yaml", "cluster.yaml", "k8s/raycluster.yaml", "k8s/cronjob-rescore.yaml",
            "k8s/kustomization.yaml", "k8s/label/rayjob-label.yaml", "k8s/label/kustomization.yaml"} <= names
    for path, content in docs.items():
        assert content and all(isinstance(d, dict) for d in content), path
    for kustomization in INFRA.rglob("kustomization.yaml"):
        resources = yaml.safe_load(kustomization.read_text())["resources"]
        assert all((kustomization.parent / r).is_file() for r in resources), kustomization


def test_dockerfile_builds_on_the_pinned_ray_and_python():
    instructions = dockerfile_instructions()
    froms = [args for instr, args in instructions if instr == "FROM"]
    assert froms == [f"rayproject/ray:{pinned('ray')}-{python_tag()}-gpu"]
    runs = [args for instr, args in instructions if instr == "RUN"]
    assert any("pip install" in r and "/opt/das" in r for r in runs)
    copied = " ".join(args for instr, args in instructions if instr == "COPY")
    assert all(x in copied for x in ("pyproject.toml", "das_core", "jobs"))
    assert any(instr == "ARG" and args.startswith("DAS_CHECKPOINT_NAME=") for instr, args in instructions)
    env = " ".join(args for instr, args in instructions if instr == "ENV")
    assert "DAS_TOKENIZER_DIR=/models/roberta-tokenizer" in env and "RAY_AUTH_MODE=token" in env
    assert any("roberta-base" in r and "/models/roberta-tokenizer" in r for r in runs)
    assert any("load_roberta_tokenizer" in r for r in runs)            # the fetched tokenizer is verified
    # offline from the last ENV on: set after every step that downloads
    last_run = max(i for i, (instr, _) in enumerate(instructions) if instr == "RUN")
    offline = [i for i, (instr, args) in enumerate(instructions) if instr == "ENV" and "HF_HUB_OFFLINE=1" in args]
    assert offline and offline[-1] > last_run
    assert not any("RAY_AUTH_TOKEN" in args for _, args in instructions)    # the token is never baked in
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "*.pt", "demo-output"} <= set(ignored)


def test_runtime_env_uploads_only_the_source(tmp_path):
    from ray._private.runtime_env.packaging import create_package  # what `ray job submit` zips (Ray 2.60)
    from ray.runtime_env import RuntimeEnv

    runtime_env = yaml.safe_load((INFRA / "runtime_env.yaml").read_text())
    RuntimeEnv(**runtime_env)                                           # Ray's own validation
    assert {".venv", ".git", "outputs", "checkpoints", "*.pt", "demo-output"} <= set(runtime_env["excludes"])
    env_vars = runtime_env["env_vars"]
    assert env_vars["HF_HUB_OFFLINE"] == "1" and all(isinstance(v, str) for v in env_vars.values())
    assert "RAY_AUTH_TOKEN" not in env_vars
    package = tmp_path / "working_dir.zip"
    create_package(str(ROOT), package, include_gitignore=False, excludes=runtime_env["excludes"])
    names = zipfile.ZipFile(package).namelist()
    assert "jobs/rescore.py" in names and "das_core/output/store.py" in names and "pyproject.toml" in names
    assert not [n for n in names if n.split("/")[0] in (".venv", ".git", "demo-output") or n.endswith(".pt")]
    assert package.stat().st_size < 20 * 2**20


def test_cluster_launcher_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((INFRA / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))                                # Ray's schema for `ray up`
    assert raw["docker"]["image"] == f"rayproject/ray:{pinned('ray')}-{python_tag()}-gpu"
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["node_config"]["InstanceType"].split(".")[0][0] in "mcr"          # a CPU instance family
    workers = {name: t for name, t in types.items() if name != raw["head_node_type"]}
    gpu = [t for t in workers.values() if t["node_config"]["InstanceType"].split(".")[0][0] in "gp"]
    assert gpu and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu)
    decode = [t for t in workers.values() if t.get("resources", {}).get("decode", 0) >= 1]
    assert decode and all(t["node_config"]["InstanceType"].split(".")[0][0] in "mcr" for t in decode)   # CPU only
    assert all(0 == t["min_workers"] < t["max_workers"] for t in decode)
    assert not [t for t in gpu if "decode" in t.get("resources", {})]   # GPU nodes' cores go to the encoder
    assert "--env DAS_DECODE_RESOURCE=decode" in raw["docker"]["run_options"]
    assert "--env RAY_AUTH_MODE=token" in raw["docker"]["run_options"]
    assert "--env HF_HUB_OFFLINE=1" in raw["docker"]["run_options"]
    assert raw["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"   # the user's, not the repo's
    assert any("pip install" in c and "/home/ray/das" in c for c in raw["setup_commands"])
    assert ".venv" in raw["rsync_exclude"]


def test_kubernetes_manifests():
    ray_version = pinned("ray")
    clusters, jobs, crons = by_kind("RayCluster"), by_kind("RayJob"), by_kind("CronJob")
    assert len(clusters) == 1 and len(jobs) == 1 and len(crons) == 1
    assert not by_kind("Secret")                                       # the token is never stored here
    job = jobs[0]
    assert job["spec"]["entrypoint"].startswith("python -m jobs.label ")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    for spec in (clusters[0]["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == ray_version
        assert spec["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}
        assert spec["enableInTreeAutoscaling"] is True
        groups = spec["workerGroupSpecs"]
        gpu = [g for g in groups if any("nvidia.com/gpu" in c["resources"]["limits"] for c in containers(g))]
        assert gpu and all(g["minReplicas"] == 0 and g["replicas"] == 0 for g in groups)
        decode = [g for g in groups if group_resources(g).get("decode", 0) >= 1]
        assert decode and all(g["maxReplicas"] >= 1 for g in decode) and not [g for g in gpu if g in decode]
        assert all("nvidia.com/gpu" not in c["resources"]["limits"] for g in decode for c in containers(g))
        (head,) = containers(spec["headGroupSpec"])
        assert env_of(head)["DAS_DECODE_RESOURCE"]["value"] == "decode"       # the driver asks for the group
        images = {c["image"] for c in containers(spec)}
        assert images == {"das:0.1.0"}, images                          # retargeted by kustomize `images`
    cron = crons[0]["spec"]
    assert len(cron["schedule"].split()) == 5 and cron["concurrencyPolicy"] == "Forbid"
    (submit,) = containers(cron["jobTemplate"])
    assert submit["image"] == f"rayproject/ray:{ray_version}-{python_tag()}"
    env = env_of(submit)
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": TOKEN_SECRET, "key": "auth_token"}
    command = " ".join(submit["command"] + submit["args"])
    assert "ray job submit" in command and "python -m jobs.rescore" in command and "--since-last-run" in command
    head_service = f"{clusters[0]['metadata']['name']}-head-svc"        # the Service KubeRay creates for the head
    assert env["RAY_DASHBOARD"]["value"] == f"http://{head_service}:8265"
    # nowhere a token written out: every RAY_AUTH_TOKEN comes from a secret
    for docs in yaml_documents().values():
        for doc in docs:
            for path, value in walk(doc):
                if isinstance(value, dict) and value.get("name") == "RAY_AUTH_TOKEN":
                    assert "value" not in value and "secretKeyRef" in value["valueFrom"], path
    for kustomization in INFRA.rglob("kustomization.yaml"):
        assert yaml.safe_load(kustomization.read_text())["images"][0]["name"] == "das"


# ------------------------------------------------------------------ a real `ray job submit`


def _our_processes(session_leader: int, marker: str) -> list[int]:
    """PIDs in the session of our `ray start`, or whose command line names our temp dir: only what we started."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
        if state == "Z":                                            # exited, waiting to be reaped
            continue
        session = int(session)
        if session == session_leader or marker in cmdline:
            pids.append(int(entry))
    return pids


def _stop_head(proc: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM, then SIGKILL, to the processes our `ray start` started (and to nothing else)."""
    deadline = time.monotonic() + 30
    while True:
        left = _our_processes(proc.pid, temp_dir)
        if not left or time.monotonic() > deadline:
            break
        hard = time.monotonic() > deadline - 25          # 5 s of grace, then SIGKILL
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    proc.wait(timeout=10)
    assert not _our_processes(proc.pid, temp_dir), "processes of the test's Ray head survived"
    shutil.rmtree(temp_dir, ignore_errors=True)


def _ray(args: list[str], env: dict, timeout: float, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "ray"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head` on 127.0.0.1, free ports, token authentication; stopped by PID, never `ray stop`."""
    # Ray's Unix sockets live under the temp dir and must stay below 108 characters: keep it short.
    temp_dir = tempfile.mkdtemp(prefix="das-ray-", dir="/tmp")
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    # the venv first on PATH: the job's `python` is this virtualenv's, which has das's dependencies
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PATH": f"{VENV_BIN}:{env.get('PATH', '')}"})
    dashboard = free_port()
    ports = {"--port": free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port()}
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2", "--num-gpus=0",
           "--object-store-memory=300000000", f"--temp-dir={temp_dir}", "--disable-usage-stats",
           *[f"{k}={v}" for k, v in ports.items()]]
    log_path = tmp_path / "ray-start.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            listed = _ray(["job", "list", "--address", address], env, timeout=60)
            if listed.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the job server at {address} did not come up:\n{listed.stderr[-2000:]}\n"
                            f"{log_path.read_text()[-2000:]}")
            time.sleep(2)
        yield {"address": address, "env": env, "token": token}
    finally:
        _stop_head(proc, temp_dir)


def test_ray_job_submit_runs_das_label(ray_head, encoder, tiny_ckpt, tmp_path):
    from das_core.scoring.cache import DriftCache

    audio = tmp_path / "audio"
    audio.mkdir()
    write_audio(audio / "tone.wav", sine(440.0, 2.0, 16000, amp=0.3), 16000)
    write_audio(audio / "long.flac", sine(660.0, 11.0, 22050, amp=0.3), 22050)
    (audio / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE not really")
    cache = DriftCache.build(encoder.embed_text, ["siren", "dog_bark"], ["traffic noise", "wind noise"],
                             encoder_id=encoder.encoder_id, encoder_name=encoder.name)
    cache.save(str(tmp_path / "cache.npz"))
    out = tmp_path / "labels"

    # the job server refuses a client without the cluster's token
    wrong = {**ray_head["env"], "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    refused = _ray(["job", "list", "--address", ray_head["address"]], wrong, timeout=60)
    assert refused.returncode != 0

    submitted = _ray(["job", "submit", "--address", ray_head["address"], "--working-dir", ".",
                      "--runtime-env", "infra/runtime_env.yaml", "--",
                      "python", "-m", "jobs.label", "--input", str(audio), "--cache", str(tmp_path / "cache.npz"),
                      "--checkpoint", tiny_ckpt, "--out", str(out), "--max-error-fraction", "0.5",
                      "--batch-size", str(TEST_BATCH_SIZE)],
                     ray_head["env"], timeout=300)
    logs = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, logs[-5000:]
    assert "succeeded" in logs and "das label: complete" in logs
    files = pq.read_table(out / "files").to_pylist()
    assert sorted(f["file_id"] for f in files) == ["broken.wav", "long.flac", "tone.wav"]
    assert {f["file_id"]: f["status"] for f in files} == {"broken.wav": "error", "long.flac": "ok", "tone.wav": "ok"}
    assert {f["file_id"]: f["n_segments"] for f in files if f["status"] == "ok"} == {"long.flac": 2, "tone.wav": 1}
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert {k: manifest["counts"][k] for k in ("files", "ok", "error", "segments")} == {
        "files": 3, "ok": 2, "error": 1, "segments": 3}
    assert pq.read_table(out / "segments").num_rows == 3


# ------------------------------------------------------------------ the decode group

# In its own process: a driver joins one Ray cluster at a time. A head without the resource `decode` and a
# node offering it, as infra/'s decode group does; decode tasks placed by jobs.pipeline, then a whole das label.
DECODE_GROUP_SCRIPT = """
import json, os, sys
from ray.cluster_utils import Cluster

args = json.loads(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 300 * 2**20})
decode_node = cluster.add_node(num_cpus=2, resources={"decode": 1000}, object_store_memory=300 * 2**20)
cluster.wait_for_nodes()
os.environ["RAY_ADDRESS"] = cluster.address
try:
    import ray
    import ray.data
    from das_core.label.decode import DecodeSettings
    from jobs.pipeline import decode_resources, decode_task

    ray.init(address=cluster.address)
    placed = decode_resources(ray.cluster_resources())
    items = [{"unit": f"u{i:08d}", "file_ids": [os.path.basename(path)], "paths": [path]}
             for i, path in enumerate(args["paths"])]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        decode_task, fn_kwargs={"settings": DecodeSettings()}, batch_size=1, batch_format="pyarrow", num_cpus=1,
        resources=placed)
    nodes = sorted({n for b in ds.iter_batches(batch_size=None, batch_format="pyarrow")
                    for n in b.column("decoded_on").to_pylist()})
    ray.shutdown()
    from jobs.label import main
    rc = main(args["label"])
finally:
    import ray
    ray.shutdown()
    cluster.shutdown()
print(json.dumps({"placed": placed, "nodes": nodes, "decode_node": decode_node.node_id, "rc": rc}))
"""


def test_decode_tasks_run_only_on_the_decode_group(tiny_ckpt, encoder, tmp_path):
    from das_core.scoring.cache import DriftCache

    src = tmp_path / "audio"
    src.mkdir()
    paths = [write_audio(src / f"clip{i}.wav", sine(300 + 100 * i, 3.0 + i, 16000, amp=0.3), 16000)
             for i in range(6)]
    (src / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    cache = str(tmp_path / "cache.npz")
    DriftCache.build(encoder.embed_text, ["siren", "hum"], ["traffic noise"], encoder_id=encoder.encoder_id).save(cache)
    out = tmp_path / "out"
    label = ["--input", str(src), "--cache", cache, "--checkpoint", tiny_ckpt, "--out", str(out), "--ray",
             "--files-per-unit", "2", "--max-error-fraction", "1", "--actors", "1", "--cpus-per-actor", "0.5",
             "--no-report", "--batch-size", str(TEST_BATCH_SIZE)]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DAS_DECODE_RESOURCE")}
    proc = subprocess.run([sys.executable, "-c", DECODE_GROUP_SCRIPT, json.dumps({"paths": paths, "label": label})],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["placed"] == {"decode": 1.0}                    # detected on the cluster
    assert result["nodes"] == [result["decode_node"]]             # every decode task ran on the decode node
    assert result["rc"] == 0 and "das label: complete" in proc.stdout
    files = pq.read_table(out / "files").to_pylist()
    assert len(files) == 7 and [f["status"] for f in files].count("error") == 1


def test_decode_resources_follow_the_cluster_and_the_environment(monkeypatch):
    from jobs.pipeline import decode_resources

    monkeypatch.delenv("DAS_DECODE_RESOURCE", raising=False)
    assert decode_resources({"CPU": 4.0, "memory": 1e9}) is None          # local Ray, no decode group: anywhere
    assert decode_resources({"CPU": 4.0, "decode": 1000.0}) == {"decode": 1.0}
    monkeypatch.setenv("DAS_DECODE_RESOURCE", "cpu_pool")                 # named: asked for before any node has it
    assert decode_resources({"CPU": 4.0}) == {"cpu_pool": 1.0}
    monkeypatch.setenv("DAS_DECODE_RESOURCE", "")                         # empty: never
    assert decode_resources({"CPU": 4.0, "decode": 1000.0}) is None
