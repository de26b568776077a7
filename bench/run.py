"""``make bench``: throughput and memory of das, as ratios measured in one run.

Each figure comes from a measurement made in this run on this machine; the
inputs (audio, checkpoint with random weights of the real HTSAT-tiny
architecture, drift caches) are generated here. Results are appended to
``bench/results.json`` (every run's raw numbers are kept) and printed as a
table with the goals.

    python -m bench.run            # full suite (under 20 minutes on 2 cores)
    python -m bench.run --smoke    # tiny sizes, seconds; what the tests run
    python -m bench.run --only decode   # the decode stage over the codec per format and the GPU-node
                                        # projection alone, in seconds, without Ray
    python -m bench.run --only index --index-rows 100000   # das index's candidates (FAISS, Lance), no Ray
    python -m bench.run --table    # the last run's table, the projected GPU node and the cores one GPU needs

This module is the runner: the goals, the order of the benchmarks, the record and the table. The benchmarks
live by subject beside it (encode, pipeline, codec, decode, rescore, search, scoring, driver, write), on what
they share (common: sizes, timing, the log line, moto's S3) and the inputs they generate (inputs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time

from bench.codec import bench_codec
from bench.common import FULL, SMOKE, Sizes, log
from bench.decode import bench_decode, bench_ffmpeg_vs_sndfile, bench_shards
from bench.driver import bench_driver, bench_driver_rss, bench_dry_run
from bench.encode import bench_encoder, bench_gpu, bench_hf_encoder, bench_naive
from bench.index import bench_index, index_table
from bench.inputs import cache_subset, ensure_clips, make_cache
from bench.pipeline import bench_pipeline, bench_rss
from bench.rescore import bench_rescore
from bench.scoring import bench_changes, bench_scoring
from bench.search import bench_search_figures
from bench.sizing import FORMATS, gpu_rate, sizing_text
from bench.write import bench_host, bench_pack, bench_write, random_cache
from das_core.scoring.cache import DriftCache

HERE = os.path.dirname(os.path.abspath(__file__))
GOALS = {
    "pipeline_over_encoder": (">=", 0.85),
    "pipeline_over_naive": (">=", 1.5),
    "das_overhead": ("<=", 0.01),
    "rescore_over_read": (">=", 0.5),
    "rescore_over_read_10_classes": (">=", 0.5),
    "rescore_over_matmul_bound": (">=", 0.5),
    "rss_ratio_60_over_10_min": ("<=", 1.2),
    "decode_scaling": (">=", 0.8),
    "host_windows_per_core": (">=", 10_000),      # one actor's host side keeps up with a GPU (issue #22)
    "driver_windows_per_s": (">=", 270_000),      # 20x the best 0.1 figure (13 500, issue #10)
    "driver_rss_ratio": ("<=", 1.2),
    "dry_run_s": ("<=", 60),
    "dry_run_peak_rss_gib": ("<=", 1.0),
    **{f"decode_over_codec_{ext}": ("<=", 1.25) for ext in FORMATS},
}


def machine() -> dict:
    """What the figures were measured on: Python, platform, cores, torch, CUDA and the GPU's name."""
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


TABLE_KEYS = (
    "encoder_clips_per_s", "encoder_best_batch_size", "hf_encoder_clips_per_s", "hf_over_laion_encoder",
    "pipeline_clips_per_s", "pipeline_over_encoder", "pipeline_startup_s", "naive_clips_per_s", "pipeline_over_naive",
    "pipeline_over_naive_ceiling", "das_overhead", "rescore_rows_per_s", "rescore_over_read",
    "rescore_over_read_10_classes", "matmul_bound_rows_per_s", "rescore_over_matmul_bound", "search_rows_per_s_1q",
    "search_over_read_1q", "search_rows_per_s_100q", "search_over_read_100q", "rss_ratio_60_over_10_min",
    "peak_rss_gib", "cache_build_s", "decode_per_core", "decode_scaling",
    *(f"decode_{k}_{ext}" for ext in FORMATS for k in ("over_codec", "windows_per_core")),
    "ffmpeg_over_sndfile_flac", "ffmpeg_over_sndfile_ogg", "driver_windows_per_s", "driver_rss_ratio",
    "driver_peak_rss_gib", "dry_run_s", "dry_run_peak_rss_gib", "write_windows_per_s_local", "write_windows_per_s_s3",
    "host_windows_per_core",
    "shards_tar_over_objects", "text_prefix_speedup", "topk_speedup", "topk_argpartition_speedup",
    "label_columns_vectorised_speedup", "gpu_clips_per_s")


