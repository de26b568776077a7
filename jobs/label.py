"""``das label``: label an audio archive with LAION-CLAP + DAS on Ray Data; Parquet out, nothing lost."""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import sys
import time

from das_core.inputs import DEFAULT_EXTENSIONS, InputError, normalise_extensions
from das_core.labelrun import RESUME_KEYS, LabelConfig, LabelPlan, RunRefused  # noqa: F401 - re-exported
from jobs.common import (
    JobFailed,
    UsageError,
    add_common_options,
    check_output_folder,
    init_ray,
    job_main,
    log,
    worker_env,
)


def build_parser(prog: str = "das label") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=(
        "Label every audio file under INPUT with zero-shot LAION-CLAP + Drift-Augmented Scoring. Files are "
        "cut into 10 s windows; each window and each file gets a DAS label and the plain zero-shot label, "
        "and window embeddings are stored for re-scoring. Writes OUT/segments/, OUT/files/ and "
        "OUT/_manifest.json. Runs on the Ray cluster at RAY_ADDRESS, or a local one."))
    io_ = p.add_argument_group("input and output")
    io_.add_argument("--input", required=True, metavar="URI",
                     help="local folder, s3://bucket/prefix (listed recursively), a single audio file, or a "
                          "manifest (.csv/.parquet) with a 'path' column and an optional unique 'id' column")
    io_.add_argument("--cache", required=True, metavar="URI", help="drift cache made by `das build-cache`")
    io_.add_argument("--checkpoint", required=True, metavar="CKPT",
                     help="CLAP checkpoint the cache was built with: LAION .pt (path, s3:// URI, published "
                          "name) or Hugging Face ClapModel folder (path, s3:// prefix, hub id)")
    io_.add_argument("--out", required=True, metavar="URI", help="output folder or s3:// prefix")
    io_.add_argument("--extensions", default=",".join(e.lstrip(".") for e in DEFAULT_EXTENSIONS),
                     help="audio file extensions to pick up when listing a folder or prefix")
    io_.add_argument("--resume", action="store_true",
                     help="continue an interrupted run into OUT: only files without a committed result are done")
    io_.add_argument("--overwrite", action="store_true", help="delete what OUT holds and start again")
    io_.add_argument("--embedding-dtype", choices=("float16", "float32"), default="float16",
                     help="storage type of embeddings; scores are computed from the stored values")
    io_.add_argument("--top-k", type=int, default=5, help="classes kept per window and per file")
    io_.add_argument("--probabilities", action="store_true",
                     help="add top_k_probs: softmax over all classes of the checkpoint's logit scale x DAS scores")
    io_.add_argument("--audio-column", metavar="NAME",
                     help="Parquet shards: the column of audio bytes (default: the first struct of bytes/path, "
                          "as Hugging Face datasets writes, or the first binary column)")
    io_.add_argument("--id-column", metavar="NAME", help="Parquet shards: the column of ids (default <shard>#<row>)")
    io_.add_argument("--keep-metadata", action="store_true",
                     help="tar shards: carry each sample's .json into the files/ column 'metadata'")
    io_.add_argument("--dry-run", action="store_true",
                     help="plan and print what would be done (inputs, units, skipped, what --resume would skip); "
                          "starts no Ray and loads no model")
    noise = p.add_argument_group("noise (evaluation and stress tests)")
    noise.add_argument("--snr-db", type=float, metavar="X", help="mix noise into every window at X dB SNR")
    noise.add_argument("--noise", metavar="URI", help="folder or s3:// prefix of noise recordings (with --snr-db)")
    noise.add_argument("--seed", type=int, default=0, help="noise choice is seeded by (seed, file, window, SNR)")
    comp = p.add_argument_group("compute")
    comp.add_argument("--num-gpus", type=float, default=0.0,
                      help="GPUs to use in all; 0 encodes on CPU. Each actor takes one GPU unless --actors is set")
    comp.add_argument("--actors", type=int, help="encoder actors (default: one per GPU, or 1 on CPU)")
    comp.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved by each encoder actor")
    comp.add_argument("--torch-threads", type=int, help="intra-op threads per actor (default: torch's choice)")
    comp.add_argument("--batch-size", type=int, default=16, help="rows per encoder call")
    comp.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                      help="autocast precision of the encoder")
    comp.add_argument("--files-per-unit", type=int, default=64,
                      help="files per work unit (the unit of scheduling, writing and resume)")
    comp.add_argument("--unit-mib", type=float, default=512, help="input bytes per work unit, where sizes are known")
    comp.add_argument("--chunk-windows", type=int,
                      help="windows per chunk: what one block, actor call or write holds at most (default: whole "
                           "encoder batches, at least 32 windows, about 30 MiB of audio)")
    comp.add_argument("--tokenizer-dir", metavar="DIR", help="roberta-base tokenizer files (RoBERTa checkpoints)")
    p.add_argument("--no-report", action="store_true",
                   help="do not write OUT/report/ (report.md and figures, see `das report`) at the end")
    p.add_argument("--max-error-fraction", type=float, default=0.1,
                   help="fail (exit 1) if more than this share of files cannot be decoded; their rows are kept")
    add_common_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> LabelConfig:
    try:
        extensions = normalise_extensions(args.extensions)
    except InputError as exc:
        raise UsageError(f"--extensions {args.extensions!r}: {exc}") from None
    return LabelConfig(
        input=args.input, cache=args.cache, checkpoint=args.checkpoint, out=args.out, extensions=extensions,
        snr_db=args.snr_db, noise=args.noise, seed=args.seed, num_gpus=args.num_gpus, actors=args.actors,
        cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size, top_k=args.top_k,
        embedding_dtype=args.embedding_dtype, precision=args.precision, resume=args.resume,
        overwrite=args.overwrite, dry_run=args.dry_run, max_error_fraction=args.max_error_fraction,
        probabilities=args.probabilities, audio_column=args.audio_column, id_column=args.id_column,
        keep_metadata=args.keep_metadata,
        files_per_unit=args.files_per_unit, unit_bytes=int(args.unit_mib * 2**20), chunk_windows=args.chunk_windows,
        torch_threads=args.torch_threads, tokenizer_dir=args.tokenizer_dir, report=not args.no_report)


