"""``das report``: a Markdown report with figures of a ``das label`` output or a ``das rescore`` run folder.

Writes ``OUT/report/report.md`` and its PNG figures beside it. The output is
read one committed unit at a time and folded into counts and fixed-bin
histograms (``Tally``), so the report's memory does not grow with the number
of windows; only the files' durations (one float each) and the few longest
files' windows (their timelines) are kept whole.
"""

from __future__ import annotations

import heapq
import io
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from das_core.errors import Refused
from das_core.io import storage
from das_core.output.format import ERROR, FILES_DIR, OK, SEGMENTS_DIR
from das_core.output.manifest import RunManifest
from das_core.output.store import OutputStore
from das_core.runtime.progress import STEADY_MIN_CHUNKS, STEADY_MIN_S

REPORT_DIR = "report"
REPORT_MD = "report.md"
REPORT_RECORD = "_report.json"      # the files the last report wrote: the only ones a report or --overwrite removes
TOP_LABELS = 20            # bars per label chart; the rest is one "other" bar
TOP_CHANGES = 15
HIST_LABELS = 6            # score histograms: the most frequent top labels
TIMELINES = 3              # the longest files get a label strip each
SCORE_BINS = np.linspace(-1.0, 1.5, 251)     # DAS scores are cosines plus a small bonus: fixed bins, any run
SEGMENT_COLUMNS = ["file_id", "start_s", "end_s", "label", "score", "zs_label"]
FILE_COLUMNS = ["file_id", "path", "status", "error_kind", "duration_s", "label", "zs_label"]


@dataclass
class Tally:
    """What the report shows, folded unit by unit."""

    windows_by_label: Counter = field(default_factory=Counter)
    files_by_label: Counter = field(default_factory=Counter)
    window_changes: Counter = field(default_factory=Counter)      # (zero-shot label, DAS label) -> windows
    file_changes: Counter = field(default_factory=Counter)
    errors_by_kind: Counter = field(default_factory=Counter)
    score_hist: dict = field(default_factory=dict)                # DAS label -> counts over SCORE_BINS
    durations: list = field(default_factory=list)                 # arrays of ok files' durations (s)
    longest: list = field(default_factory=list)                   # heap of (duration, file_id, path, unit)
    windows: int = 0
    files_ok: int = 0
    units: int = 0

    def add_segments(self, table: pa.Table) -> None:
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
        status = table.column("status").to_pylist()
        kinds = table.column("error_kind").to_pylist()
        self.errors_by_kind.update(k or "unknown" for s, k in zip(status, kinds) if s == ERROR)
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


def tally(store: OutputStore) -> Tally:
    """Fold every committed unit of ``store`` into a ``Tally``, one unit in memory at a time."""
    listing = store.listing()
    t = Tally()
    for unit in listing.committed_units():
        t.units += 1
        for name in listing.parts_of(unit, FILES_DIR):
            t.add_files(store.read_part(FILES_DIR, name, FILE_COLUMNS), unit)
        for name in listing.parts_of(unit, SEGMENTS_DIR):
            t.add_segments(store.read_part(SEGMENTS_DIR, name, SEGMENT_COLUMNS))
    return t


def file_windows(store: OutputStore, unit: str, file_id: str) -> pa.Table:
    """The windows of one file (label columns only), in time order."""
    listing = store.listing()
    tables = [store.read_part(SEGMENTS_DIR, name, SEGMENT_COLUMNS) for name in listing.parts_of(unit, SEGMENTS_DIR)]
    if not tables:
        return pa.table({c: [] for c in SEGMENT_COLUMNS})
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.filter(pc.equal(table.column("file_id"), file_id)).sort_by("start_s")


def top_with_other(counts: Counter, n: int = TOP_LABELS) -> list[tuple[str, int]]:
    """The ``n`` largest entries, then one ``other (k labels)`` entry for the rest (if any)."""
    top = counts.most_common(n)
    rest = counts.total() - sum(v for _, v in top)
    if rest > 0:
        top.append((f"other ({len(counts) - len(top)} labels)", rest))
    return top


