"""``das rescore``: re-label the embeddings a ``das label`` run stored, with a drift cache; no audio, no model.

Input (``--embeddings``) is the output of ``das label``: its committed units
(``files/part-<unit>-end.parquet`` exists; see ``das_core.results``) and
``_manifest.json``. Units still being written, or left by an interrupted run,
are ignored.
Output (``--out``) holds one folder per run, so that nightly runs sit side by
side::

    OUT/run_id=<ID>/segments/part-<unit>-all.parquet   das label's schema; the embedding column only with
                                                       --copy-embeddings (readers follow the manifest's
                                                       "embeddings" to the label output otherwise)
    OUT/run_id=<ID>/files/part-<unit>-end.parquet      one row per input file, error rows included (commit mark)
    OUT/run_id=<ID>/_manifest.json                     settings, cache, counts, watermark

Each committed label unit is one Ray Data row; its task reads the unit's
parts with pyarrow, scores every window from its stored embedding (cast to
float32 exactly as ``das label`` did, so the same cache reproduces its
scores), pools files by the maximum over all their windows (a long file's
pieces included) and writes the unit's two output parts, files last. Names
derive from the unit, so a retried task overwrites instead of duplicating.

Watermark (``--since-last-run``). Label units never change once committed
(``--resume`` only adds units), so "rows added since the last run" are the
committed label units that no earlier run has scored. Every run records in
its manifest the label units it and its predecessors covered, with the label
output's identity: its checkpoint fingerprint and the start times of its
runs. The previous run is the rescore run of the same ``--embeddings`` under
OUT with status ``complete`` that finished last. If the label output's run
history no longer extends the recorded one (it was replaced with
``--overwrite``), the watermark is void and everything is scored again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from das_core import __version__, storage
from das_core.cache import CacheMismatchError, DriftCache
from das_core.results import (
    EMBEDDING_TYPES,
    END_TAG,
    FILES_DIR,
    FORMAT_VERSION,
    MANIFEST,
    OK,
    SEGMENTS_DIR,
    FileOutcome,
    OutputStore,
    StoreListing,
    build_tables,
    count_outcomes,
    embeddings_to_numpy,
    labelled_columns,
    part_name,
    segments_schema,
)
from das_core.scoring import label_windows, window_scores
from jobs.common import (
    JobFailed,
    UsageError,
    add_common_options,
    init_ray,
    job_main,
    log,
    worker_env,
)

RUN_PREFIX = "run_id="
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_TOP_K = 5
# What a per-part task reports back to the driver (one row per label part).
PART_STATS_SCHEMA = pa.schema([
    pa.field("part", pa.string()),
    pa.field("files", pa.int64()),
    pa.field("ok", pa.int64()),
    pa.field("error", pa.int64()),
    pa.field("segments", pa.int64()),
    pa.field("errors_by_kind", pa.string()),     # JSON object: kind -> count
    pa.field("seconds", pa.float64()),
    pa.field("failure", pa.string()),            # null when the part was re-scored and committed
])


@dataclass
class RescoreConfig:
    embeddings: str
    cache: str
    out: str
    run_id: str | None = None            # default: today's UTC date
    since_last_run: bool = False
    top_k: int | None = None             # default: the label run's top_k
    overwrite: bool = False
    copy_embeddings: bool = False        # default: segments/ reference the label run's embeddings
    progress_every_s: float = 15.0
    report: bool = True                  # write the run's report/ at the end (das report)


def build_parser(prog: str = "das rescore") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=(
        "Re-label the window embeddings stored by `das label` with a drift cache (another label set, other noise "
        "phrases or lam, or the same cache), without decoding audio or loading the model. Writes "
        "OUT/run_id=ID/segments/, files/ and _manifest.json in the schema of das label. Runs on the Ray cluster "
        "at RAY_ADDRESS, or a local one."))
    p.add_argument("--embeddings", required=True, metavar="URI",
                   help="output folder or s3:// prefix of a `das label` run (its segments/, files/, _manifest.json)")
    p.add_argument("--cache", required=True, metavar="URI",
                   help="drift cache (`das build-cache`) built with the checkpoint the embeddings were made with")
    p.add_argument("--out", required=True, metavar="URI",
                   help="folder or s3:// prefix that holds one run_id=ID/ folder per rescore run")
    p.add_argument("--run-id", metavar="ID",
                   help="name of this run's folder, OUT/run_id=ID/ (letters, digits, '.', '_', '-'); "
                        "default: today's UTC date, YYYY-MM-DD")
    p.add_argument("--since-last-run", action="store_true",
                   help="score only the rows the label output gained since the last complete rescore run of the "
                        "same --embeddings under OUT (its manifest's watermark); everything when there is none")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="classes kept per window and per file (default: the label run's --top-k)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT/run_id=ID/ when it already holds a run (otherwise refused)")
    p.add_argument("--copy-embeddings", action="store_true",
                   help="write the window embeddings into this run's segments/ too (default: the run references "
                        "the label output's, which das readers follow)")
    p.add_argument("--no-report", action="store_true",
                   help="do not write OUT/run_id=ID/report/ (report.md and figures, see `das report`) at the end")
    add_common_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> RescoreConfig:
    return RescoreConfig(embeddings=args.embeddings, cache=args.cache, out=args.out, run_id=args.run_id,
                         since_last_run=args.since_last_run, top_k=args.top_k, overwrite=args.overwrite,
                         copy_embeddings=args.copy_embeddings, report=not args.no_report)


def check_config(c: RescoreConfig) -> None:
    """Refuse bad arguments before touching any storage."""
    if c.run_id is not None and not RUN_ID_PATTERN.match(c.run_id):
        raise UsageError(f"--run-id {c.run_id!r} is not a valid run name: use up to 128 letters, digits, '.', '_' "
                         f"or '-', starting with a letter or digit")
    if c.top_k is not None and c.top_k < 1:
        raise UsageError("--top-k must be at least 1")


def default_run_id() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


def normalise_uri(uri: str) -> str:
    """One spelling per location, so that watermarks of the same --embeddings compare equal."""
    if storage.is_s3(uri):
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(uri))


# ------------------------------------------------------------------ scoring one part (no Ray here)

def _embedding_dtype(segments: pa.Table) -> str:
    value_type = segments.schema.field("embedding").type.value_type
    for name, arrow_type in EMBEDDING_TYPES.items():
        if value_type == arrow_type:
            return name
    raise ValueError(f"embedding column has type list<{value_type}>, expected list<float16> or list<float32>")


def rescore_tables(segments: pa.Table, files: pa.Table, cache: DriftCache, top_k: int,
                   logit_scale: float | None = None) -> tuple[pa.Table, pa.Table]:
    """Re-label one committed part of a label output: the new ``segments`` and ``files`` tables.

    Window labels come from the stored embeddings cast to float32 (exactly what
    das label scored); file labels are the maximum over a file's windows; error
    rows are carried over unchanged, so every input file keeps exactly one row.
    """
    dtype = _embedding_dtype(segments)
    if segments.column("embedding").null_count:
        raise ValueError(f"{segments.column('embedding').null_count} window(s) have no embedding")
    counts = Counter(segments.column("file_id").to_pylist())
    outcomes = []
    for name in ("decoder", "key", "metadata"):
        if name not in files.column_names:
            files = files.append_column(name, pa.nulls(len(files), pa.string()))
    for row in files.select(["file_id", "path", "status", "error", "error_kind", "n_segments", "duration_s",
                             "sample_rate", "channels", "decoder", "key", "metadata"]).to_pylist():
        stored = counts.get(row["file_id"], 0)
        if row["status"] == OK and (stored == 0 or stored != row["n_segments"]):
            raise ValueError(f"file {row['path']} has n_segments={row['n_segments']} in files/ but "
                             f"{stored} window(s) in segments/: the label output is damaged")
        outcomes.append(FileOutcome(row["file_id"], row["path"], row["status"], row["error"], row["error_kind"],
                                    row["n_segments"], row["duration_s"], row["sample_rate"], row["channels"],
                                    row["decoder"], row["key"], row["metadata"]))
    windows = segments.drop_columns([n for n in ("label", "score", "top_k_labels", "top_k_scores", "zs_label",
                                                 "zs_score", "top_k_probs") if n in segments.column_names])
    lab = scores = None
    if len(segments):
        scores = window_scores(embeddings_to_numpy(segments.column("embedding")), cache)
        lab = label_windows(None, cache, top_k, scores=scores, logit_scale=logit_scale)
    for name, column in labelled_columns(lab, len(segments)).items():
        windows = windows.append_column(name, column)
    return build_tables(outcomes, windows, cache, top_k, dtype, scores=scores, logit_scale=logit_scale)


def rescore_part(embeddings: str, out_run: str, unit: str, segment_parts: list[str], file_parts: list[str],
                 cache: DriftCache, top_k: int, logit_scale: float | None = None,
                 copy_embeddings: bool = True) -> dict:
    """Re-score committed label unit ``unit`` of ``embeddings`` (its parts) and commit it under ``out_run``."""
    label = OutputStore(embeddings)

    def read(folder: str, names: list[str]) -> pa.Table | None:
        tables = [label.read_part(folder, name) for name in names]
        return pa.concat_tables(tables, promote_options="permissive") if tables else None

    files = read(FILES_DIR, file_parts)
    segments = read(SEGMENTS_DIR, segment_parts)
    if segments is None:
        segments = segments_schema(_files_dtype(label)).empty_table()
    new_segments, new_files = rescore_tables(segments, files, cache, top_k, logit_scale)
    out = OutputStore(out_run)
    if not copy_embeddings:
        new_segments = new_segments.drop_columns(["embedding"])   # read back through the label output
    if len(new_segments):
        out.write_part(SEGMENTS_DIR, part_name(unit, "all"), new_segments)
    out.write_part(FILES_DIR, part_name(unit, END_TAG), new_files)
    return count_outcomes(new_files)


def _files_dtype(store: OutputStore) -> str:
    manifest = store.read_manifest() or {}
    return (manifest.get("settings") or {}).get("embedding_dtype") or "float16"


def rescore_parts(batch: pa.Table, embeddings: str, out_run: str, cache_box: list, top_k: int,
                  logit_scale: float | None = None, copy_embeddings: bool = True) -> pa.Table:
    """Ray Data UDF: label part names in, one PART_STATS_SCHEMA row per part out.

    A part that cannot be re-scored (unreadable, damaged) is reported in
    ``failure``; it never fails the block, so every other part still gets done.
    """
    import ray

    cache = ray.get(cache_box[0])
    rows: dict[str, list] = {f.name: [] for f in PART_STATS_SCHEMA}
    for part, seg_parts, file_parts in zip(batch.column("part").to_pylist(), batch.column("segments").to_pylist(),
                                           batch.column("files").to_pylist()):
        start = time.monotonic()
        counts, failure = {"files": 0, "ok": 0, "error": 0, "segments": 0, "errors_by_kind": {}}, None
        try:
            counts = rescore_part(embeddings, out_run, part, seg_parts, file_parts, cache, top_k, logit_scale,
                                  copy_embeddings)
        except Exception as exc:  # noqa: BLE001 - reported per part, counted by the driver
            failure = f"{storage.join(embeddings, FILES_DIR, part_name(part, END_TAG))} (unit {part}): " \
                      f"{type(exc).__name__}: {exc}"
        rows["part"].append(part)
        for key in ("files", "ok", "error", "segments"):
            rows[key].append(int(counts[key]))
        rows["errors_by_kind"].append(json.dumps(counts["errors_by_kind"]))
        rows["seconds"].append(time.monotonic() - start)
        rows["failure"].append(failure)
    return pa.table(rows, schema=PART_STATS_SCHEMA)


# ------------------------------------------------------------------ the label output, earlier runs, watermark

def list_runs(out: str) -> list[dict]:
    """Manifests of the rescore runs under ``out`` (``run_id=*/_manifest.json``), unreadable ones skipped."""
    fs, path = storage.filesystem(out)
    if not fs.exists(path):
        return []
    manifests = []
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if not name.startswith(RUN_PREFIX):
            continue
        try:
            manifest = OutputStore(storage.join(out, name)).read_manifest()
        except (ValueError, OSError) as exc:
            log.warning("ignoring %s: its manifest cannot be read (%s)", storage.join(out, name), exc)
            continue
        if isinstance(manifest, dict):
            manifests.append(manifest)
    return manifests


def previous_run(out: str, embeddings: str, run_id: str) -> dict | None:
    """The complete rescore run of ``embeddings`` under ``out`` that finished last (not ``run_id`` itself)."""
    done = [m for m in list_runs(out)
            if m.get("job") == "rescore" and m.get("status") == "complete" and m.get("run_id") != run_id
            and m.get("settings", {}).get("embeddings") == embeddings]
    if not done:
        return None
    return max(done, key=lambda m: ((m.get("runs") or [{}])[-1].get("finished") or "", m.get("run_id") or ""))


def label_identity(label_manifest: dict, checkpoint_id: str) -> dict:
    """What must stay the same for a watermark to apply: the model and the label output's run history."""
    return {"checkpoint_fingerprint": checkpoint_id,
            "label_runs_started": [r.get("started") for r in label_manifest.get("runs") or []]}


