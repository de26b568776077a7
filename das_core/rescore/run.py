"""A ``das rescore`` run without Ray: its settings, plan, per-unit work, watermark, manifest and summary.

Input (``--embeddings``) is the output of ``das label``: its committed units
(``files/part-<unit>-end.parquet`` exists; see ``das_core.output.store``) and
``_manifest.json``. Units still being written, or left by an interrupted run,
are ignored. Output (``--out``) holds one folder per run, so that nightly runs
sit side by side::

    OUT/run_id=<ID>/segments/part-<unit>-all.parquet   das label's schema; the embedding column only with
                                                       --copy-embeddings (readers follow the manifest's
                                                       "embeddings" to the label output otherwise)
    OUT/run_id=<ID>/files/part-<unit>-end.parquet      one row per input file, error rows included (commit mark)
    OUT/run_id=<ID>/_manifest.json                     settings, cache, counts, watermark

The job (``jobs/rescore.py``) runs ``rescore_unit`` once per committed label
unit, as one Ray task: it reads the unit's parts with pyarrow, scores every
window from its stored embedding (cast to float32 exactly as ``das label``
did, so the same cache reproduces its scores), pools files by the maximum over
all their windows (a long file's pieces included) and writes the unit's two
output parts, files last. Names derive from the unit, so a retried task
overwrites instead of duplicating.

Watermark (``--since-last-run``). Label units never change once committed
(``--resume`` only adds units), so "rows added since the last run" are the
committed label units that no earlier run has scored. Every run records in
its manifest the label units it and its predecessors covered, with the label
output's identity: its checkpoint fingerprint and the start times of its
runs (``Watermark``). The previous run is the rescore run of the same
``--embeddings`` under OUT with status ``complete`` that finished last. If the
label output's run history no longer extends the recorded one (it was
replaced with ``--overwrite``), the watermark is void and everything is
scored again.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from das_core import __version__
from das_core.errors import ConfigError, Refused, RunFailed, WriteFailed
from das_core.io import storage
from das_core.io.inputs import normalise_uri
from das_core.output.format import (
    EMBEDDING_TYPES,
    END_TAG,
    FILES_DIR,
    FORMAT_VERSION,
    OK,
    SEGMENTS_DIR,
    part_name,
    segments_schema,
)
from das_core.output.manifest import RunManifest
from das_core.output.record import cache_block, ended_by, utc_date, utc_now, weights_line
from das_core.output.store import OutputStore, StoreListing, open_embeddings
from das_core.output.tables import FileOutcome, build_tables, count_outcomes, embeddings_to_numpy, labelled_columns
from das_core.runtime import engine
from das_core.scoring.cache import DriftCache
from das_core.scoring.scorer import DEFAULT_TOP_K, label_windows, window_scores
from das_core.settings import setting

log = logging.getLogger("das.rescore")

RUN_PREFIX = "run_id="
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# What a unit's task reports back to the driver (one row per label unit).
PART_STATS_SCHEMA = pa.schema([
    pa.field("part", pa.string()),
    pa.field("files", pa.int64()),
    pa.field("ok", pa.int64()),
    pa.field("error", pa.int64()),
    pa.field("segments", pa.int64()),
    pa.field("errors_by_kind", pa.string()),     # JSON object: kind -> count
    pa.field("seconds", pa.float64()),
    pa.field("failure", pa.string()),            # null when the unit was re-scored and committed
])
_LABEL_COLUMNS = ("label", "score", "top_k_labels", "top_k_scores", "zs_label", "zs_score", "top_k_probs")
_FILE_COLUMNS = ("file_id", "path", "status", "error", "error_kind", "n_segments", "duration_s", "sample_rate",
                 "channels", "decoder", "key", "metadata")


@dataclass(frozen=True)
class RescoreConfig:
    """The settings of one rescore run, checked when made (``ConfigError``), before any storage is touched."""

    embeddings: str = setting(metavar="URI", help="output folder or s3:// prefix of a `das label` run (its "
                              "segments/, files/, _manifest.json)")
    cache: str = setting(metavar="URI", help="drift cache (`das build-cache`) built with the checkpoint the "
                         "embeddings were made with")
    out: str = setting(metavar="URI", help="folder or s3:// prefix that holds one run_id=ID/ folder per rescore run")
    run_id: str | None = setting(None, metavar="ID", help="name of this run's folder, OUT/run_id=ID/ (letters, "
                                 "digits, '.', '_', '-'); default: today's UTC date, YYYY-MM-DD")
    since_last_run: bool = setting(False, help="score only the rows the label output gained since the last complete "
                                   "rescore run of the same --embeddings under OUT (its manifest's watermark); "
                                   "everything when there is none")
    top_k: int | None = setting(None, metavar="K",
                                help="classes kept per window and per file (default: the label run's --top-k)")
    overwrite: bool = setting(False, help="replace OUT/run_id=ID/ when it already holds a run (otherwise refused)")
    copy_embeddings: bool = setting(False, help="write the window embeddings into this run's segments/ too "
                                    "(default: the run references the label output's, which das readers follow)")
    local: bool = setting(False, help="run in this process, without Ray (the same rows). Default: automatic, local "
                          "when the label output holds few windows (see README)")
    ray: bool = setting(False, help="run on Ray (RAY_ADDRESS, or a private local Ray) even for a small output")
    progress_every_s: float = 15.0
    report: bool = True                  # write the run's report/ at the end (das report)

    def __post_init__(self) -> None:
        for name in ("embeddings", "cache", "out"):        # local paths made absolute once, here
            object.__setattr__(self, name, storage.absolute(getattr(self, name)))
        storage.refuse_overlap(self.out, "--out", self.embeddings, "--embeddings")
        engine.check_forced(self.local, self.ray)
        if self.run_id is not None and not RUN_ID_PATTERN.match(self.run_id):
            raise ConfigError(f"--run-id {self.run_id!r} is not a valid run name: use up to 128 letters, digits, "
                              f"'.', '_' or '-', starting with a letter or digit")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError("--top-k must be at least 1")
        if not self.progress_every_s > 0:
            raise ConfigError(f"progress_every_s must be positive, got {self.progress_every_s}")


def default_run_id() -> str:
    """The run id when ``--run-id`` is not given: today's UTC date."""
    return utc_date()


