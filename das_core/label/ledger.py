"""The ledger of a ``das label`` run: the driver's side, everything but the stages that decode and encode.

``LabelRun.start`` prepares OUT (--overwrite, --resume clean-up, the unit table, a ``running`` manifest);
``observe`` takes each chunk's statistics, from whichever engine ran the stages, and returns the unit they
make whole, to be committed; ``finish`` writes the final manifest, prints the summary and says whether the
run failed; ``abandon`` records a run that ended otherwise as ``failed`` or ``interrupted``. The counts
(``RunCounts``) come from the chunk statistics only: ``files/`` is never read back for them.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from das_core import __version__
from das_core.audio.windows import MIN_TAIL_SECONDS, WINDOW_SECONDS
from das_core.errors import RunFailed
from das_core.io import storage
from das_core.label.compact import compact
from das_core.label.plan import LabelPlan, settings_of
from das_core.label.summary import summary
from das_core.label.units import write_unit_table
from das_core.output.format import FILES_DIR, FORMAT_VERSION, PIECES_DIR, SEGMENTS_DIR
from das_core.output.manifest import RunManifest
from das_core.output.pack import PackPlanner, committed_rows
from das_core.output.record import cache_block, ended_by, utc_now
from das_core.runtime import engine
from das_core.runtime.progress import steady_rate

log = logging.getLogger("das")


ERROR_EXAMPLES = 5        # failed files named in the summary (and the run's entry in the manifest)


@dataclass
class RunCounts:
    """Counts of a run kept up to date from chunk statistics (``files/`` is never read back for them).

    One scale: a "file" is a ``files/`` row, i.e. a plain file or a member of a tar or Parquet shard.
    Shards are units of work; how many members one holds is known only once it is decoded.
    """

    files: int = 0
    ok: int = 0
    error: int = 0
    segments: int = 0
    windows: int = 0
    errors_by_kind: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    nodes: set = field(default_factory=set)
    error_examples: list = field(default_factory=list)      # a few "path (kind)" of files that failed

    def add(self, stats: dict) -> None:
        """Count one chunk's statistics."""
        self.skipped.update(json.loads(stats.get("skipped") or "{}"))
        room = ERROR_EXAMPLES - len(self.error_examples)
        if room > 0:
            self.error_examples.extend(json.loads(stats.get("error_examples") or "[]")[:room])
        self.ok += stats["files_ok"]
        self.error += stats["files_error"]
        self.files += stats["files_ok"] + stats["files_error"]
        self.segments += stats["segments"]
        self.windows += stats["windows"]
        self.errors_by_kind.update(json.loads(stats["errors_by_kind"]))
        self.nodes.update(n for n in (stats.get("decoded_on"), stats.get("node")) if n)

    def total(self, prior: dict) -> dict:
        """These counts added to ``prior`` (the committed units' counts, on --resume): the manifest's ``counts``."""
        kinds = Counter(prior.get("errors_by_kind") or {})
        kinds.update(self.errors_by_kind)
        skipped = Counter(prior.get("skipped_members") or {})
        skipped.update(self.skipped)
        return {"files": prior["files"] + self.files, "ok": prior["ok"] + self.ok,
                "error": prior["error"] + self.error, "segments": prior["segments"] + self.segments,
                "errors_by_kind": dict(sorted(kinds.items())),
                "skipped_members": dict(sorted(skipped.items()))}


def run_manifest(plan: LabelPlan, status: str, counts: dict, runs: list[dict]) -> RunManifest:
    """The ``_manifest.json`` of a label run (one schema, read back by rescore, evaluate and --resume)."""
    p, c, cache = plan, plan.config, plan.cache
    return RunManifest(
        job="label", status=status, das_version=__version__, format_version=p.format_version,
        settings=settings_of(c, cache.fingerprint, p.checkpoint_id),
        cache=cache_block(c.cache, cache),
        checkpoint={"uri": c.checkpoint, "fingerprint": p.checkpoint_id, **p.checkpoint_info},
        counts=counts, runs=tuple(runs),
        extra={"windows": {"window_s": WINDOW_SECONDS, "hop_s": WINDOW_SECONDS, "min_tail_s": MIN_TAIL_SECONDS,
                           "file_pooling": "max over windows"},
               "work": {"units": len(p.units), "inputs": p.n_inputs, "files_per_unit": c.files_per_unit,
                        "scale": "counts.files = files/ rows (plain files and shard members); inputs = listed "
                                 "entries (a shard is one)",
                        "unit_bytes": c.unit_bytes, "chunk_windows": c.windows_per_chunk},
               "skipped": _skipped(p, counts)})