def watermark_void_reason(watermark: dict, identity: dict) -> str | None:
    """Why ``watermark`` cannot be trusted for the label output described by ``identity`` (None: it can)."""
    if not isinstance(watermark.get("units"), list):
        return "it records no units"
    if watermark.get("checkpoint_fingerprint") != identity["checkpoint_fingerprint"]:
        return "the embeddings were made with another checkpoint since"
    recorded = watermark.get("label_runs_started") or []
    current = identity["label_runs_started"]
    if current[:len(recorded)] != recorded:
        return "the label output was replaced since (its run history changed)"
    return None


# ------------------------------------------------------------------ the job

@dataclass
class Plan:
    config: RescoreConfig
    run_id: str
    run_uri: str
    embeddings: str                     # normalised --embeddings
    label_manifest: dict
    checkpoint_id: str
    cache: DriftCache
    top_k: int
    committed: list[str]
    uncommitted: list[str]
    todo: list[str]
    covered_before: set[str] = field(default_factory=set)   # units scored by the previous runs of the chain
    previous: dict | None = None
    listing: StoreListing | None = None


def plan(c: RescoreConfig) -> Plan:
    """Everything that can be refused is refused here, before any part is read."""
    check_config(c)
    run_id = c.run_id or default_run_id()
    embeddings = normalise_uri(c.embeddings)
    try:
        label_manifest = OutputStore(c.embeddings).read_manifest()
    except ValueError as exc:
        raise UsageError(f"{storage.join(c.embeddings, MANIFEST)} is not valid JSON ({exc})") from None
    if label_manifest is None:
        raise UsageError(f"{c.embeddings} has no {MANIFEST}: it is not the output of `das label` (rescore needs the "
                         f"checkpoint fingerprint the embeddings were made with, which that manifest records)")
    settings = label_manifest.get("settings") or {}
    checkpoint_id = settings.get("checkpoint_fingerprint") or (label_manifest.get("checkpoint") or {}).get(
        "fingerprint")
    if not checkpoint_id:
        raise UsageError(f"{storage.join(c.embeddings, MANIFEST)} records no checkpoint fingerprint")
    cache = DriftCache.load(c.cache)
    checkpoint_name = (label_manifest.get("checkpoint") or {}).get("uri") or "the checkpoint of the embeddings"
    try:
        cache.check_encoder(checkpoint_id, checkpoint_name)
    except CacheMismatchError as exc:
        raise CacheMismatchError(f"{c.cache} cannot re-score the embeddings in {c.embeddings}: {exc}") from None
    top_k = c.top_k or settings.get("top_k") or DEFAULT_TOP_K

    run_uri = storage.join(c.out, RUN_PREFIX + run_id)
    existing = OutputStore(run_uri)
    if existing.has_output() and not c.overwrite:
        try:
            status = (existing.read_manifest() or {}).get("status", "unknown")
        except ValueError:
            status = "unreadable manifest"
        raise UsageError(f"{run_uri} already holds a rescore run (status: {status}); choose another --run-id or pass "
                         f"--overwrite to replace it")

    if label_manifest.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{c.embeddings} was written by das {label_manifest.get('das_version', '0.1')} in an "
                         f"older layout; relabel it with this version (or rescore it with das 0.1)")
    listing = OutputStore(c.embeddings).listing()
    committed = listing.committed_units()
    uncommitted = sorted((set(listing.units(SEGMENTS_DIR)) | set(listing.units(FILES_DIR))) - set(committed))
    if uncommitted:
        log.info("ignoring %d uncommitted unit(s) of %s (no end part: still being labelled, or interrupted)",
                 len(uncommitted), c.embeddings)
    if label_manifest.get("status") != "complete":
        log.info("the label output is %s: its %d committed part(s) are scored", label_manifest.get("status"),
                 len(committed))
    p = Plan(c, run_id, run_uri, embeddings, label_manifest, checkpoint_id, cache, top_k, committed, uncommitted,
             todo=list(committed), listing=listing)
    if c.since_last_run:
        p.previous = previous_run(c.out, embeddings, run_id)
        if p.previous is None:
            log.info("--since-last-run: no complete rescore run of %s under %s yet: scoring everything",
                     c.embeddings, c.out)
        else:
            watermark = p.previous.get("watermark") or {}
            void = watermark_void_reason(watermark, label_identity(label_manifest, checkpoint_id))
            if void:
                log.warning("--since-last-run: the watermark of run %s no longer applies (%s): scoring everything",
                            p.previous.get("run_id"), void)
            else:
                p.covered_before = set(watermark["units"])
                p.todo = [name for name in committed if name not in p.covered_before]
            if (p.previous.get("cache") or {}).get("fingerprint") != cache.fingerprint and not void:
                log.warning("--since-last-run: run %s used another drift cache; rows before its watermark keep "
                            "those labels (run without --since-last-run to relabel everything)",
                            p.previous.get("run_id"))
    return p