def plan(c: LabelConfig) -> LabelPlan:
    from das_core.labelrun import plan_run

    check_output_folder(c.out)
    try:
        return plan_run(c)
    except RunRefused as exc:
        raise UsageError(str(exc)) from None


def run(c: LabelConfig) -> dict:
    """Label ``c.input`` into ``c.out``; returns the final manifest (the plan's summary with ``dry_run``)."""
    from das_core.labelrun import RunCounts, new_run_entry, print_dry_run, run_manifest, summary

    p = plan(c)
    if c.dry_run:
        return print_dry_run(p)
    store = p.store
    if c.overwrite and store.has_output():
        log.info("--overwrite: deleting previous results in %s", c.out)
        store.remove_all()
    if p.checkpoint_info.get("weights") == "random":
        log.warning("checkpoint %s has RANDOM weights (a das test/demo checkpoint): labels are meaningless",
                    c.checkpoint)
    if c.resume and p.previous and not len(p.todo):
        print(f"das label: nothing to do: all {len(p.units)} unit(s) of {c.out} are committed "
              f"(status {p.previous.get('status')})", flush=True)
        return p.previous
    runs = list((p.previous or {}).get("runs", [])) if c.resume else []
    this_run = {**new_run_entry(p), "device": "cuda" if c.num_gpus > 0 else "cpu", "torch_threads": c.torch_threads}
    if c.resume and p.previous:
        removed = store.remove_units(set(p.todo.column("unit").to_pylist()), store.listing())
        log.info("resuming: %d of %d unit(s) committed, %d to do (%d file(s), %d of them new in the input); "
                 "removed %d part(s) left by unfinished units", len(p.units) - len(p.todo), len(p.units),
                 len(p.todo), p.todo_files, p.added_files, removed)
    if p.write_work_manifest:
        from das_core.units import write_work_manifest

        write_work_manifest(c.out, p.units)
    store.write_manifest(run_manifest(p, "running", p.prior_counts, runs + [this_run]))
    counts = RunCounts()
    t0 = time.monotonic()
    try:
        aborted, first_output = _label(p, counts, this_run, runs, t0)
    except Exception as exc:
        failure = write_failure(exc)
        if failure is None:
            raise
        # the part being written was a hidden temporary file, now removed: what is visible is committed
        raise JobFailed(f"cannot write {failure.filename or c.out} ({failure.strerror or failure}); the units "
                        f"committed so far are kept: free space or fix the permissions of {c.out}, then rerun "
                        "with --resume") from None
    _remove_temporaries(store)
    wall = time.monotonic() - t0
    total = counts.total(p.prior_counts)
    this_run.update({"finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                     "wall_time_s": round(wall, 3), "files_done": counts.files, "segments_done": counts.segments,
                     "segments_per_s": round(counts.segments / wall, 4) if wall > 0 else None,
                     "nodes": len(counts.nodes)})
    if first_output is not None and wall > first_output[0] and counts.windows > first_output[1]:
        this_run["startup_s"] = round(first_output[0], 3)
        this_run["steady_segments_per_s"] = round((counts.windows - first_output[1]) / (wall - first_output[0]), 4)
    errors_allowed = c.max_error_fraction * p.n_inputs
    failed = aborted or (total["files"] and total["error"] > errors_allowed and
                         f"{total['error']} of {total['files']} files failed to decode "
                         f"(more than --max-error-fraction {c.max_error_fraction:g})")
    manifest = run_manifest(p, "failed" if failed else "complete", total, runs + [this_run])
    store.write_manifest(manifest)
    print(summary(manifest, c.out, wall, counts.segments, p.n_inputs, this_run.get("steady_segments_per_s")),
          flush=True)
    if c.report:
        from jobs.report import report_after_job

        report_after_job(c.out)
    if failed:
        raise JobFailed(f"{failed}. Rows for every processed file are in {c.out}/files/ (see the 'error' column)")
    return manifest