def table(results: dict) -> str:
    """``results`` as a text table of the ``TABLE_KEYS`` present: value, goal and whether it is met."""
    rows = [("metric", "value", "goal", "met")]
    for key in TABLE_KEYS:
        if key not in results:
            continue
        value = results[key]
        text = (f"{value:.3f}" if isinstance(value, float) else
                ", ".join(f"{k} {v:.1f}" for k, v in value.items()) if isinstance(value, dict) else str(value))
        goal, met = "", ""
        if key in GOALS and isinstance(value, (int, float)):
            op, target = GOALS[key]
            goal = f"{op} {target}"
            met = "yes" if (value >= target if op == ">=" else value <= target) else "NO"
        rows.append((key, text, goal, met))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def bench_archive(ckpt: str, cache, cache_uri: str, work: str, sizes: Sizes) -> dict:
    """The archive-scale figures (driver, write stage, dry run, driver memory, shards, FFmpeg), logged as they
    come."""
    out = bench_driver(sizes.driver_chunks)
    log(f"driver: {out['driver_windows_per_s']:.0f} windows/s absorbed on one core")
    out.update(bench_write(cache, repeats=5))
    log("write stage, windows/s per core: " + ", ".join(
        f"{w} {out[f'write_windows_per_s_{w}']:.0f} (plain Parquet {out[f'plain_parquet_windows_per_s_{w}']:.0f})"
        for w in ("local", "s3") if f"write_windows_per_s_{w}" in out))
    out.update(bench_dry_run(ckpt, cache_uri, work, sizes.dry_run_rows))
    log(f"dry run on {sizes.dry_run_rows} paths: {out['dry_run_s']:.1f} s, {out['dry_run_peak_rss_gib']:.2f} GiB")
    out.update(bench_driver_rss(ckpt, cache_uri, work, sizes.rss_clips, 4, sizes.rss_batch_size))
    log(f"driver peak RSS {out['driver_peak_rss_gib']:.2f} GiB; x4 archive: ratio {out['driver_rss_ratio']:.2f}")
    out.update(bench_shards(work, sizes.shard_clips))
    log(f"S3 decode stage: {out['shards_windows_per_s_objects']:.0f} windows/s from single objects, "
        f"{out['shards_windows_per_s_tar']:.0f} from tar shards")
    out.update(bench_ffmpeg_vs_sndfile(sizes.codec_seconds, sizes.codec_repeats))
    log("FFmpeg over libsndfile, per core: " + ", ".join(
        f"{e} {out[f'ffmpeg_over_sndfile_{e}']:.2f}" for e in ("flac", "ogg")))
    return out


