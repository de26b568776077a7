"""The ``das label`` driver at archive scale: what it absorbs per chunk, its peak memory as the archive grows,
and the cost of a dry run's planning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.common import CHUNK
from bench.inputs import ensure_clips

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_driver(chunks: int) -> dict:
    """Everything the driver does per chunk after the encoder stage (counting, unit tracking), on one core.

    In 0.1 the driver received every window's embedding and scores, assembled files and wrote all Parquet
    itself (issue #10 measured 6 700 - 13 500 windows/s locally, about 1 000 with S3 output).
    """
    from das_core.label.ledger import RunCounts, UnitTracker

    rows = []
    for i in range(chunks):
        unit, chunk = divmod(i, 4)
        rows.append({"unit": f"u{unit:08d}", "chunk": chunk, "last": chunk == 3, "windows": CHUNK, "files_ok": 3,
                     "files_error": 0, "segments": CHUNK, "errors_by_kind": "{}", "pieces": False,
                     "node": "n1", "seconds": 0.5, "decoded_on": "n2"})
    best = float("inf")
    for _ in range(3):
        counts, tracker, whole = RunCounts(), UnitTracker(), 0
        t = time.perf_counter()
        for stats in rows:
            counts.add(stats)
            whole += tracker.add(stats) is not None
        best = min(best, time.perf_counter() - t)
    assert whole == chunks // 4
    return {"driver_windows_per_s": chunks * CHUNK / best, "driver_chunks_per_s": chunks / best}


def _child_peak(code: str, timeout: float) -> tuple[float, float, str]:
    """Run ``code`` in a fresh Python; (wall s, its peak RSS in bytes, stdout)."""
    probe = ("\nimport re as _re\nprint('\\nVMHWM', _re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())"
             ".group(1))\n")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code + probe], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"child failed: {proc.stderr[-2000:]}")
    hwm = next(int(line.split()[1]) * 1024 for line in proc.stdout.splitlines() if line.startswith("VMHWM"))
    return wall, float(hwm), proc.stdout


def bench_dry_run(ckpt: str, cache_uri: str, work: str, rows: int) -> dict:
    """``das label --dry-run`` on a path list of ``rows`` paths: wall time and peak RSS of the process."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path_list = os.path.join(work, f"path-list-{rows}.parquet")
    if not os.path.exists(path_list):
        paths = pa.array([f"s3://archive/2024/{i // 1000:05d}/clip-{i:08d}.flac" for i in range(rows)])
        pq.write_table(pa.table({"path": paths}), path_list)
    args = ["--input", path_list, "--cache", cache_uri, "--checkpoint", ckpt, "--out",
            os.path.join(work, f"dry-run-out-{rows}"), "--dry-run"]
    code = f"import sys\nfrom jobs.label import main\nrc = main({json.dumps(args)})\nassert rc == 0, rc"
    wall, peak, stdout = _child_peak(code, timeout=900)
    assert f"{rows} file(s)" in stdout, stdout[-1000:]
    return {"dry_run_s": wall, "dry_run_peak_rss_gib": peak / 2**30, "dry_run_rows": rows}


def bench_driver_rss(ckpt: str, cache_uri: str, work: str, small: int, ratio: int, batch_size: int) -> dict:
    """Peak RSS of the ``das label`` driver process on an archive of ``small`` and of ``ratio`` x ``small`` clips
    (each run in its own process with its own local Ray, at ``--batch-size batch_size``)."""
    peaks = {}
    for n in (small, small * ratio):
        folder = os.path.join(work, f"driver-rss-{n}")
        ensure_clips(folder, n, 1.0, rate=16000, channels=1)
        args = ["--input", folder, "--cache", cache_uri, "--checkpoint", ckpt, "--out",
                os.path.join(work, f"driver-rss-out-{n}"), "--overwrite", "--files-per-unit", "16",
                "--batch-size", str(batch_size)]
        code = f"import sys\nfrom jobs.label import main\nrc = main({json.dumps(args)})\nassert rc == 0, rc"
        _, peaks[n], _ = _child_peak(code, timeout=1800)
    big = small * ratio
    return {"driver_rss_ratio": peaks[big] / peaks[small], "driver_peak_rss_gib": peaks[big] / 2**30,
            "driver_rss_archives": [small, big]}