# ------------------------------------------------------------------ figures (matplotlib, Agg)

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_counts(axis) -> None:
    """Counts are whole numbers: no 0.25 ticks on a count axis."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _hbar(ax, items: list[tuple[str, int]], title: str, xlabel: str, color: str = "#4C72B0") -> None:
    """A horizontal bar chart, largest on top, values written at the bar ends (legible with 50 names)."""
    names = [n for n, _ in items][::-1]
    values = [v for _, v in items][::-1]
    bars = ax.barh(range(len(values)), values, color=color)
    ax.set_yticks(range(len(values)), names, fontsize=8)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.bar_label(bars, fmt="%d", fontsize=7, padding=2)
    ax.margins(x=0.12)
    ax.grid(axis="x", alpha=0.3)
    _integer_counts(ax.xaxis)


def label_distribution_png(t: Tally) -> bytes:
    plt = _pyplot()
    files, windows = top_with_other(t.files_by_label), top_with_other(t.windows_by_label)
    rows = max(len(files), len(windows), 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, max(2.6, 1.2 + 0.28 * rows)))
    _hbar(axes[0], files, f"DAS top label of files (n = {t.files_ok})", "files")
    _hbar(axes[1], windows, f"DAS top label of 10 s windows (n = {t.windows})", "windows", color="#55A868")
    fig.suptitle("Label distribution", fontsize=13)
    fig.tight_layout()
    return _png(fig)


def changes_png(t: Tally) -> bytes:
    plt = _pyplot()
    changes = [(f"{a}  →  {b}", n) for (a, b), n in t.window_changes.most_common(TOP_CHANGES)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.6 + 0.3 * max(len(changes), 2)),
                             gridspec_kw={"width_ratios": [1, 2.2]})
    kept_w, kept_f = t.windows - sum(t.window_changes.values()), t.files_ok - sum(t.file_changes.values())
    x = np.arange(2)
    axes[0].bar(x - 0.2, [kept_w, kept_f], 0.4, label="same label", color="#8C8C8C")
    axes[0].bar(x + 0.2, [t.windows - kept_w, t.files_ok - kept_f], 0.4, label="label changed", color="#C44E52")
    axes[0].set_xticks(x, ["windows", "files"])
    axes[0].set_ylabel("count")
    _integer_counts(axes[0].yaxis)
    axes[0].set_title("DAS vs plain zero-shot", fontsize=11)
    axes[0].legend(fontsize=8)
    if changes:
        _hbar(axes[1], changes, "Most common changes of window label (zero-shot → DAS)", "windows",
              color="#C44E52")
    else:
        axes[1].axis("off")
        axes[1].text(0.5, 0.5, "DAS and plain zero-shot agree on every window", ha="center", va="center")
    fig.tight_layout()
    return _png(fig)


def score_hist_png(t: Tally) -> bytes:
    plt = _pyplot()
    labels = [lb for lb, _ in t.windows_by_label.most_common(HIST_LABELS)]
    cols = min(3, max(len(labels), 1))
    nrows = max(1, -(-len(labels) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    for ax, lb in zip(axes.flat, labels):
        counts = t.score_hist[lb]
        used = np.flatnonzero(counts)
        lo, hi = used.min(), used.max() + 1
        ax.stairs(counts[lo:hi], SCORE_BINS[lo:hi + 1], fill=True, color="#4C72B0")
        ax.set_title(f"{lb} ({int(counts.sum())} windows)", fontsize=9)
        ax.set_xlabel("DAS score (cosine + lam x drift)")
        ax.set_ylabel("windows")
        _integer_counts(ax.yaxis)
    fig.suptitle(f"DAS score of the top label, {len(labels)} most frequent labels", fontsize=12)
    fig.tight_layout()
    return _png(fig)


def errors_png(t: Tally) -> bytes:
    plt = _pyplot()
    items = t.errors_by_kind.most_common()
    fig, ax = plt.subplots(figsize=(8, max(2.2, 1.2 + 0.35 * len(items))))
    _hbar(ax, items, f"Files that could not be labelled, by kind (n = {t.errors_by_kind.total()})", "files",
          color="#C44E52")
    fig.tight_layout()
    return _png(fig)


def durations_png(t: Tally) -> bytes:
    plt = _pyplot()
    d = np.concatenate(t.durations) if t.durations else np.zeros(0)
    d = d[d > 0]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    log_scale = len(d) and d.max() / max(d.min(), 1e-3) > 100
    bins = np.geomspace(d.min(), d.max() * 1.001, 40) if log_scale else 40
    ax.hist(d, bins=bins, color="#4C72B0")
    if log_scale:
        ax.set_xscale("log")
    ax.set_xlabel("duration (s)" + (", log scale" if log_scale else ""))
    ax.set_ylabel("files")
    _integer_counts(ax.yaxis)
    ax.set_title(f"Durations of the labelled files (n = {len(d)}, total {d.sum() / 3600:.2f} h)", fontsize=11)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


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


def throughput_png(runs: list[dict]) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, max(2.2, 1.4 + 0.45 * len(runs))))
    names = [r["started"].replace("T", " ").split("+")[0] for r in runs][::-1]
    y = np.arange(len(runs))
    overall = [r["rate"] for r in runs][::-1]
    steady = [r["steady"] or 0.0 for r in runs][::-1]
    bars = ax.barh(y + 0.2, overall, 0.4, label="whole run", color="#4C72B0")
    ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    if any(steady):
        bars = ax.barh(y - 0.2, steady, 0.4, label="after start-up", color="#55A868")
        ax.bar_label(bars, labels=[f"{v:.1f}" if v else "too short to measure" for v in steady], fontsize=7, padding=2)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel("windows per second")
    ax.set_title("Throughput of each run (by start time, UTC)", fontsize=11)
    ax.legend(fontsize=8, loc="lower right")
    ax.margins(x=0.15)
    fig.tight_layout()
    return _png(fig)


def timeline_png(windows: pa.Table, path: str, duration_s: float) -> bytes:
    """A strip of the DAS top label along the file's time axis, one colour per label."""
    plt = _pyplot()
    labels = windows.column("label").to_pylist()
    order = [lb for lb, _ in Counter(labels).most_common()]
    colours = plt.get_cmap("tab20").colors
    colour = {lb: colours[i % len(colours)] for i, lb in enumerate(order)}
    minutes = duration_s >= 600
    unit = 60.0 if minutes else 1.0
    starts, ends = windows.column("start_s").to_pylist(), windows.column("end_s").to_pylist()
    duration_s = max(duration_s, max(ends))
    shown = order[:12]
    fig, ax = plt.subplots(figsize=(12, max(1.8, 0.5 + 0.22 * -(-len(shown) // 2))))
    for lb, start, end in zip(labels, starts, ends):
        ax.barh(0, (end - start) / unit, left=start / unit, height=0.8, color=colour[lb], edgecolor="white",
                linewidth=0.6)
    ax.set_yticks([])
    ax.set_xlim(0, max(duration_s, 1e-6) / unit)
    ax.set_xlabel("time (min)" if minutes else "time (s)")
    ax.set_title(f"{path}: DAS top label per 10 s window ({duration_s / unit:.1f} {'min' if minutes else 's'})",
                 fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[lb]) for lb in shown]
    names = shown + ([f"+{len(order) - 12} more labels"] if len(order) > 12 else [])
    if len(order) > 12:
        handles.append(plt.Rectangle((0, 0), 1, 1, color="white"))
    ax.legend(handles, names, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 if len(names) <= 4 else 2,
              fontsize=8, frameon=False, title="top label (most windows first)", title_fontsize=8)
    fig.tight_layout()
    return _png(fig)


# ------------------------------------------------------------------ the report

def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


def _header(uri: str, manifest: dict, t: Tally) -> list[str]:
    counts = manifest.get("counts") or {}
    cache = manifest.get("cache") or {}
    weights = (manifest.get("checkpoint") or {}).get("weights")
    n_err = t.errors_by_kind.total()
    lines = [f"# das report: {uri}", "",
             f"- job: `das {manifest.get('job', '?')}`, status **{manifest.get('status', '?')}**, das "
             f"{manifest.get('das_version', '?')}",
             f"- files: {t.files_ok + n_err} = {t.files_ok} ok + {n_err} error; {t.windows} windows of 10 s; "
             f"{t.units} committed unit(s)"
             + (f" (the manifest counts {counts.get('files')} files)" if counts.get("files") not in
                (None, t.files_ok + n_err) else ""),
             f"- cache: {cache.get('n_labels', '?')} classes, lam {cache.get('lam', '?')}, "
             f"`{cache.get('fingerprint', '?')}`",
             f"- checkpoint: `{(manifest.get('checkpoint') or {}).get('uri', '?')}`"
             + (" — **RANDOM weights: the labels are meaningless**" if weights == "random" else ""), ""]
    return lines


def _changes_md(t: Tally) -> list[str]:
    changed_w, changed_f = sum(t.window_changes.values()), sum(t.file_changes.values())
    lines = ["## DAS against plain zero-shot", "",
             f"DAS changes the top label of **{changed_w} of {t.windows} windows** ({_pct(changed_w, t.windows)}) "
             f"and **{changed_f} of {t.files_ok} files** ({_pct(changed_f, t.files_ok)}) relative to plain "
             "zero-shot with the same prompts (`zs_label`).", "", "![DAS against zero-shot](das_vs_zero_shot.png)", ""]
    if t.window_changes:
        lines += ["| zero-shot → DAS | windows |", "|---|---:|"]
        lines += [f"| {a} → {b} | {n} |" for (a, b), n in t.window_changes.most_common(10)]
        lines.append("")
    return lines


def _errors_md(t: Tally, figures: dict) -> list[str]:
    lines = ["## Errors by kind", ""]
    if not t.errors_by_kind:
        return lines + ["No file failed.", ""]
    figures["errors.png"] = errors_png(t)
    lines += ["![errors by kind](errors.png)", "", "| kind | files |", "|---|---:|"]
    lines += [f"| {k} | {n} |" for k, n in t.errors_by_kind.most_common()]
    return lines + ["", "Each error row's `error` column in `files/` names the file and the cause.", ""]


def _throughput_md(manifest: dict, figures: dict) -> list[str]:
    runs = run_rates(manifest)
    lines = ["## Throughput", ""]
    if not runs:
        return lines + ["The manifest records no finished run with a throughput.", ""]
    figures["throughput.png"] = throughput_png(runs)
    lines += ["![throughput](throughput.png)", "", "| run started (UTC) | windows | wall (s) | windows/s | "
              "after start-up |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['started']} | {r['segments']} | {r['wall_s']} | {r['rate']:.2f} | "
              f"{'' if r['steady'] is None else format(r['steady'], '.2f')} |" for r in runs]
    return lines + [""]


def _timelines_md(store: OutputStore, t: Tally, figures: dict) -> list[str]:
    lines = ["## The longest files along time", ""]
    longest = sorted(t.longest, reverse=True)
    if not longest:
        return lines + ["No file was labelled.", ""]
    for i, (duration, fid, path, unit) in enumerate(longest, start=1):
        windows = file_windows(store, unit, fid)
        if not len(windows):
            continue
        name = f"timeline_{i}.png"
        figures[name] = timeline_png(windows, path, duration)
        lines += [f"### {path} ({duration:.1f} s, {len(windows)} windows)", "", f"![timeline of {path}]({name})", ""]
    return lines


def build_report(uri: str) -> tuple[str, dict[str, bytes]]:
    """The Markdown text and the PNG figures (name -> bytes) of the output at ``uri``."""
    uri = storage.absolute(uri)
    store = OutputStore(uri)
    manifest = RunManifest.read(uri) or {}
    t = tally(store)
    figures: dict[str, bytes] = {}
    lines = _header(uri, manifest, t)
    lines += ["## Label distribution", ""]
    if t.windows:
        figures["label_distribution.png"] = label_distribution_png(t)
        figures["das_vs_zero_shot.png"] = changes_png(t)
        figures["scores.png"] = score_hist_png(t)
        lines += [f"DAS top label counted over files and over 10 s windows ({TOP_LABELS} most frequent labels, "
                  "the rest as \"other\").", "", "![label distribution](label_distribution.png)", ""]
        lines += _changes_md(t)
        lines += ["## Scores of the top label", "", "DAS score of each window's top label, for the most frequent "
                  "labels: a label whose windows mostly score low is a weak match.", "", "![scores](scores.png)", ""]
    else:
        lines += ["No window was labelled.", ""]
    lines += _errors_md(t, figures)
    if t.files_ok:
        figures["durations.png"] = durations_png(t)
        lines += ["## Durations", "", "![durations](durations.png)", ""]
    lines += _throughput_md(manifest, figures)
    lines += _timelines_md(store, t, figures)
    return "\n".join(lines), figures


class ReportRefused(Refused):
    """The report would replace a file in OUT/report/ that das did not write."""


def _is_report_name(name: object) -> bool:
    """A name das report writes: a plain ``.md`` or ``.png`` file name (a record can never name anything else)."""
    return (isinstance(name, str) and "/" not in name and "\\" not in name and not name.startswith(".")
            and name.endswith((".md", ".png")))


def recorded_report_files(uri: str) -> list[str]:
    """The files of ``uri``'s report folder that das's record (``report/_report.json``) names as its own."""
    record = storage.join(uri, REPORT_DIR, REPORT_RECORD)
    if not storage.exists(record):
        return []
    try:
        data = json.loads(storage.read_bytes(record))
    except ValueError:
        return []
    names = data.get("files") if isinstance(data, dict) else None
    return sorted(n for n in (names if isinstance(names, list) else []) if _is_report_name(n))


def _write_record(uri: str, names: set[str]) -> None:
    text = json.dumps({"written_by": "das report", "files": sorted(names)}, indent=2) + "\n"
    storage.write_bytes_atomic(storage.join(uri, REPORT_DIR, REPORT_RECORD), text.encode())


def remove_report(uri: str) -> int:
    """Delete the files the last report recorded, and the record (``--overwrite``); how many were deleted.
    Anything else in the report folder stays, and the folder with it."""
    names = recorded_report_files(uri)
    for name in names:
        storage.remove(storage.join(uri, REPORT_DIR, name))
    record = storage.join(uri, REPORT_DIR, REPORT_RECORD)
    had_record = storage.exists(record)
    if had_record:
        storage.remove(record)
    storage.remove_empty_folder(storage.join(uri, REPORT_DIR))
    return len(names) + int(had_record)


def write_report(uri: str) -> str:
    """Write ``uri/report/report.md`` and its figures (local or s3://); returns the report's URI.

    Only das's own files are replaced or removed: those of the previous report, named by its record
    (``report/_report.json``). A file of the same name that is not on the record is refused
    (``ReportRefused``), and any other file in the folder is left as it is.
    """
    uri = storage.absolute(uri)
    text, figures = build_report(uri)
    new = {**figures, REPORT_MD: text.encode()}
    old = recorded_report_files(uri)
    foreign = [n for n in sorted(new) if n not in old and storage.exists(storage.join(uri, REPORT_DIR, n))]
    if foreign:
        folder = storage.join(uri, REPORT_DIR)
        raise ReportRefused(f"cannot write the report in {folder} ({foreign[0]} is there and das did not write "
                            f"it: {REPORT_RECORD} does not name it); move that file elsewhere and run "
                            f"`das report {uri}` again")
    _write_record(uri, set(old) | set(new))       # first: whatever happens next, every das file is on record
    for name, data in new.items():
        storage.write_bytes_atomic(storage.join(uri, REPORT_DIR, name), data)
    for name in old:
        if name not in new:                       # a figure of the earlier report that this one has not
            storage.remove(storage.join(uri, REPORT_DIR, name))
    _write_record(uri, set(new))
    return storage.join(uri, REPORT_DIR, REPORT_MD)


def report_after_run(out: str) -> None:
    """The report written at the end of das label / das rescore: a failure is a warning, never the run's."""
    import logging

    try:
        target = write_report(out)
    except Exception as exc:  # noqa: BLE001 - the labels are written; a report problem must not fail the run
        logging.getLogger("das").warning("could not write the report of %s (%s: %s); run `das report %s` to retry",
                                         out, type(exc).__name__, exc, out)
        return
    print(f"das report: written to {target}", flush=True)