def history_of(path: str) -> list[dict]:
    """The records of the results file at ``path`` (runs of ``bench.run``, ``gpu`` entries of ``bench.gpu``);
    empty where there is none."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options of ``python -m bench.run``."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every benchmark still runs")
    parser.add_argument("--results", default=os.path.join(HERE, "results.json"),
                        help="JSON file the run is appended to (default bench/results.json)")
    parser.add_argument("--work",
                        help="folder for generated inputs (default: bench/work, or a temporary one in --smoke)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, the same for every figure")
    parser.add_argument("--only", choices=("ffmpeg", "driver", "rescore", "decode", "decode-scaling", "host",
                                                 "pack", "index"),
                        help="run one benchmark and print its figures (not appended to --results): decode, the "
                             "per-format decode stage over the codec and the GPU-node projection (no Ray); "
                             "decode-scaling, the stage on every core through Ray; rescore reuses --work's inputs "
                             "from a full run; pack, the sink's parts packed (file count, seconds per 100 000 rows); "
                             "index, the nearest-neighbour candidates measured on clustered vectors")
    parser.add_argument("--index-rows", type=int, default=100_000,
                        help="--only index: rows of clustered vectors the candidates index (default 100000)")
    parser.add_argument("--index-no-hnsw", action="store_true", help="--only index: leave HNSW out (slow to build)")
    parser.add_argument("--index-candidates", metavar="A,B", help="--only index: these candidates alone (as "
                        "printed: faiss_ivf_flat, faiss_ivf_sq_fp16, faiss_ivf_pq_refine, lance_ivf_pq, "
                        "faiss_hnsw_flat)")
    parser.add_argument("--table", action="store_true", help="print the table of the last run in --results and stop")
    return parser.parse_args(argv)


def run_only(which: str, sizes: Sizes, work: str, results_path: str, args: argparse.Namespace) -> int:
    """``--only``: one benchmark's figures, printed and not recorded (the GPU rate of the decode projection is
    read from ``results_path``); the exit status."""
    if which == "decode":
        figures = bench_codec(work, sizes)
        print("\n".join(f"{k:34s} {v:.3f}" for k, v in figures.items() if isinstance(v, float)))
        print("\n" + sizing_text(figures, gpu_rate(history_of(results_path))))
        return 0
    if which == "index":
        chosen = set(args.index_candidates.split(",")) if args.index_candidates else None
        print(index_table(bench_index(args.index_rows, with_hnsw=not args.index_no_hnsw,
                                      only=lambda name: chosen is None or name in chosen)))
        return 0
    if which == "host":      # at 527 classes: a full run's cache in --work, else random vectors of that size
        cache_uri = os.path.join(work, "cache.npz")
        figures = bench_host(DriftCache.load(cache_uri) if os.path.exists(cache_uri) else random_cache(),
                             5)
    elif which == "pack":     # 100 000 rows (2 000 in --smoke) through the real sink, then packed
        figures = bench_pack(random_cache(), rows=2_000 if sizes is SMOKE else 100_000)
    elif which in ("rescore", "decode-scaling"):
        figures = on_ray_only(which, work, sizes)
    else:
        figures = (bench_ffmpeg_vs_sndfile(sizes.codec_seconds, sizes.codec_repeats) if which == "ffmpeg"
                   else bench_driver(sizes.driver_chunks))
    print("\n".join(f"{k:34s} {v:.3f}" if isinstance(v, float) else f"{k:34s} {v}" for k, v in figures.items()))
    return 0


def on_ray_only(which: str, work: str, sizes: Sizes) -> dict:
    """The re-scoring or decode-scaling figures alone (re-scoring: on the cache a full run left in ``work``)."""
    import ray

    from das_core.scoring.cache import DriftCache

    cache_uri = os.path.join(work, "cache.npz")
    if which == "rescore" and not os.path.exists(cache_uri):
        raise SystemExit(f"{cache_uri} is missing: run `python -m bench.run` once first")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    try:
        if which == "decode-scaling":
            return bench_decode(work, sizes)
        return bench_rescore(DriftCache.load(cache_uri), cache_uri, work, sizes)
    finally:
        ray.shutdown()


def bench_on_ray(ckpt: str, cache, cache_uri: str, paths: list[str], work: str, sizes: Sizes, threads: int,
                 results: dict) -> None:
    """The figures measured on a local Ray instance: pipeline, decode, rescore and search."""
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    results.update(bench_pipeline(ckpt, cache_uri, paths, work, results["encoder_best_batch_size"], threads))
    results["pipeline_over_encoder"] = results["pipeline_clips_per_s"] / results["encoder_clips_per_s"]
    log(f"pipeline: {results['pipeline_clips_per_s']:.2f} clips/s "
        f"({results['pipeline_over_encoder']:.2f} of the encoder alone)")
    results.update(bench_codec(work, sizes))
    results.update(bench_decode(work, sizes))
    log(f"decode: {results['decode_per_core']:.1f} windows/s per core, scaling {results['decode_scaling']:.2f}")
    results.update(bench_rescore(cache, cache_uri, work, sizes))
    log(f"rescore: {results['rescore_rows_per_s']:.0f} rows/s, {results['rescore_over_read']:.2f} of a plain read "
        f"({len(cache.labels)} classes)")
    small, small_uri = cache_subset(cache, work, 10)
    small_result = bench_rescore(small, small_uri, work, sizes)
    for key in ("rescore_over_read", "rescore_rows_per_s", "rescore_part_seconds"):
        results[f"{key}_10_classes"] = small_result[key]
    log(f"rescore, 10 classes: {small_result['rescore_over_read']:.2f} of a plain read")
    log("one part (s): " + ", ".join(f"{k} {v:.4f}" for k, v in results["rescore_part_seconds"].items()))
    results.update(bench_search_figures(cache, work, sizes))
    ray.shutdown()


def bench_all(work: str, sizes: Sizes, threads: int) -> dict:
    """Every figure of a run, measured on inputs generated in ``work`` (a checkpoint with random weights, the
    drift cache, clips)."""
    from das_core.clap.random_weights import write_random_checkpoint

    ckpt = os.path.join(work, "HTSAT-tiny-transformer-random.pt")
    if not os.path.exists(ckpt):
        write_random_checkpoint(ckpt)
    results: dict = {}
    log(f"machine: {machine()}")
    labels = [f"class_{i:03d}" for i in range(sizes.cache_classes)]
    phrases = [f"noise kind {j}" for j in range(sizes.cache_phrases)]
    cache, results["cache_build_s"] = make_cache(ckpt, labels, phrases)
    results["cache_prompts"] = cache.n_text_encodings
    log(f"cache build: {cache.n_text_encodings} prompts in {results['cache_build_s']:.1f} s")
    cache_uri = os.path.join(work, "cache.npz")
    cache.save(cache_uri)
    results.update(bench_encoder(ckpt, sizes, threads))
    results.update(bench_hf_encoder(ckpt, work, sizes, threads, results["encoder_best_batch_size"]))
    paths = ensure_clips(os.path.join(work, f"clips-{sizes.clips}"), sizes.clips, 10.0)
    bench_on_ray(ckpt, cache, cache_uri, paths, work, sizes, threads, results)
    results.update(bench_naive(ckpt, paths, threads))
    results["pipeline_over_naive"] = results["pipeline_clips_per_s"] / results["naive_clips_per_s"]
    log(f"naive script: {results['naive_clips_per_s']:.2f} clips/s")
    results.update(bench_scoring(sizes))
    log(f"DAS scoring overhead over plain cosine: {results['das_overhead']:+.4f}")
    results.update(bench_changes(ckpt, sizes))
    changes = ("text_prefix_speedup", "topk_speedup", "label_columns_vectorised_speedup")
    log("speed-ups: " + ", ".join(f"{k} {results[k]:.1f}x" for k in changes))
    results.update(bench_rss(ckpt, cache_uri, work, sizes, threads))
    results.update(bench_archive(ckpt, cache, cache_uri, work, sizes))
    results.update(bench_gpu(ckpt))
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.run``: run the benchmarks, append the run to ``--results`` and print the table (or
    ``--table``, ``--only``); the exit status."""
    args = parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.table:
        history = history_of(args.results)
        last = [r for r in history if "results" in r][-1]
        print(f"run of {last['when']} ({last['duration_s']:.0f} s):\n" + table(last["results"]))
        print("\n" + sizing_text(last["results"], gpu_rate(history)))
        return 0
    work = args.work or (tempfile.mkdtemp(prefix="das-bench-") if args.smoke or args.only in ("decode", "index")
                         else os.path.join(HERE, "work"))
    if args.only:
        try:
            return run_only(args.only, sizes, work, args.results, args)
        finally:
            if not args.work and args.only in ("decode", "index"):
                shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    os.environ.setdefault("DAS_CACHE_DIR", os.path.join(work, "das-cache"))
    started = time.perf_counter()
    results = bench_all(work, sizes, args.threads)
    record = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "smoke": args.smoke,
              "machine": machine(), "duration_s": round(time.perf_counter() - started, 1), "results": results}
    history = history_of(args.results)
    history.append(record)
    with open(args.results, "w") as f:
        json.dump(history, f, indent=2)
    print("\n" + table(results))
    print("\n" + sizing_text(results, gpu_rate(history)))
    print(f"\n{'smoke run' if args.smoke else 'run'} took {record['duration_s']:.0f} s; appended to {args.results}")
    if args.smoke:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