def _remove_temporaries(store) -> None:
    """A worker killed while writing a part leaves its hidden temporary file: the run is over, remove them."""
    from das_core import storage
    from das_core.results import FILES_DIR, PIECES_DIR, SEGMENTS_DIR

    removed = sum(storage.remove_temporaries(store.path(sub)) for sub in (SEGMENTS_DIR, FILES_DIR, PIECES_DIR))
    if removed:
        log.info("removed %d temporary file(s) left by workers that died while writing", removed)


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def write_failure(exc: BaseException) -> OSError | None:
    """The disk-full or permission error behind ``exc``, which a worker's write may have raised (Ray wraps it)."""
    for _ in range(8):
        cause = getattr(exc, "cause", None)       # a Ray task error: the worker's own exception
        if isinstance(cause, BaseException) and cause is not exc:
            exc = cause
            continue
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
        if exc is None:
            return None
    return None


def _label(p: LabelPlan, counts, this_run: dict, runs: list[dict], t0: float) -> tuple[str | None, tuple | None]:
    """Run the pipeline over the units to do; the driver only counts and commits whole units."""
    import ray

    from das_core.labelrun import run_manifest
    from das_core.units import DecodeSettings, units_per_row_group, work_manifest_uri
    from das_core.writer import WriteSettings
    from jobs.pipeline import EncodeSettings, Finisher, UnitTracker, run_stages, with_test_env

    c = p.config
    if not len(p.todo):
        return None, None
    actors = c.actors or (max(1, int(c.num_gpus)) if c.num_gpus > 0 else 1)
    init_ray(gpus=c.num_gpus, cpus=actors * c.cpus_per_actor)     # refused now rather than an endless wait
    gpus_per_actor = c.num_gpus / actors if c.num_gpus > 0 else 0.0
    decode = DecodeSettings(chunk_windows=c.windows_per_chunk, snr_db=c.snr_db, seed=c.seed,
                            noise_uris=p.noise_uris, extensions=c.extensions, audio_column=c.audio_column,
                            id_column=c.id_column, keep_metadata=c.keep_metadata)
    encode = EncodeSettings(checkpoint=c.checkpoint, num_gpus_per_actor=gpus_per_actor,
                            cpus_per_actor=c.cpus_per_actor, precision=c.precision, torch_threads=c.torch_threads,
                            tokenizer_dir=c.tokenizer_dir)
    write = WriteSettings(top_k=c.top_k, embedding_dtype=c.embedding_dtype, snr_db=c.snr_db,
                          seed=c.seed if c.snr_db is not None else None,
                          logit_scale=p.checkpoint_info.get("logit_scale") if c.probabilities else None)
    log.info("labelling %d file(s) in %d unit(s) with %d encoder actor(s) (%s), %d class(es), lam=%g",
             p.todo_files, len(p.todo), actors, f"{gpus_per_actor:g} GPU each" if gpus_per_actor else "CPU",
             len(p.cache.labels), p.cache.lam)
    keep = None
    if len(p.todo) != len(p.units):
        per_group = units_per_row_group(len(p.units))
        index = {u: i for i, u in enumerate(p.units.column("unit").to_pylist())}
        keep = {}
        for u in p.todo.column("unit").to_pylist():
            keep.setdefault(index[u] // per_group, []).append(u)
    env = with_test_env(worker_env())
    cache_box = [ray.put(p.cache)]
    tracker, finisher = UnitTracker(), Finisher(c.out, cache_box, write, env)
    errors_allowed = c.max_error_fraction * p.n_inputs
    last_progress = last_manifest = time.monotonic()
    first_output, aborted = None, None
    for stats in run_stages(work_manifest_uri(c.out), keep, c.out, decode, encode, write, cache_box=cache_box,
                            actors=actors, batch_size=c.batch_size, env=env):
        if tracker.is_repeat(stats):
            continue                  # a retried task's chunk, already counted (its part was overwritten)
        counts.add(stats)
        now = time.monotonic()
        if first_output is None:
            # start-up (Ray Data planning, actors importing and loading the model) ends with the first output
            first_output = (now - t0, stats["windows"])
        whole = tracker.add(stats)
        if whole:
            finisher.add(whole)
        if now - last_progress >= c.progress_every_s:
            last_progress = now
            log.info("progress: %d/%d files done, %d unit(s) committed, %d segments, %d errors, %.2f segments/s",
                     counts.files, p.todo_files, finisher.committed, counts.segments, counts.error,
                     counts.windows / max(now - t0, 1e-9))
        if now - last_manifest >= c.manifest_every_s:
            last_manifest = now
            p.store.write_manifest(run_manifest(p, "running", counts.total(p.prior_counts), runs + [this_run]))
        if p.prior_counts["error"] + counts.error > errors_allowed:
            aborted = (f"more than {c.max_error_fraction:.0%} of {p.n_inputs} files failed to decode "
                       f"({p.prior_counts['error'] + counts.error} so far); stopping early")
            break
    finisher.drain()
    if aborted is None and tracker.open_units:
        raise RuntimeError(f"pipeline ended with {tracker.open_units} unit(s) not whole")
    return aborted, first_output


def main(argv: list[str] | None = None, prog: str = "das label") -> int:
    return job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.label"))
