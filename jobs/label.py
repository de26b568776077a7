"""``das label``: label an audio archive with LAION-CLAP + DAS on Ray Data; Parquet out, nothing lost."""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import time
from dataclasses import dataclass

from das_core import __version__
from das_core.inputs import DEFAULT_EXTENSIONS, InputError, InputFile, list_inputs, normalise_extensions
from jobs.common import (
    JobFailed,
    UsageError,
    add_common_options,
    init_ray,
    job_main,
    log,
    worker_env,
)

# Settings that must not change between a run and its --resume.
# batch_size and precision fix the encoder's floating-point path, so they are part of "exactly the same rows".
RESUME_KEYS = ("input", "cache_fingerprint", "checkpoint_fingerprint", "snr_db", "seed", "noise", "top_k",
               "embedding_dtype", "batch_size", "precision")


@dataclass
class LabelConfig:
    input: str
    cache: str
    checkpoint: str
    out: str
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    snr_db: float | None = None
    noise: str | None = None
    seed: int = 0
    num_gpus: float = 0.0
    actors: int | None = None
    cpus_per_actor: float = 1.0
    batch_size: int = 16
    top_k: int = 5
    embedding_dtype: str = "float16"
    precision: str = "fp32"
    resume: bool = False
    overwrite: bool = False
    max_error_fraction: float = 0.1
    files_per_task: int = 4
    torch_threads: int | None = None
    tokenizer_dir: str | None = None
    commit_every_files: int = 500
    commit_every_s: float = 60.0
    progress_every_s: float = 15.0


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
    comp.add_argument("--files-per-task", type=int, default=4, help="files per decode task")
    comp.add_argument("--tokenizer-dir", metavar="DIR", help="roberta-base tokenizer files (RoBERTa checkpoints)")
    p.add_argument("--max-error-fraction", type=float, default=0.1,
                   help="fail (exit 1) if more than this share of files cannot be decoded; their rows are kept")
    add_common_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> LabelConfig:
    return LabelConfig(
        input=args.input, cache=args.cache, checkpoint=args.checkpoint, out=args.out,
        extensions=normalise_extensions(args.extensions), snr_db=args.snr_db, noise=args.noise, seed=args.seed,
        num_gpus=args.num_gpus, actors=args.actors, cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size,
        top_k=args.top_k, embedding_dtype=args.embedding_dtype, precision=args.precision, resume=args.resume,
        overwrite=args.overwrite, max_error_fraction=args.max_error_fraction, files_per_task=args.files_per_task,
        torch_threads=args.torch_threads, tokenizer_dir=args.tokenizer_dir)