# ------------------------------------------------------------------ one unit (the work of one Ray task)

def _embedding_dtype(segments: pa.Table) -> str:
    value_type = segments.schema.field("embedding").type.value_type
    for name, arrow_type in EMBEDDING_TYPES.items():
        if value_type == arrow_type:
            return name
    raise ValueError(f"embedding column has type list<{value_type}>, expected list<float16> or list<float32>")


def _file_outcomes(files: pa.Table, segments: pa.Table) -> list[FileOutcome]:
    """The label unit's files as outcomes, after checking that each ok file has all its windows."""
    counts = Counter(segments.column("file_id").to_pylist())
    for name in ("decoder", "key", "metadata"):
        if name not in files.column_names:
            files = files.append_column(name, pa.nulls(len(files), pa.string()))
    outcomes = []
    for row in files.select(list(_FILE_COLUMNS)).to_pylist():
        stored = counts.get(row["file_id"], 0)
        if row["status"] == OK and (stored == 0 or stored != row["n_segments"]):
            raise ValueError(f"file {row['path']} has n_segments={row['n_segments']} in files/ but "
                             f"{stored} window(s) in segments/: the label output is damaged")
        outcomes.append(FileOutcome(*(row[name] for name in _FILE_COLUMNS)))
    return outcomes


def rescore_tables(segments: pa.Table, files: pa.Table, cache: DriftCache, top_k: int,
                   logit_scale: float | None = None) -> tuple[pa.Table, pa.Table]:
    """Re-label one committed unit of a label output: the new ``segments`` and ``files`` tables.

    Window labels come from the stored embeddings cast to float32 (exactly what
    das label scored); file labels are the maximum over a file's windows; error
    rows are carried over unchanged, so every input file keeps exactly one row.
    """
    dtype = _embedding_dtype(segments)
    if segments.column("embedding").null_count:
        raise ValueError(f"{segments.column('embedding').null_count} window(s) have no embedding")
    outcomes = _file_outcomes(files, segments)
    windows = segments.drop_columns([n for n in _LABEL_COLUMNS if n in segments.column_names])
    lab = scores = None
    if len(segments):
        scores = window_scores(embeddings_to_numpy(segments.column("embedding")), cache)
        lab = label_windows(None, cache, top_k, scores=scores, logit_scale=logit_scale)
    for name, column in labelled_columns(lab, len(segments)).items():
        windows = windows.append_column(name, column)
    return build_tables(outcomes, windows, cache, top_k, dtype, scores=scores, logit_scale=logit_scale)