def _manifest(p: Plan, status: str, counts: dict, this_run: dict, covered: set[str]) -> dict:
    c, cache, label = p.config, p.cache, p.label_manifest
    settings = label.get("settings") or {}
    return {
        "job": "rescore",
        "status": status,
        "das_version": __version__,
        "format_version": FORMAT_VERSION,
        "embeddings": {"source": p.embeddings, "copied": c.copy_embeddings},
        "run_id": p.run_id,
        "settings": {"embeddings": p.embeddings, "cache_fingerprint": cache.fingerprint,
                     "checkpoint_fingerprint": p.checkpoint_id, "top_k": p.top_k,
                     "embedding_dtype": settings.get("embedding_dtype"), "since_last_run": c.since_last_run,
                     "snr_db": settings.get("snr_db"), "seed": settings.get("seed"), "noise": settings.get("noise")},
        "cache": {"uri": c.cache, "fingerprint": cache.fingerprint, "n_labels": len(cache.labels),
                  "lam": cache.lam, "clean_template": cache.clean_template, "noisy_template": cache.noisy_template,
                  "clean_templates": list(cache.clean_templates) or None,     # a prompt ensemble, if any
                  "noise_phrases": list(cache.noise_phrases), "labels": list(cache.labels)},
        "checkpoint": dict(label.get("checkpoint") or {"fingerprint": p.checkpoint_id}),
        "windows": label.get("windows"),
        "source": {"embeddings": c.embeddings, "label_status": label.get("status"),
                   "label_cache_fingerprint": settings.get("cache_fingerprint"), "label_counts": label.get("counts"),
                   "units_committed": len(p.committed), "units_uncommitted_ignored": len(p.uncommitted)},
        "previous_run": ({"run_id": p.previous.get("run_id"),
                          "finished": (p.previous.get("runs") or [{}])[-1].get("finished")}
                         if p.previous else None),
        "watermark": {**label_identity(label, p.checkpoint_id), "units": sorted(covered), "n_units": len(covered)},
        "counts": counts,
        "runs": [this_run],
    }