def _check_arguments(c: LabelConfig) -> None:
    if c.resume and c.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if (c.snr_db is None) != (c.noise is None):
        raise UsageError("--snr-db and --noise go together: give both to mix noise, or neither")
    if c.snr_db is not None and not (math.isfinite(c.snr_db) and -60 <= c.snr_db <= 120):
        raise UsageError(f"--snr-db {c.snr_db} is outside -60..120 dB")
    if c.num_gpus < 0 or (c.actors is not None and c.actors < 1):
        raise UsageError("--num-gpus must be >= 0 and --actors >= 1")
    for name in ("batch_size", "top_k", "files_per_task"):
        if getattr(c, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0.0 <= c.max_error_fraction <= 1.0:
        raise UsageError("--max-error-fraction must be between 0 and 1")


@dataclass
class Plan:
    config: LabelConfig
    store: object
    cache: object
    checkpoint_id: str
    checkpoint_info: dict
    inputs: list[InputFile]
    todo: list[InputFile]
    noise_uris: tuple[str, ...]
    previous: dict | None


def plan(c: LabelConfig) -> Plan:
    """Everything that can be refused is refused here, before any decoding or encoding."""
    from das_core import checkpoint as ckpt
    from das_core.cache import DriftCache
    from das_core.results import MANIFEST, OutputStore

    _check_arguments(c)
    store = OutputStore(c.out)
    previous = store.read_manifest()
    if store.has_output() and not (c.resume or c.overwrite):
        raise UsageError(f"output {c.out} already holds results; pass --resume to continue that run or "
                         f"--overwrite to replace it")
    cache = DriftCache.load(c.cache)
    local = ckpt.resolve(c.checkpoint)
    checkpoint_id = ckpt.fingerprint(local)
    cache.check_encoder(checkpoint_id, c.checkpoint)
    info = ckpt.describe(local)
    try:
        inputs = list_inputs(c.input, c.extensions)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    noise_uris: tuple[str, ...] = ()
    if c.noise:
        try:
            noise_uris = tuple(f.path for f in list_inputs(c.noise))
        except InputError as exc:
            raise UsageError(f"--noise: {exc}") from None
    todo = inputs
    if c.resume and store.has_output():
        if previous is None:
            raise UsageError(f"output {c.out} has results but no {MANIFEST}: it was not written by "
                             f"das label; use --overwrite or another --out")
        settings = _settings(c, cache, checkpoint_id)
        changed = [k for k in RESUME_KEYS if previous.get("settings", {}).get(k) != settings[k]]
        if changed:
            raise UsageError("cannot --resume with different settings (" + ", ".join(
                f"{k}: was {previous['settings'].get(k)!r}, now {settings[k]!r}" for k in changed)
                + "); use --overwrite or another --out")
        removed = store.remove_uncommitted()
        if removed:
            log.info("removed %d uncommitted part(s) of the interrupted run", len(removed))
        done = store.committed_ids()
        todo = [f for f in inputs if f.file_id not in done]
        log.info("resuming: %d of %d files already committed, %d to do", len(inputs) - len(todo), len(inputs),
                 len(todo))
    return Plan(c, store, cache, checkpoint_id, info, inputs, todo, noise_uris, previous)


def _settings(c: LabelConfig, cache, checkpoint_id: str) -> dict:
    return {"input": c.input, "cache_fingerprint": cache.fingerprint, "checkpoint_fingerprint": checkpoint_id,
            "snr_db": c.snr_db, "seed": c.seed, "noise": c.noise, "top_k": c.top_k,
            "embedding_dtype": c.embedding_dtype, "batch_size": c.batch_size, "precision": c.precision}


def _manifest(p: Plan, status: str, counts: dict, runs: list[dict]) -> dict:
    c, cache = p.config, p.cache
    from das_core.audio import MIN_TAIL_SECONDS, WINDOW_SECONDS

    return {
        "job": "label",
        "status": status,
        "das_version": __version__,
        "settings": _settings(c, cache, p.checkpoint_id),
        "cache": {"uri": c.cache, "fingerprint": cache.fingerprint, "n_labels": len(cache.labels),
                  "lam": cache.lam, "clean_template": cache.clean_template, "noisy_template": cache.noisy_template,
                  "noise_phrases": list(cache.noise_phrases), "labels": list(cache.labels)},
        "checkpoint": {"uri": c.checkpoint, "fingerprint": p.checkpoint_id, **p.checkpoint_info},
        "windows": {"window_s": WINDOW_SECONDS, "hop_s": WINDOW_SECONDS, "min_tail_s": MIN_TAIL_SECONDS,
                    "file_pooling": "max over windows"},
        "counts": counts,
        "runs": runs,
    }


def run(c: LabelConfig) -> dict:
    """Label ``c.input`` into ``c.out``; returns the final manifest."""
    from das_core.results import Assembler, OutputStore, build_tables, count_outcomes
    from jobs.pipeline import DecodeSettings, EncodeSettings, run_stages

    p = plan(c)
    store: OutputStore = p.store
    if c.overwrite and store.has_output():
        log.info("--overwrite: deleting previous results in %s", c.out)
        store.remove_all()
    if p.checkpoint_info.get("weights") == "random":
        log.warning("checkpoint %s has RANDOM weights (a das test/demo checkpoint): labels are meaningless",
                    c.checkpoint)
    runs = list((p.previous or {}).get("runs", [])) if c.resume else []
    started = dt.datetime.now(dt.UTC)
    this_run = {"started": started.isoformat(timespec="seconds"), "files_to_do": len(p.todo)}
    store.write_manifest(_manifest(p, "running", count_outcomes(store.read_files()), runs + [this_run]))

    t0 = time.monotonic()
    n_total = len(p.inputs)
    errors_allowed = c.max_error_fraction * n_total
    prior = count_outcomes(store.read_files())
    errors = prior["error"]
    done_files, done_segments, last_commit, last_progress = 0, 0, time.monotonic(), time.monotonic()
    aborted = None
    first_output: tuple[float, int] | None = None
    if p.todo:
        init_ray()
        gpus_per_actor = 0.0
        actors = c.actors or (max(1, int(c.num_gpus)) if c.num_gpus > 0 else 1)
        if c.num_gpus > 0:
            gpus_per_actor = c.num_gpus / actors
        decode = DecodeSettings(snr_db=c.snr_db, seed=c.seed, noise_uris=p.noise_uris)
        encode = EncodeSettings(checkpoint=c.checkpoint, num_gpus_per_actor=gpus_per_actor,
                                cpus_per_actor=c.cpus_per_actor, precision=c.precision, top_k=c.top_k,
                                embedding_dtype=c.embedding_dtype, torch_threads=c.torch_threads,
                                tokenizer_dir=c.tokenizer_dir)
        log.info("labelling %d file(s) with %d encoder actor(s) (%s), %d class(es), lam=%g",
                 len(p.todo), actors, f"{gpus_per_actor:g} GPU each" if gpus_per_actor else "CPU",
                 len(p.cache.labels), p.cache.lam)
        assembler = Assembler()

        def commit(final: bool = False) -> None:
            """Commit whole files in groups of ``commit_every_files`` (the remainder too when ``final``)."""
            nonlocal done_files, done_segments, errors, last_commit
            while assembler.n_complete >= c.commit_every_files or (final and assembler.n_complete):
                outcomes, windows = assembler.take_complete(c.commit_every_files)
                segments, files = build_tables(outcomes, windows, p.cache, c.top_k, c.embedding_dtype)
                store.commit(segments, files)
                done_files += len(files)
                done_segments += len(segments)
                errors += sum(1 for o in outcomes if o.status != "ok")
            last_commit = time.monotonic()

        for batch in run_stages(p.todo, decode, encode, cache=p.cache, actors=actors, batch_size=c.batch_size,
                                files_per_task=c.files_per_task, env=worker_env()):
            assembler.add(batch)
            now = time.monotonic()
            if first_output is None:
                # startup (Ray Data planning, actors importing and loading the model) ends with the first output
                first_output = (now - t0, sum(1 for k in batch.column("kind").to_pylist() if k == "segment"))
            if assembler.n_complete >= c.commit_every_files:
                commit()
            elif assembler.n_complete and now - last_commit >= c.commit_every_s:
                commit(final=True)
            if now - last_progress >= c.progress_every_s:
                last_progress = now
                log.info("progress: %d/%d files committed, %d segments, %d errors, %.2f segments/s",
                         done_files, len(p.todo), done_segments, errors - prior["error"],
                         done_segments / max(now - t0, 1e-9))
            pending_errors = sum(1 for fid in assembler.complete
                                 if assembler.outcomes[fid].status != "ok")
            if errors + pending_errors > errors_allowed:
                aborted = (f"more than {c.max_error_fraction:.0%} of {n_total} files failed to decode "
                           f"({errors + pending_errors} so far); stopping early")
                break
        commit(final=True)
        if aborted is None and assembler.unfinished():
            raise RuntimeError(f"pipeline ended with unfinished files: {assembler.unfinished()[:5]}")

    wall = time.monotonic() - t0
    counts = count_outcomes(store.read_files())
    this_run.update({"finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                     "wall_time_s": round(wall, 3), "files_done": done_files, "segments_done": done_segments,
                     "segments_per_s": round(done_segments / wall, 4) if wall > 0 else None})
    if first_output is not None and wall > first_output[0] and done_segments > first_output[1]:
        this_run["startup_s"] = round(first_output[0], 3)
        this_run["steady_segments_per_s"] = round((done_segments - first_output[1]) / (wall - first_output[0]), 4)
    failed = aborted or (counts["files"] and counts["error"] > errors_allowed and
                         f"{counts['error']} of {counts['files']} files failed to decode "
                         f"(more than --max-error-fraction {c.max_error_fraction:g})")
    status = "failed" if failed else "complete"
    manifest = _manifest(p, status, counts, runs + [this_run])
    store.write_manifest(manifest)
    _print_summary(manifest, c.out, wall, done_segments, len(p.inputs), this_run.get("steady_segments_per_s"))
    if failed:
        raise JobFailed(f"{failed}. Rows for every processed file are in {c.out}/files/ (see the 'error' column)")
    return manifest


def _print_summary(manifest: dict, out: str, wall: float, segments_now: int, n_inputs: int,
                   steady: float | None) -> None:
    counts = manifest["counts"]
    errs = ", ".join(f"{k} {v}" for k, v in counts["errors_by_kind"].items()) or "none"
    missing = n_inputs - counts["files"]
    print(f"das label: {manifest['status']} in {wall:.1f} s\n"
          f"  files in:  {n_inputs} = {counts['ok']} ok + {counts['error']} error"
          + (f" + {missing} not done" if missing else "") + "\n"
          f"  segments:  {counts['segments']} ({segments_now} this run, "
          f"{segments_now / wall if wall > 0 else 0:.2f} clips/s"
          + (f"; {steady:.2f} clips/s after start-up" if steady else "") + ")\n"
          f"  errors:    {errs}\n"
          f"  weights:   {manifest['checkpoint'].get('weights')}"
          + ("  (RANDOM: labels are meaningless)" if manifest["checkpoint"].get("weights") == "random" else "")
          + f"\n  output:    {out} (segments/, files/, _manifest.json)", flush=True)


def main(argv: list[str] | None = None, prog: str = "das label") -> int:
    return job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.label"))