def rescore_part(embeddings: str, out_run: str, unit: str, segment_parts: list[str], file_parts: list[str],
                 cache: DriftCache, top_k: int, logit_scale: float | None = None, copy_embeddings: bool = True,
                 embedding_dtype: str = "float16") -> dict:
    """Re-score committed label unit ``unit`` of ``embeddings`` (its parts) and commit it under ``out_run``;
    returns its counts (``results.count_outcomes``)."""
    label = OutputStore(embeddings)

    def read(folder: str, names: list[str]) -> pa.Table | None:
        tables = [label.read_part(folder, name) for name in names]
        return pa.concat_tables(tables, promote_options="permissive") if tables else None

    files = read(FILES_DIR, file_parts)
    segments = read(SEGMENTS_DIR, segment_parts)
    if segments is None:
        segments = segments_schema(embedding_dtype).empty_table()
    new_segments, new_files = rescore_tables(segments, files, cache, top_k, logit_scale)
    out = OutputStore(out_run)
    if not copy_embeddings:
        new_segments = new_segments.drop_columns(["embedding"])   # read back through the label output
    if len(new_segments):
        out.write_part(SEGMENTS_DIR, part_name(unit, "all"), new_segments)
    out.write_part(FILES_DIR, part_name(unit, END_TAG), new_files)
    return count_outcomes(new_files)


def rescore_unit(row: dict, cache: DriftCache, *, embeddings: str, out_run: str, top_k: int,
                 logit_scale: float | None = None, copy_embeddings: bool = True,
                 embedding_dtype: str = "float16") -> pa.Table:
    """The task of one label unit (``row``: ``RescorePlan.unit_rows``): one ``PART_STATS_SCHEMA`` row.

    A unit that cannot be re-scored (unreadable, damaged) is reported in
    ``failure``; it never fails the task, so every other unit still gets done. A write that fails
    (``WriteFailed``: disk full, read-only) ends the run.
    """
    unit, start = row["unit"], time.monotonic()
    counts, failure = {"files": 0, "ok": 0, "error": 0, "segments": 0, "errors_by_kind": {}}, None
    try:
        counts = rescore_part(embeddings, out_run, unit, row["segments"], row["files"], cache, top_k, logit_scale,
                              copy_embeddings, embedding_dtype)
    except WriteFailed:
        raise                                # the output's disk, not this unit: the run stops with its line
    except Exception as exc:  # noqa: BLE001 - reported per unit, counted by the driver
        failure = f"{storage.join(embeddings, FILES_DIR, part_name(unit, END_TAG))} (unit {unit}): " \
                  f"{type(exc).__name__}: {exc}"
    stats = {"part": unit, **{key: int(counts[key]) for key in ("files", "ok", "error", "segments")},
             "errors_by_kind": json.dumps(counts["errors_by_kind"]), "seconds": time.monotonic() - start,
             "failure": failure}
    return pa.Table.from_pylist([stats], schema=PART_STATS_SCHEMA)


# ------------------------------------------------------------------ earlier runs and the watermark

@dataclass(frozen=True)
class Watermark:
    """The label units a run and its predecessors covered, and what they were units of: the label output's
    checkpoint fingerprint and the start times of its runs (its identity)."""

    checkpoint_fingerprint: str | None
    label_runs_started: tuple = ()
    units: tuple[str, ...] | None = None      # None: the manifest records no units

    @classmethod
    def of(cls, label: RunManifest, checkpoint_id: str, units=()) -> Watermark:
        """The identity of the label output described by ``label``, covering ``units``."""
        return cls(checkpoint_id, tuple(label.runs_started), tuple(sorted(units)))

    @classmethod
    def from_dict(cls, data: dict | None) -> Watermark:
        data = data or {}
        units = data.get("units")
        return cls(data.get("checkpoint_fingerprint"), tuple(data.get("label_runs_started") or ()),
                   tuple(units) if isinstance(units, list) else None)

    def to_dict(self) -> dict:
        units = list(self.units or ())
        return {"checkpoint_fingerprint": self.checkpoint_fingerprint,
                "label_runs_started": list(self.label_runs_started), "units": units, "n_units": len(units)}

    def void_reason(self, label_now: Watermark) -> str | None:
        """Why this watermark cannot be trusted for the label output whose identity is ``label_now`` (None: it
        can)."""
        if self.units is None:
            return "it records no units"
        if self.checkpoint_fingerprint != label_now.checkpoint_fingerprint:
            return "the embeddings were made with another checkpoint since"
        if label_now.label_runs_started[:len(self.label_runs_started)] != self.label_runs_started:
            return "the label output was replaced since (its run history changed)"
        return None


