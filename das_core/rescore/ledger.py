"""The driver's ledger of a ``das rescore`` run: the units' statistics, progress, the manifest and the summary.

The run's folder holds, besides the units' parts (``das_core.rescore.unit``)::

    OUT/run_id=<ID>/_manifest.json      settings, cache, counts, watermark

written ``running`` when the run starts (``start_run``), and ``complete``,
``failed`` or ``interrupted`` (with the reason) when it ends.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

import pyarrow as pa

from das_core import __version__
from das_core.errors import RunFailed
from das_core.output.format import FORMAT_VERSION
from das_core.output.manifest import RunManifest
from das_core.output.record import cache_block, ended_by, utc_now, weights_line
from das_core.output.store import OutputStore
from das_core.rescore.plan import RescorePlan, Watermark, finished_at

log = logging.getLogger("das.rescore")

def count_stats(stats: list[dict], plan: RescorePlan) -> dict:
    """The run's counts from its units' ``PART_STATS_SCHEMA`` rows (failed units count only as failed)."""
    done = [s for s in stats if not s["failure"]]
    kinds: Counter = Counter()
    for s in done:
        kinds.update(json.loads(s["errors_by_kind"]))
    return {**{key: sum(s[key] for s in done) for key in ("files", "ok", "error", "segments")},
            "errors_by_kind": dict(sorted(kinds.items())), "units": len(done), "units_failed": len(stats) - len(done),
            "units_skipped_before_watermark": len(plan.committed) - len(plan.todo)}


def run_manifest(plan: RescorePlan, status: str, counts: dict, this_run: dict, covered: set[str]) -> RunManifest:
    """The run's manifest with ``status``, ``counts``, the record of ``this_run`` and the watermark over the
    label units ``covered`` (this run's and its predecessors')."""
    config, cache, label, settings = plan.config, plan.cache, plan.label, plan.label.settings
    previous = plan.previous
    return RunManifest(
        job="rescore", status=status, das_version=__version__, format_version=FORMAT_VERSION,
        settings={"embeddings": plan.embeddings, "cache_fingerprint": cache.fingerprint,
                  "checkpoint_fingerprint": plan.checkpoint_id, "top_k": plan.top_k,
                  "embedding_dtype": settings.get("embedding_dtype"), "since_last_run": config.since_last_run,
                  "snr_db": settings.get("snr_db"), "seed": settings.get("seed"), "noise": settings.get("noise"),
                  # the label run's batch shape and precision: das search --like here encodes a clip as label did
                  "batch_size": settings.get("batch_size"), "precision": settings.get("precision")},
        cache=cache_block(config.cache, cache),
        checkpoint=dict(label.checkpoint or {"fingerprint": plan.checkpoint_id}),
        counts=counts, runs=(this_run,),
        extra={"embeddings": {"source": plan.embeddings, "copied": config.copy_embeddings}, "run_id": plan.run_id,
               "windows": label.get("windows"),
               "source": {"embeddings": config.embeddings, "label_status": label.status,
                          "label_cache_fingerprint": settings.get("cache_fingerprint"), "label_counts": label.counts,
                          "units_committed": len(plan.committed), "units_uncommitted_ignored": len(plan.uncommitted)},
               "previous_run": ({"run_id": previous.get("run_id"), "finished": finished_at(previous) or None}
                                if previous else None),
               "watermark": Watermark.of(label, plan.checkpoint_id, covered).to_dict()})


class RescoreTally:
    """The driver's side of a run: the units' statistics as they come, progress lines, the final manifest."""

    def __init__(self, plan: RescorePlan):
        self.plan = plan
        self.stats: list[dict] = []
        self.this_run = {"started": utc_now(), "units_to_do": len(plan.todo)}
        self.start = time.monotonic()
        self.scoring_start: float | None = None     # Ray start-up excluded: the basis of rows/s
        self.last_progress = 0.0
        self.wall = self.scoring_s = 0.0

    def scoring_started(self) -> None:
        """Mark the start of scoring (after any Ray start-up): the basis of the rows/s rate."""
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
        """The failure lines of the units that could not be re-scored so far."""
        return [s["failure"] for s in self.stats if s["failure"]]

    def finish(self) -> RunManifest:
        """Write and return the run's final manifest: ``complete``, or ``failed`` when a unit failed."""
        plan = self.plan
        self.wall = time.monotonic() - self.start
        self.scoring_s = time.monotonic() - self.scoring_start if self.scoring_start is not None else 0.0
        counts = count_stats(self.stats, plan)
        covered = plan.covered_before | {s["part"] for s in self.stats if not s["failure"]}
        self.this_run.update({"finished": utc_now(), "wall_time_s": round(self.wall, 3),
                              "scoring_time_s": round(self.scoring_s, 3), "units_done": counts["units"],
                              "segments_done": counts["segments"],
                              "segments_per_s": (round(counts["segments"] / self.scoring_s, 4)
                                                 if self.scoring_s > 0 else None)})
        manifest = run_manifest(plan, "failed" if self.failures else "complete", counts, self.this_run, covered)
        manifest.write(plan.run_uri)
        return manifest

    def abandon(self, exc: BaseException) -> None:
        """Record a run ended by ``exc`` as ``interrupted`` or ``failed`` (with the reason), never ``running``."""
        plan = self.plan
        status, reason = ended_by(exc)
        counts = count_stats(self.stats, plan)
        self.this_run.update({"finished": utc_now(), "ended": status, "reason": reason, "units_done": counts["units"]})
        covered = plan.covered_before | {s["part"] for s in self.stats if not s["failure"]}
        try:
            run_manifest(plan, status, counts, self.this_run, covered).write(plan.run_uri)
        except Exception as write_error:  # noqa: BLE001 - the run's own error is the one to report
            log.error("could not record the %s run in %s (%s)", status, plan.run_uri, write_error)

    def raise_if_failed(self) -> None:
        """``RunFailed`` naming the first failed unit, when any unit could not be re-scored."""
        failures = self.failures
        if failures:
            raise RunFailed(f"{len(failures)} of {len(self.plan.todo)} unit(s) could not be re-scored, e.g. "
                            f"{failures[0]}. The other units are in {self.plan.run_uri}; this run is not a "
                            f"--since-last-run watermark")

    def summary(self, manifest: RunManifest) -> str:
        """The lines ``das rescore`` prints at the end."""
        plan, counts, cache, weights = self.plan, manifest.counts, manifest.cache, manifest.weights
        errs = ", ".join(f"{k} {v}" for k, v in counts["errors_by_kind"].items())
        skipped, rate = counts["units_skipped_before_watermark"], (
            counts["segments"] / self.scoring_s if self.scoring_s > 0 else 0)
        return (f"das rescore: {manifest.status} in {self.wall:.1f} s (run {plan.run_id})\n"
                f"  units:     {counts['units']} re-scored of {len(plan.committed)} committed"
                + (f", {skipped} before the watermark of run {manifest.get('previous_run')['run_id']}" if skipped
                   else "")
                + (f", {counts['units_failed']} FAILED" if counts["units_failed"] else "") + "\n"
                f"  files:     {counts['files']} = {counts['ok']} ok + {counts['error']} error"
                + (f" (error rows carried over: {errs})" if counts["error"] else "") + "\n"
                f"  rows:      {counts['segments']} segments in {self.scoring_s:.1f} s, {rate:.1f} rows/s\n"
                f"  cache:     {cache['n_labels']} classes, lam {cache['lam']:g}, {cache['fingerprint']}\n"
                + weights_line(weights) + "\n  output:    " + plan.run_uri + " "
                + ("(segments/, files/, _manifest.json)" if counts["units"] else
                   "(_manifest.json only: nothing to score)"))


def start_run(plan: RescorePlan) -> RescoreTally:
    """Clear the run's folder (``--overwrite``) and write its ``running`` manifest; the tally of the run."""
    store = OutputStore(plan.run_uri)
    if plan.config.overwrite and store.has_output():
        log.info("--overwrite: deleting the previous run in %s", plan.run_uri)
        store.remove_all()
    tally = RescoreTally(plan)
    run_manifest(plan, "running", count_stats([], plan), tally.this_run, plan.covered_before).write(plan.run_uri)
    log.info("re-scoring %d of %d committed unit(s) of %s with %d class(es), lam=%g, top-k %d -> %s",
             len(plan.todo), len(plan.committed), plan.config.embeddings, len(plan.cache.labels), plan.cache.lam,
             plan.top_k, plan.run_uri)
    return tally