def _skipped(plan: LabelPlan, counts: dict) -> dict:
    """Inputs not labelled: what the listing skipped, plus shard members skipped while decoding."""
    listed = plan.skipped.as_dict()
    by_reason = Counter(listed["by_reason"])
    by_reason.update(counts.get("skipped_members") or {})
    return {"total": sum(by_reason.values()), "by_reason": dict(sorted(by_reason.items())),
            "examples": listed["examples"]}


def new_run_entry(plan: LabelPlan) -> dict:
    """The manifest's entry for a run that starts now (``runs``): when, and what it is to do."""
    return {"started": utc_now(), "units_to_do": len(plan.todo),
            "files_to_do": plan.todo_files}


class UnitTracker:
    """Which units have all their chunks written, and which of their chunks wrote pieces."""

    def __init__(self):
        self.seen: dict[str, set[int]] = {}
        self.expected: dict[str, int] = {}
        self.pieces: dict[str, list[int]] = {}
        self.whole: set[str] = set()

    def is_repeat(self, stats: dict) -> bool:
        """A chunk already counted: a retried task may hand the driver its statistics twice; the part it
        wrote has the same name and overwrote the first, so it must neither count nor commit twice."""
        unit = stats["unit"]
        return unit in self.whole or stats["chunk"] in self.seen.get(unit, ())

    def add(self, stats: dict) -> tuple[str, list[int]] | None:
        """Count a chunk (repeats are ignored); the unit and its pieces' chunks once the unit is whole."""
        if self.is_repeat(stats):
            return None
        unit = stats["unit"]
        self.seen.setdefault(unit, set()).add(stats["chunk"])
        if stats["pieces"]:
            self.pieces.setdefault(unit, []).append(stats["chunk"])
        if stats["last"]:
            self.expected[unit] = stats["chunk"] + 1
        if len(self.seen[unit]) == self.expected.get(unit):
            del self.seen[unit], self.expected[unit]
            self.whole.add(unit)
            return unit, sorted(self.pieces.pop(unit, []))
        return None

    @property
    def open_units(self) -> int:
        """Units with chunks counted that are not whole yet."""
        return len(self.seen)