def list_runs(out: str) -> list[RunManifest]:
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
            manifest = RunManifest.read(storage.join(out, name))
        except (ValueError, OSError) as exc:
            log.warning("ignoring %s: its manifest cannot be read (%s)", storage.join(out, name), exc)
            continue
        if manifest is not None:
            manifests.append(manifest)
    return manifests


def _finished(m: RunManifest) -> str:
    return (m.runs[-1] if m.runs else {}).get("finished") or ""


def previous_run(out: str, embeddings: str, run_id: str) -> RunManifest | None:
    """The complete rescore run of ``embeddings`` under ``out`` that finished last (not ``run_id`` itself)."""
    done = [m for m in list_runs(out)
            if m.job == "rescore" and m.complete and m.get("run_id") != run_id
            and m.settings.get("embeddings") == embeddings]
    return max(done, key=lambda m: (_finished(m), m.get("run_id") or "")) if done else None


# ------------------------------------------------------------------ the plan

@dataclass
class RescorePlan:
    config: RescoreConfig
    run_id: str
    run_uri: str
    embeddings: str                     # normalised --embeddings
    label: RunManifest                  # the label output's manifest
    checkpoint_id: str
    cache: DriftCache
    top_k: int
    listing: StoreListing
    committed: list[str]
    uncommitted: list[str]
    todo: list[str]
    covered_before: set[str] = field(default_factory=set)   # units scored by the previous runs of the chain
    previous: RunManifest | None = None

    def unit_rows(self) -> list[dict]:
        """One row per unit to do: what ``rescore_unit`` reads."""
        return [{"unit": u, "segments": self.listing.parts_of(u, SEGMENTS_DIR),
                 "files": self.listing.parts_of(u, FILES_DIR)} for u in self.todo]

    def unit_settings(self) -> dict:
        """The keyword arguments of ``rescore_unit`` (the same for every unit)."""
        return {"embeddings": self.config.embeddings, "out_run": self.run_uri, "top_k": self.top_k,
                "logit_scale": self.label.logit_scale, "copy_embeddings": self.config.copy_embeddings,
                "embedding_dtype": self.label.embedding_dtype}


def _refuse_existing_run(run_uri: str, overwrite: bool) -> None:
    if overwrite or not OutputStore(run_uri).has_output():
        return
    try:
        manifest = RunManifest.read(run_uri)
        status = manifest.status if manifest else "unknown"
    except ValueError:
        status = "unreadable manifest"
    raise Refused(f"{run_uri} already holds a rescore run (status: {status}); choose another --run-id or pass "
                  f"--overwrite to replace it")


def _apply_watermark(p: RescorePlan) -> None:
    """``--since-last-run``: leave out of ``p.todo`` the units the previous complete run covered."""
    c = p.config
    p.previous = previous_run(c.out, p.embeddings, p.run_id)
    if p.previous is None:
        log.info("--since-last-run: no complete rescore run of %s under %s yet: scoring everything",
                 c.embeddings, c.out)
        return
    watermark = Watermark.from_dict(p.previous.get("watermark"))
    void = watermark.void_reason(Watermark.of(p.label, p.checkpoint_id))
    if void:
        log.warning("--since-last-run: the watermark of run %s no longer applies (%s): scoring everything",
                    p.previous.get("run_id"), void)
        return
    p.covered_before = set(watermark.units)
    p.todo = [name for name in p.committed if name not in p.covered_before]
    if p.previous.cache.get("fingerprint") != p.cache.fingerprint:
        log.warning("--since-last-run: run %s used another drift cache; rows before its watermark keep those "
                    "labels (run without --since-last-run to relabel everything)", p.previous.get("run_id"))


def _top_k(c: RescoreConfig, cache: DriftCache, label: RunManifest) -> int:
    """``--top-k`` (refused above the cache's class count), else the label run's, at most every class."""
    if c.top_k is not None:
        return cache.top_k_for(c.top_k, c.cache, DEFAULT_TOP_K)
    return cache.top_k_for(None, c.cache, label.settings.get("top_k") or DEFAULT_TOP_K)