def _count(stats: list[dict], p: Plan) -> dict:
    done = [s for s in stats if not s["failure"]]
    kinds: Counter = Counter()
    for s in done:
        kinds.update(json.loads(s["errors_by_kind"]))
    return {
        "files": sum(s["files"] for s in done),
        "ok": sum(s["ok"] for s in done),
        "error": sum(s["error"] for s in done),
        "segments": sum(s["segments"] for s in done),
        "errors_by_kind": dict(sorted(kinds.items())),
        "units": len(done),
        "units_failed": len(stats) - len(done),
        "units_skipped_before_watermark": len(p.committed) - len(p.todo),
    }


def run_stages(parts: list[str], listing: StoreListing, embeddings: str, out_run: str, cache: DriftCache,
               top_k: int, env: dict[str, str] | None = None, logit_scale: float | None = None,
               copy_embeddings: bool = True) -> Iterator[pa.Table]:
    """Stream PART_STATS_SCHEMA tables to the driver: one Ray Data row (and task) per committed label unit."""
    import ray
    import ray.data

    remote = {"runtime_env": {"env_vars": env}} if env else {}
    cache_box = [ray.put(cache)]
    items = [{"part": unit, "segments": listing.parts_of(unit, SEGMENTS_DIR),
              "files": listing.parts_of(unit, FILES_DIR)} for unit in parts]
    ds = ray.data.from_items(items, override_num_blocks=len(parts))
    ds = ds.map_batches(rescore_parts, fn_kwargs={"embeddings": embeddings, "out_run": out_run,
                                                  "cache_box": cache_box, "top_k": top_k,
                                                  "logit_scale": logit_scale, "copy_embeddings": copy_embeddings},
                        batch_size=1, batch_format="pyarrow", num_cpus=1, **remote)
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def run(c: RescoreConfig) -> dict:
    """Re-score ``c.embeddings`` into ``c.out/run_id=ID``; returns the run's final manifest."""
    p = plan(c)
    store = OutputStore(p.run_uri)
    if c.overwrite and store.has_output():
        log.info("--overwrite: deleting the previous run in %s", p.run_uri)
        store.remove_all()
    this_run = {"started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "units_to_do": len(p.todo)}
    store.write_manifest(_manifest(p, "running", _count([], p), this_run, p.covered_before))
    log.info("re-scoring %d of %d committed part(s) of %s with %d class(es), lam=%g, top-k %d -> %s",
             len(p.todo), len(p.committed), c.embeddings, len(p.cache.labels), p.cache.lam, p.top_k, p.run_uri)

    start = time.monotonic()
    scoring_s = 0.0                      # time spent re-scoring, Ray start-up excluded: the basis of rows/s
    stats: list[dict] = []
    if p.todo:
        init_ray()
        scoring_start = last_progress = time.monotonic()
        label_settings = p.label_manifest.get("settings") or {}
        scale = (p.label_manifest.get("checkpoint") or {}).get("logit_scale") if label_settings.get(
            "probabilities") else None
        for batch in run_stages(p.todo, p.listing, c.embeddings, p.run_uri, p.cache, p.top_k, env=worker_env(),
                                logit_scale=scale, copy_embeddings=c.copy_embeddings):
            for row in batch.to_pylist():
                stats.append(row)
                if row["failure"]:
                    log.error("part failed: %s", row["failure"])
            now = time.monotonic()
            if now - last_progress >= c.progress_every_s:
                last_progress = now
                rows = sum(s["segments"] for s in stats)
                log.info("progress: %d/%d units, %d segments, %.1f rows/s", len(stats), len(p.todo), rows,
                         rows / max(now - scoring_start, 1e-9))
        scoring_s = time.monotonic() - scoring_start
    wall = time.monotonic() - start
    counts = _count(stats, p)
    failures = [s["failure"] for s in stats if s["failure"]]
    covered = p.covered_before | {s["part"] for s in stats if not s["failure"]}
    this_run.update({"finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                     "wall_time_s": round(wall, 3), "scoring_time_s": round(scoring_s, 3),
                     "units_done": counts["units"], "segments_done": counts["segments"],
                     "segments_per_s": round(counts["segments"] / scoring_s, 4) if scoring_s > 0 else None})
    status = "failed" if failures else "complete"
    manifest = _manifest(p, status, counts, this_run, covered)
    store.write_manifest(manifest)
    _print_summary(manifest, p, wall, scoring_s)
    if c.report:
        from jobs.report import report_after_job

        report_after_job(p.run_uri)
    if failures:
        raise JobFailed(f"{len(failures)} of {len(p.todo)} unit(s) could not be re-scored, e.g. {failures[0]}. "
                        f"The other units are in {p.run_uri}; this run is not a --since-last-run watermark")
    return manifest


def _print_summary(manifest: dict, p: Plan, wall: float, scoring_s: float) -> None:
    counts = manifest["counts"]
    errs = ", ".join(f"{k} {v}" for k, v in counts["errors_by_kind"].items())
    cache = manifest["cache"]
    weights = manifest["checkpoint"].get("weights")
    skipped = counts["units_skipped_before_watermark"]
    print(f"das rescore: {manifest['status']} in {wall:.1f} s (run {p.run_id})\n"
          f"  units:     {counts['units']} re-scored of {len(p.committed)} committed"
          + (f", {skipped} before the watermark of run {manifest['previous_run']['run_id']}" if skipped else "")
          + (f", {counts['units_failed']} FAILED" if counts["units_failed"] else "") + "\n"
          f"  files:     {counts['files']} = {counts['ok']} ok + {counts['error']} error"
          + (f" (error rows carried over: {errs})" if counts["error"] else "") + "\n"
          f"  rows:      {counts['segments']} segments in {scoring_s:.1f} s, "
          f"{counts['segments'] / scoring_s if scoring_s > 0 else 0:.1f} rows/s\n"
          f"  cache:     {cache['n_labels']} classes, lam {cache['lam']:g}, {cache['fingerprint']}\n"
          f"  weights:   {weights}" + ("  (RANDOM: labels are meaningless)" if weights == "random" else "") + "\n"
          f"  output:    {p.run_uri} "
          + ("(segments/, files/, _manifest.json)" if counts["units"] else "(_manifest.json only: nothing to score)"),
          flush=True)


def main(argv: list[str] | None = None, prog: str = "das rescore") -> int:
    return job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.rescore"))
