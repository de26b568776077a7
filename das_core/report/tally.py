"""What a report shows, folded from a das output one committed unit at a time (``Tally``), and each run's
throughput as its manifest records it.

Counts and fixed-bin histograms only, so that the report's memory does not
grow with the number of windows; only the files' durations (one float each)
and the few longest files' identities (for their timelines) are kept whole.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from das_core.output.format import ERROR, FILES_DIR, OK, SEGMENTS_DIR
from das_core.output.store import OutputStore
from das_core.report.picks import PICK_COLUMNS, TopWindows
from das_core.runtime.progress import STEADY_MIN_CHUNKS, STEADY_MIN_S

TOP_LABELS = 20            # bars per label chart; the rest is one "other" bar
TIMELINES = 3              # the longest files get a label strip each
SCORE_BINS = np.linspace(-1.0, 1.5, 251)     # DAS scores are cosines plus a small bonus: fixed bins, any run
SEGMENT_COLUMNS = ["file_id", "start_s", "end_s", "label", "score", "zs_label"]
FILE_COLUMNS = ["file_id", "path", "status", "error_kind", "error", "duration_s", "label", "zs_label"]
ERROR_EXAMPLES = 3         # files named per kind of error


@dataclass
class Tally:
    """What the report shows, folded unit by unit."""

    windows_by_label: Counter = field(default_factory=Counter)
    files_by_label: Counter = field(default_factory=Counter)
    window_changes: Counter = field(default_factory=Counter)      # (zero-shot label, DAS label) -> windows
    file_changes: Counter = field(default_factory=Counter)
    errors_by_kind: Counter = field(default_factory=Counter)
    error_examples: dict = field(default_factory=dict)            # kind -> up to ERROR_EXAMPLES (path, error)
    top: TopWindows = field(default_factory=lambda: TopWindows(0))   # report.html's excerpts, per label
    score_hist: dict = field(default_factory=dict)                # DAS label -> counts over SCORE_BINS
    durations: list = field(default_factory=list)                 # arrays of ok files' durations (s)
    longest: list = field(default_factory=list)                   # heap of (duration, file_id, path, unit)
    windows: int = 0
    files_ok: int = 0
    units: int = 0

    def add_segments(self, table: pa.Table) -> None:
        """Fold in a ``segments`` table (``SEGMENT_COLUMNS``); unlabelled windows are left out."""
        table = table.filter(pc.is_valid(table.column("label")))
        labels = table.column("label").to_pylist()
        zs = table.column("zs_label").to_pylist()
        scores = table.column("score").to_numpy(zero_copy_only=False)
        self.windows += len(labels)
        self.windows_by_label.update(labels)
        self.window_changes.update((a, b) for a, b in zip(zs, labels) if a != b)
        by_label: dict[str, list[int]] = {}
        for i, lb in enumerate(labels):
            by_label.setdefault(lb, []).append(i)
        for lb, rows in by_label.items():
            counts, _ = np.histogram(scores[rows], bins=SCORE_BINS)
            self.score_hist[lb] = self.score_hist.get(lb, 0) + counts

    def add_files(self, table: pa.Table, unit: str) -> None:
        """Fold in the ``files`` table (``FILE_COLUMNS``) of committed unit ``unit``."""
        status = table.column("status").to_pylist()
        kinds = table.column("error_kind").to_pylist()
        for s, kind, path, error in zip(status, kinds, table.column("path").to_pylist(),
                                        table.column("error").to_pylist()):
            if s == ERROR:
                self.errors_by_kind[kind or "unknown"] += 1
                shown = self.error_examples.setdefault(kind or "unknown", [])
                if len(shown) < ERROR_EXAMPLES:
                    shown.append((path, error or ""))
        ok = table.filter(pc.equal(table.column("status"), OK))
        self.files_ok += len(ok)
        self.files_by_label.update(lb for lb in ok.column("label").to_pylist() if lb is not None)
        self.file_changes.update((a, b) for a, b in zip(ok.column("zs_label").to_pylist(),
                                                         ok.column("label").to_pylist()) if a != b)
        durations = ok.column("duration_s").fill_null(0.0).to_numpy(zero_copy_only=False)
        self.durations.append(durations)
        for d, fid, path in zip(durations.tolist(), ok.column("file_id").to_pylist(), ok.column("path").to_pylist()):
            item = (d, fid, path, unit)
            if len(self.longest) < TIMELINES:
                heapq.heappush(self.longest, item)
            elif item > self.longest[0]:
                heapq.heapreplace(self.longest, item)


def tally(store: OutputStore, per_label: int = 0) -> Tally:
    """Fold every committed unit of ``store`` into a ``Tally``, one staged unit or one pack in memory at a time;
    with ``per_label``, keep the ``per_label`` highest-scoring windows of each label too (``Tally.top``)."""
    listing = store.listing()
    t = Tally(top=TopWindows(per_label))
    columns = SEGMENT_COLUMNS if per_label <= 0 else list(dict.fromkeys(SEGMENT_COLUMNS + PICK_COLUMNS))
    for _, units in listing.groups():
        files = dict(store.read_by_unit(units, FILES_DIR, listing, FILE_COLUMNS))
        segments = dict(store.read_by_unit(units, SEGMENTS_DIR, listing, columns))
        for unit in units:
            t.units += 1
            if files.get(unit) is not None:
                t.add_files(files[unit], unit)
            if segments.get(unit) is not None:
                t.add_segments(segments[unit].select(SEGMENT_COLUMNS))
                t.top.add(segments[unit])
    return t


def file_windows(store: OutputStore, unit: str, file_id: str, columns: list[str] | None = None) -> pa.Table:
    """The windows of one file (the label columns, or ``columns``), in time order."""
    columns = list(dict.fromkeys(SEGMENT_COLUMNS + (columns or [])))
    tables = store.read_unit(unit, SEGMENTS_DIR, store.listing(), columns)
    if not tables:
        return pa.table({c: [] for c in columns})
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.filter(pc.equal(table.column("file_id"), file_id)).sort_by("start_s")


def top_with_other(counts: Counter, n: int = TOP_LABELS) -> list[tuple[str, int]]:
    """The ``n`` largest entries, then one ``other (k labels)`` entry for the rest (if any)."""
    top = counts.most_common(n)
    rest = counts.total() - sum(v for _, v in top)
    if rest > 0:
        top.append((f"other ({len(counts) - len(top)} labels)", rest))
    return top


def run_rates(manifest: dict) -> list[dict]:
    """Each run of the manifest with a throughput: start, windows done, wall time, windows/s (overall, steady)."""
    out = []
    for r in manifest.get("runs") or []:
        rate = r.get("segments_per_s")
        if rate is None:
            continue
        out.append({"started": r.get("started") or "?", "segments": r.get("segments_done") or 0,
                    "wall_s": r.get("wall_time_s"), "rate": rate, "steady": _steady(r)})
    return out


def _steady(run: dict) -> float | None:
    """A run's "after start-up" rate, only where enough chunks and seconds came after the first chunk
    (``das_core.runtime.progress.steady_rate``); runs recorded before that rule was kept have none."""
    after_s = (run.get("wall_time_s") or 0) - (run.get("startup_s") or 0)
    if (run.get("steady_chunks") or 0) < STEADY_MIN_CHUNKS or after_s < STEADY_MIN_S:
        return None
    return run.get("steady_segments_per_s")