def plan_rescore(c: RescoreConfig) -> RescorePlan:
    """Everything that can be refused is refused here, before any part is read."""
    run_id = c.run_id or default_run_id()
    storage.check_output_folder(c.out)
    cache = DriftCache.load(c.cache)
    label = open_embeddings(c.embeddings, cache.encoder_id, f"the drift cache {c.cache} was built with",
                            "das rescore", remedy="it cannot re-score them; rebuild it with "
                                                  "`das build-cache --checkpoint {made_with} ...`")
    run_uri = storage.join(c.out, RUN_PREFIX + run_id)
    _refuse_existing_run(run_uri, c.overwrite)
    if label.format_version != FORMAT_VERSION:
        raise Refused(f"{c.embeddings} was written by das {label.das_version} in an older layout; relabel it "
                      f"with this version (or rescore it with das 0.1)")
    listing = OutputStore(c.embeddings).listing()
    committed, uncommitted = listing.committed_units(), listing.uncommitted_units()
    if uncommitted:
        log.info("ignoring %d uncommitted unit(s) of %s (no end part: still being labelled, or interrupted)",
                 len(uncommitted), c.embeddings)
    if not label.complete:
        log.info("the label output is %s: its %d committed unit(s) are scored", label.status, len(committed))
    p = RescorePlan(c, run_id, run_uri, normalise_uri(c.embeddings), label, label.checkpoint_fingerprint, cache,
                    _top_k(c, cache, label), listing, committed, uncommitted,
                    todo=list(committed))
    if c.since_last_run:
        _apply_watermark(p)
    return p


# ------------------------------------------------------------------ the run's manifest and counts (driver)

def count_stats(stats: list[dict], p: RescorePlan) -> dict:
    """The run's counts from its units' ``PART_STATS_SCHEMA`` rows (failed units count only as failed)."""
    done = [s for s in stats if not s["failure"]]
    kinds: Counter = Counter()
    for s in done:
        kinds.update(json.loads(s["errors_by_kind"]))
    return {**{key: sum(s[key] for s in done) for key in ("files", "ok", "error", "segments")},
            "errors_by_kind": dict(sorted(kinds.items())), "units": len(done), "units_failed": len(stats) - len(done),
            "units_skipped_before_watermark": len(p.committed) - len(p.todo)}


def run_manifest(p: RescorePlan, status: str, counts: dict, this_run: dict, covered: set[str]) -> RunManifest:
    c, cache, label, settings = p.config, p.cache, p.label, p.label.settings
    previous = p.previous
    return RunManifest(
        job="rescore", status=status, das_version=__version__, format_version=FORMAT_VERSION,
        settings={"embeddings": p.embeddings, "cache_fingerprint": cache.fingerprint,
                  "checkpoint_fingerprint": p.checkpoint_id, "top_k": p.top_k,
                  "embedding_dtype": settings.get("embedding_dtype"), "since_last_run": c.since_last_run,
                  "snr_db": settings.get("snr_db"), "seed": settings.get("seed"), "noise": settings.get("noise")},
        cache=cache_block(c.cache, cache),
        checkpoint=dict(label.checkpoint or {"fingerprint": p.checkpoint_id}),
        counts=counts, runs=(this_run,),
        extra={"embeddings": {"source": p.embeddings, "copied": c.copy_embeddings}, "run_id": p.run_id,
               "windows": label.get("windows"),
               "source": {"embeddings": c.embeddings, "label_status": label.status,
                          "label_cache_fingerprint": settings.get("cache_fingerprint"), "label_counts": label.counts,
                          "units_committed": len(p.committed), "units_uncommitted_ignored": len(p.uncommitted)},
               "previous_run": ({"run_id": previous.get("run_id"), "finished": _finished(previous) or None}
                                if previous else None),
               "watermark": Watermark.of(label, p.checkpoint_id, covered).to_dict()})


