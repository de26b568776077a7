"""``das label`` end to end on Ray: the pipeline's marginal clips/s, and workers' peak memory on long files."""

from __future__ import annotations

import os
import time

from bench.common import Sizes, log
from bench.inputs import ensure_clips


def bench_pipeline(ckpt: str, cache_uri: str, paths: list[str], work: str, batch_size: int, threads: int) -> dict:
    """``das label`` on N clips and on 2N clips: the extra N clips over the extra wall time is the pipeline's
    throughput with start-up (Ray Data planning, actors importing torch and loading the model) cancelled out,
    as the encoder figure is measured after a warm-up."""
    from jobs.label import LabelConfig, run

    half = len(paths) // 2
    walls = {}
    for n in (half, 2 * half):
        folder = os.path.join(work, f"pipeline-in-{n}")
        if not os.path.isdir(folder):
            os.makedirs(folder + ".partial", exist_ok=True)
            for p in paths[:n]:
                os.symlink(p, os.path.join(folder + ".partial", os.path.basename(p)))
            os.replace(folder + ".partial", folder)
        cfg = LabelConfig(input=folder, cache=cache_uri, checkpoint=ckpt, out=os.path.join(work, f"pipeline-out-{n}"),
                          overwrite=True, batch_size=batch_size, torch_threads=threads, cpus_per_actor=1,
                          max_error_fraction=0.0, progress_every_s=1e9, report=False)
        t = time.perf_counter()
        manifest = run(cfg)
        walls[n] = time.perf_counter() - t
        assert manifest["counts"]["segments"] == n, manifest["counts"]
    extra = walls[2 * half] - walls[half]
    if extra <= 0:       # only in --smoke: too few clips to separate start-up from work
        log("pipeline: start-up noise exceeds the extra work; reporting the end-to-end rate")
        extra = walls[2 * half] * half / (2 * half)
    marginal = half / extra
    return {"pipeline_clips_per_s": marginal, "pipeline_startup_s": walls[half] - half / marginal,
            "pipeline_end_to_end_clips_per_s": 2 * half / walls[2 * half],
            "pipeline_wall_s": {str(k): v for k, v in walls.items()}}


def _worker_peaks() -> dict[str, float]:
    """Peak RSS (VmHWM, bytes) of each Ray worker process under this driver, by role."""
    import psutil

    peaks: dict[str, float] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
            if not title.startswith("ray::"):
                continue
            with open(f"/proc/{proc.pid}/status") as f:
                hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        except (psutil.Error, OSError, StopIteration):
            continue
        role = "encoder actor" if "EncodeAndWrite" in title else "decode/other worker"
        peaks[role] = max(peaks.get(role, 0.0), float(hwm))
    return peaks


def bench_rss(ckpt: str, cache_uri: str, work: str, sizes: Sizes, threads: int) -> dict:
    """Label one long and one 6x shorter file, each in a fresh Ray, and compare workers' peak RSS."""
    import ray

    from jobs.label import LabelConfig, run

    peaks = {}
    for name, minutes in (("short", sizes.long_minutes / 6), ("long", sizes.long_minutes)):
        folder = os.path.join(work, f"rss-{name}-{minutes:g}min")
        ensure_clips(folder, 1, minutes * 60, rate=16000, channels=1)
        ray.shutdown()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
        run(LabelConfig(input=folder, cache=cache_uri, checkpoint=ckpt, out=os.path.join(work, f"rss-out-{name}"),
                        overwrite=True, torch_threads=threads, max_error_fraction=0.0, progress_every_s=1e9,
                        report=False, batch_size=sizes.rss_batch_size))
        peaks[name] = _worker_peaks()
        shown = ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in peaks[name].items())
        log(f"peak RSS ({minutes:g} min file): {shown}")
    ray.shutdown()
    worst = {name: max(p.values()) for name, p in peaks.items()}
    return {"rss_ratio_60_over_10_min": worst["long"] / worst["short"], "peak_rss_gib": worst["long"] / 2**30,
            "rss_by_role_gib": {n: {k: v / 2**30 for k, v in p.items()} for n, p in peaks.items()},
            "rss_long_minutes": sizes.long_minutes}
