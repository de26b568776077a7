"""``python -m bench.browse [--windows 1000000]``: how fast ``das browse`` starts and answers on a large run.

It generates a label run with bench.scale's generator (das's real driver, writer and packs, generated
clustered embeddings in place of decoding and encoding: ``bench.scale.generate``), builds its index with
``das index``, starts ``das browse`` as a user does (a subprocess), and times, from this process, over HTTP:

- start-up: from the command until the server answers ``/api/status``;
- the background loads the server reports itself: the index, the file directory and the checkpoint (the
  text encoder), and the wall time until all three are done;
- the first text query once the checkpoint is loaded (so the checkpoint's loading is not in it), then a
  second one; a label filter (a label's best windows, no text); a file's timeline; "more like this";
- the server's peak resident memory (``VmHWM``).

Goal (issue 24): the first query under 2 s on 10^6 windows, not counting the checkpoint's loading. The
figures go to ``bench/browse.json`` (every run appended) and are printed. Not in CI nor in ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from bench.common import log
from bench.scale import CLASSES, generate, path_list
from das_core.output.record import utc_now

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GOAL_FIRST_QUERY_S = 2.0


def _get(url: str, timeout: float = 600) -> tuple[float, dict]:
    """(seconds, JSON answer) of one GET."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        data = json.loads(answer.read())
    return time.perf_counter() - started, data


def prepare_run(work: str, n: int) -> tuple[str, str, dict]:
    """The generated label run of ``n`` windows (reused when ``work`` already holds it), its checkpoint, and
    the generation's and ``das index``'s figures."""
    from bench.inputs import make_cache
    from das_core.clap.random_weights import write_random_checkpoint

    os.makedirs(work, exist_ok=True)
    ckpt, cache_uri, out = (os.path.join(work, name) for name in ("random.pt", "cache.npz", f"labels-{n}"))
    if not os.path.exists(ckpt):
        write_random_checkpoint(ckpt)
    if not os.path.exists(cache_uri):
        cache, _ = make_cache(ckpt, [f"class_{i:03d}" for i in range(CLASSES)], ["rain", "traffic", "wind"])
        cache.save(cache_uri)
    figures: dict = {}
    if not os.path.exists(os.path.join(out, "_index", "segment", "index.json")):
        log(f"browse: generating {n} windows into {out}")
        figures.update(generate(out, path_list(work, n), ckpt, cache_uri))
        log("browse: das index")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jobs.cli", "index", out], check=True, env=_env())
        figures["index_build_s"] = time.perf_counter() - started
    return out, ckpt, figures


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("RAY_ADDRESS", None)
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_server(out: str) -> dict:
    """Start ``das browse out``, time what the module says, stop it with Ctrl-C."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "browse", out, "--port", str(port)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        return _measure(base, proc, started)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _measure(base: str, proc: subprocess.Popen, started: float) -> dict:
    figures: dict = {}
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"das browse ended: {proc.stdout.read()}")
        try:
            _, status = _get(base + "/api/status", timeout=5)
            break
        except OSError:
            time.sleep(0.05)
    figures["startup_to_http_s"] = time.perf_counter() - started
    while status["loading"] or status["directory_s"] is None:
        time.sleep(0.05)
        _, status = _get(base + "/api/status")
    figures["startup_to_ready_s"] = time.perf_counter() - started
    figures.update({k: status[k] for k in ("index_load_s", "checkpoint_load_s", "directory_s")})
    figures["ranking"], figures["text_search"] = status["ranking"], status["text_search"]
    for name, query in (("first_text_query", "class_001"), ("second_text_query", "a dog barking at night")):
        seconds, answer = _get(base + "/api/search?" + urllib.parse.urlencode({"q": query, "top": 20}))
        figures[f"{name}_s"], figures[f"{name}_hits"] = seconds, len(answer["results"])
    hit = answer["results"][0]
    seconds, answer = _get(base + "/api/search?" + urllib.parse.urlencode({"label": hit["label"], "top": 20}))
    figures["label_filter_s"], figures["label_filter_hits"] = seconds, len(answer["results"])
    seconds, answer = _get(base + "/api/timeline?" + urllib.parse.urlencode({"file": hit["file_id"]}))
    figures["timeline_s"], figures["timeline_windows"] = seconds, len(answer["windows"])
    seconds, answer = _get(base + "/api/like?" + urllib.parse.urlencode({"file": hit["file_id"],
                                                                          "segment": hit["segment"], "top": 20}))
    figures["more_like_this_s"] = seconds
    figures["more_like_this_first_is_itself"] = (answer["results"][0]["file_id"], answer["results"][0]["segment"]) \
        == (hit["file_id"], hit["segment"])
    figures["server_peak_gib"] = _peak_gib(proc.pid)
    return figures


def _peak_gib(pid: int) -> float | None:
    """The process's peak resident memory (VmHWM), in GiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.browse [--windows N] [--work DIR] [--keep]``: generate, index, time, record, print."""
    parser = argparse.ArgumentParser(prog="python -m bench.browse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=1_000_000, help="windows (10 s clips) to generate")
    parser.add_argument("--work", default="/tmp/das-browse-bench", help="where the run and its inputs go (a run "
                        "of the same size already there, indexed, is reused)")
    parser.add_argument("--keep", action="store_true", help="keep --work afterwards (it is removed otherwise)")
    args = parser.parse_args(argv)
    t = time.perf_counter()
    try:
        out, _, results = prepare_run(os.path.abspath(args.work), args.windows)
        results["windows"] = json.load(open(os.path.join(out, "_manifest.json")))["counts"]["segments"]
        log("browse: timing das browse")
        results.update(time_server(out))
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    results["first_query_goal_s"] = GOAL_FIRST_QUERY_S
    results["first_query_goal_met"] = results["first_text_query_s"] < GOAL_FIRST_QUERY_S
    record_uri = os.path.join(HERE, "browse.json")
    record = json.load(open(record_uri)) if os.path.exists(record_uri) else []
    record.append({"when": utc_now(), "duration_s": round(time.perf_counter() - t, 1), "results": results})
    with open(record_uri, "w") as f:
        json.dump(record, f, indent=1)
    print("\n".join(f"{k:34s} {v:.3f}" if isinstance(v, float) else f"{k:34s} {v}" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