class RescoreTally:
    """The driver's side of a run: the units' statistics as they come, progress lines, the final manifest."""

    def __init__(self, p: RescorePlan):
        self.plan = p
        self.stats: list[dict] = []
        self.this_run = {"started": utc_now(), "units_to_do": len(p.todo)}
        self.start = time.monotonic()
        self.scoring_start: float | None = None     # Ray start-up excluded: the basis of rows/s
        self.last_progress = 0.0
        self.wall = self.scoring_s = 0.0

    def scoring_started(self) -> None:
        self.scoring_start = self.last_progress = time.monotonic()

    def add(self, table: pa.Table) -> None:
        """Take in the ``PART_STATS_SCHEMA`` rows of finished units; logs failures and, now and then, progress."""
        for row in table.to_pylist():
            self.stats.append(row)
            if row["failure"]:
                log.error("part failed: %s", row["failure"])
        now = time.monotonic()
        if now - self.last_progress >= self.plan.config.progress_every_s:
            self.last_progress = now
            rows = sum(s["segments"] for s in self.stats)
            log.info("progress: %d/%d units, %d segments, %.1f rows/s", len(self.stats), len(self.plan.todo), rows,
                     rows / max(now - (self.scoring_start or self.start), 1e-9))

    @property
    def failures(self) -> list[str]:
        return [s["failure"] for s in self.stats if s["failure"]]

    def finish(self) -> RunManifest:
        """Write and return the run's final manifest: ``complete``, or ``failed`` when a unit failed."""
        p = self.plan
        self.wall = time.monotonic() - self.start
        self.scoring_s = time.monotonic() - self.scoring_start if self.scoring_start is not None else 0.0
        counts = count_stats(self.stats, p)
        covered = p.covered_before | {s["part"] for s in self.stats if not s["failure"]}
        self.this_run.update({"finished": utc_now(), "wall_time_s": round(self.wall, 3),
                              "scoring_time_s": round(self.scoring_s, 3), "units_done": counts["units"],
                              "segments_done": counts["segments"],
                              "segments_per_s": (round(counts["segments"] / self.scoring_s, 4)
                                                 if self.scoring_s > 0 else None)})
        manifest = run_manifest(p, "failed" if self.failures else "complete", counts, self.this_run, covered)
        manifest.write(p.run_uri)
        return manifest

    def abandon(self, exc: BaseException) -> None:
        """Record a run ended by ``exc`` as ``interrupted`` or ``failed`` (with the reason), never ``running``."""
        p = self.plan
        status, reason = ended_by(exc)
        counts = count_stats(self.stats, p)
        self.this_run.update({"finished": utc_now(), "ended": status, "reason": reason, "units_done": counts["units"]})
        covered = p.covered_before | {s["part"] for s in self.stats if not s["failure"]}
        try:
            run_manifest(p, status, counts, self.this_run, covered).write(p.run_uri)
        except Exception as write_error:  # noqa: BLE001 - the run's own error is the one to report
            log.error("could not record the %s run in %s (%s)", status, p.run_uri, write_error)

    def raise_if_failed(self) -> None:
        failures = self.failures
        if failures:
            raise RunFailed(f"{len(failures)} of {len(self.plan.todo)} unit(s) could not be re-scored, e.g. "
                            f"{failures[0]}. The other units are in {self.plan.run_uri}; this run is not a "
                            f"--since-last-run watermark")

    def summary(self, manifest: RunManifest) -> str:
        """The lines ``das rescore`` prints at the end."""
        p, counts, cache, weights = self.plan, manifest.counts, manifest.cache, manifest.weights
        errs = ", ".join(f"{k} {v}" for k, v in counts["errors_by_kind"].items())
        skipped, rate = counts["units_skipped_before_watermark"], (
            counts["segments"] / self.scoring_s if self.scoring_s > 0 else 0)
        return (f"das rescore: {manifest.status} in {self.wall:.1f} s (run {p.run_id})\n"
                f"  units:     {counts['units']} re-scored of {len(p.committed)} committed"
                + (f", {skipped} before the watermark of run {manifest.get('previous_run')['run_id']}" if skipped
                   else "")
                + (f", {counts['units_failed']} FAILED" if counts["units_failed"] else "") + "\n"
                f"  files:     {counts['files']} = {counts['ok']} ok + {counts['error']} error"
                + (f" (error rows carried over: {errs})" if counts["error"] else "") + "\n"
                f"  rows:      {counts['segments']} segments in {self.scoring_s:.1f} s, {rate:.1f} rows/s\n"
                f"  cache:     {cache['n_labels']} classes, lam {cache['lam']:g}, {cache['fingerprint']}\n"
                + weights_line(weights) + "\n  output:    " + p.run_uri + " "
                + ("(segments/, files/, _manifest.json)" if counts["units"] else
                   "(_manifest.json only: nothing to score)"))


def start_run(p: RescorePlan) -> RescoreTally:
    """Clear the run's folder (``--overwrite``) and write its ``running`` manifest; the tally of the run."""
    store = OutputStore(p.run_uri)
    if p.config.overwrite and store.has_output():
        log.info("--overwrite: deleting the previous run in %s", p.run_uri)
        store.remove_all()
    tally = RescoreTally(p)
    run_manifest(p, "running", count_stats([], p), tally.this_run, p.covered_before).write(p.run_uri)
    log.info("re-scoring %d of %d committed unit(s) of %s with %d class(es), lam=%g, top-k %d -> %s",
             len(p.todo), len(p.committed), p.config.embeddings, len(p.cache.labels), p.cache.lam, p.top_k,
             p.run_uri)
    return tally