class LabelRun:
    """The driver's side of one label run, everything but Ray: what is written before, during and after.

    ``start`` prepares OUT (--overwrite, --resume clean-up, the unit table,
    a ``running`` manifest); ``observe`` counts each chunk's statistics and
    returns the unit they make whole, to be committed; ``finish`` writes the
    final manifest, prints the summary and says whether the run failed;
    ``abandon`` records a run that ended otherwise as ``failed`` or ``interrupted``.
    """

    def __init__(self, plan: LabelPlan, run_id: str | None = None):
        p, c = plan, plan.config
        self.plan = p
        self.runs = list(p.previous.runs) if c.resume and p.previous else []
        self.engine, self.engine_reason = engine.choose(c.local, c.ray, engine.label_too_big(
            p.todo, c.num_gpus, c.actor_count))
        self.this_run = {**({"run_id": run_id} if run_id else {}), **new_run_entry(p),
                         "device": "cuda" if c.num_gpus > 0 else "cpu", "torch_threads": c.torch_threads,
                         "engine": self.engine}
        self.counts, self.tracker = RunCounts(), UnitTracker()
        self.t0 = self.last_progress = self.last_manifest = time.monotonic()
        self.first_output: tuple[float, int] | None = None
        self.chunks = 0                           # chunks counted (repeats excluded)
        self.aborted: str | None = None          # why the run stopped early
        self.failure: RunFailed | None = None     # set by finish: the run's result is not acceptable
        self.started = False                      # a "running" manifest was written
        shard = p.todo.column("shard").to_pylist() if "shard" in p.todo.column_names else [None] * len(p.todo)
        self.shard_units = {u for u, k in zip(p.todo.column("unit").to_pylist(), shard) if k}
        self.plain_todo = p.todo_files - len(self.shard_units)   # a shard unit lists its shard: one entry
        self.plain_counted = 0                    # files/ rows counted this run from plain-file units
        self.unit_rows: Counter = Counter()       # segment rows of this run's units, from their chunks' statistics
        self.packer = PackPlanner([], c.pack_rows)     # set up by ``start``, from what OUT holds

    def start(self) -> bool:
        """Prepare OUT; False (and a line printed) when --resume finds every unit committed."""
        p, c, store = self.plan, self.plan.config, self.plan.store
        if c.overwrite and store.has_output():
            log.info("--overwrite: deleting previous results in %s", c.out)
            store.remove_all()
        if p.checkpoint_info.get("weights") == "random":
            log.warning("checkpoint %s has RANDOM weights (a das test/demo checkpoint): labels are meaningless",
                        c.checkpoint)
        if c.resume and p.previous and not len(p.todo):
            packed = self._pack_the_rest()
            print(f"das label: nothing to do: all {len(p.units)} unit(s) of {c.out} are committed "
                  f"(status {p.previous.status})" + (f"; packed the {packed} unit(s) left unpacked" if packed else ""),
                  flush=True)
            return False
        if c.resume and p.previous:
            removed = store.remove_units(set(p.todo.column("unit").to_pylist()), store.listing())
            log.info("resuming: %d of %d unit(s) committed, %d to do (%d file(s), %d of them new in the input); "
                     "removed %d part(s) left by unfinished units", len(p.units) - len(p.todo), len(p.units),
                     len(p.todo), p.todo_files, p.added_files, removed)
        self._plan_packs()
        if p.writes_unit_table:
            write_unit_table(c.out, p.units)
        self._write_manifest("running", p.prior_counts)
        self.started = True
        log.info("labelling %d file(s) in %d unit(s) with %d encoder actor(s) (%s), %d class(es), lam=%g; "
                 "engine: %s (%s)", p.todo_files, len(p.todo), c.actor_count,
                 f"{c.gpus_per_actor:g} GPU each" if c.gpus_per_actor else "CPU", len(p.cache.labels), p.cache.lam,
                 self.engine, self.engine_reason)
        self.t0 = self.last_progress = self.last_manifest = time.monotonic()
        return True

    def _pack_the_rest(self) -> int:
        """Pack what a run that committed every unit left unpacked (stopped before its tail was packed, or written
        with ``--pack-rows 0``), as ``das compact`` does; how many units were packed. A run of another format
        version keeps its layout (``das compact`` converts it)."""
        c = self.plan.config
        if not c.pack_rows or self.plan.format_version != FORMAT_VERSION:
            return 0
        return compact(c.out, c.pack_rows)["units"]

    def _plan_packs(self) -> None:
        """Clear what an interrupted pack left (``StoreListing.stale_parts``) and plan the packs from the lowest
        unpacked unit, with the committed units not packed yet (their rows read from their files rows)."""
        store = self.plan.store
        listing = store.listing()
        if listing.stale_parts():
            log.info("removed %d part(s) left by an interrupted pack", store.remove_stale(listing))
            listing = store.listing()
        packed = listing.packed_units()
        self.packer = PackPlanner([u for u in self.plan.units.column("unit").to_pylist() if u not in packed],
                                  self.plan.config.pack_rows)
        for unit, rows in committed_rows(store, listing):
            self.packer.add(unit, rows)

    def packs_ready(self, committed: list[str], final: bool = False) -> list[list[str]]:
        """The ranges to pack now, ``committed`` being the units committed since the last call (``final``: every
        unit of the run is committed: the tail too)."""
        for unit in committed:
            self.packer.add(unit, self.unit_rows.pop(unit, 0))
        return self.packer.ready(final)

    def _write_manifest(self, status: str, counts: dict) -> dict:
        manifest = run_manifest(self.plan, status, counts, self.runs + [self.this_run])
        manifest.write(self.plan.config.out)
        return manifest.to_dict()

    def observe(self, stats: dict) -> tuple[str, list[int]] | None:
        """Count one chunk's statistics; the unit (with its pieces' chunks) they make whole, if any.

        Sets ``aborted`` once the error budget is exceeded for good (``known_files``).
        """
        if self.tracker.is_repeat(stats):
            return None               # a retried task's chunk, already counted (its part was overwritten)
        p, c, counts = self.plan, self.plan.config, self.counts
        counts.add(stats)
        self.unit_rows[stats["unit"]] += stats["segments"]
        if stats["unit"] not in self.shard_units:
            self.plain_counted += stats["files_ok"] + stats["files_error"]
        now = time.monotonic()
        self.chunks += 1
        if self.first_output is None:
            # start-up (Ray Data planning, actors importing and loading the model) ends with the first output
            self.first_output = (now - self.t0, stats["windows"])
        if now - self.last_manifest >= c.manifest_every_s:
            self.last_manifest = now
            self._write_manifest("running", counts.total(p.prior_counts))
        errors, known = p.prior_counts["error"] + counts.error, self.known_files()
        if c.over_error_budget(errors, known):
            self.aborted = (f"{errors} of the {known} files known so far failed to decode, more than "
                            f"--max-error-fraction {c.max_error_fraction:g} of them however the rest turns out; "
                            "stopping early")
        return self.tracker.add(stats)

    # what the progress line reads (jobs.monitor.WatchedRun)
    @property
    def progress_every_s(self) -> float:
        """How often a log gets the progress line (a terminal's line is rewritten every second)."""
        return self.plan.config.progress_every_s

    @property
    def files_done(self) -> int:
        """``files/`` rows counted in this invocation."""
        return self.counts.files

    @property
    def windows_done(self) -> int:
        """Windows encoded in this invocation."""
        return self.counts.windows

    @property
    def files_to_do(self) -> int:
        """Entries (plain files and shards) this invocation labels."""
        return self.plan.todo_files

    @property
    def units_committed_before(self) -> int:
        """Units committed by earlier invocations (--resume)."""
        return len(self.plan.units) - len(self.plan.todo)

    @property
    def units_total(self) -> int:
        """Every unit of the run."""
        return len(self.plan.units)

    def known_files(self) -> int:
        """Files (``files/`` rows) known so far: those counted, plus the plain files still to do. A shard's
        members are known only as they are decoded, so the early stop never judges them before."""
        return (self.plan.prior_counts["files"] + self.counts.files
                + max(self.plain_todo - self.plain_counted, 0))

    def not_done(self) -> dict:
        """Plain files and shards of this run's units that no counted row covers (never negative)."""
        return {"files": max(self.plain_todo - self.plain_counted, 0),
                "shards": len(self.shard_units - self.tracker.whole)}

    def check_whole(self) -> None:
        """After the pipeline: every unit it started is whole, unless the run stopped early."""
        if self.aborted is None and self.tracker.open_units:
            raise RuntimeError(f"pipeline ended with {self.tracker.open_units} unit(s) not whole")

    def abandon(self, exc: BaseException) -> None:
        """Record a run that ends by ``exc`` as ``interrupted`` (Ctrl-C, SIGTERM) or ``failed`` with the one-line
        reason, so that no manifest is left ``running``; the next plain run then says what to do."""
        if not self.started:
            return
        status, reason = ended_by(exc)
        self.this_run.update({"finished": utc_now(),
                              "ended": status, "reason": reason, "files_done": self.counts.files,
                              "error_examples": self.counts.error_examples})
        try:
            self._write_manifest(status, self.counts.total(self.plan.prior_counts))
        except Exception as write_error:  # noqa: BLE001 - the run's own error is the one to report
            log.error("could not record the %s run in %s (%s)", status, self.plan.config.out, write_error)
        self.started = False

    def finish(self) -> dict:
        """Write the final manifest and print the summary; RunFailed when too many files failed."""
        p, c, counts, run = self.plan, self.plan.config, self.counts, self.this_run
        removed = sum(storage.remove_temporaries(p.store.path(sub)) for sub in (SEGMENTS_DIR, FILES_DIR, PIECES_DIR))
        if removed:
            log.info("removed %d temporary file(s) left by workers that died while writing", removed)
        wall = time.monotonic() - self.t0
        total = counts.total(p.prior_counts)
        run.update({"finished": utc_now(), "wall_time_s": round(wall, 3),
                    "files_done": counts.files, "segments_done": counts.segments,
                    "segments_per_s": round(counts.segments / wall, 4) if wall > 0 else None,
                    "nodes": len(counts.nodes), "error_examples": counts.error_examples})
        if self.first_output is not None:
            run["startup_s"] = round(self.first_output[0], 3)
            steady = steady_rate(*self.first_output, self.chunks, wall, counts.windows)
            if steady is not None:          # too few chunks after start-up to measure: left out
                run.update(steady_segments_per_s=round(steady, 4), steady_chunks=self.chunks - 1)
        failed = self.aborted or (c.over_error_budget(total["error"], total["files"]) and
                                  f"{total['error']} of {total['files']} files failed to decode (more than "
                                  f"--max-error-fraction {c.max_error_fraction:g}, and at least "
                                  f"--min-errors-to-fail {c.min_errors_to_fail})")
        run.update({"ended": "failed" if failed else "complete", **({"reason": failed} if failed else {})})
        manifest = self._write_manifest("failed" if failed else "complete", total)
        self.started = False
        print(summary(manifest, c.out, wall, counts.segments, self.not_done(), run.get("steady_segments_per_s")),
              flush=True)
        self.failure = (RunFailed(f"{failed}. Rows for every processed file are in {c.out}/files/ "
                                  "(see the 'error' column)") if failed else None)
        return manifest
