"""The report's figures as PNG bytes (matplotlib, Agg backend): labels, changes, scores, errors, durations,
throughput and timelines."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pyarrow as pa

from das_core.report.tally import SCORE_BINS, Tally, top_with_other

TOP_CHANGES = 15
HIST_LABELS = 6            # score histograms: the most frequent top labels


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_counts(axis) -> None:
    """Counts are whole numbers: no 0.25 ticks on a count axis."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _png(fig) -> bytes:
    """``fig`` as PNG bytes; the figure is closed."""
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
    """Bars of the DAS top label over files and over windows, side by side."""
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
    """How many windows and files DAS relabels against plain zero-shot, and the most common changes."""
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
    """Histograms of the top label's DAS score, for the most frequent labels."""
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
    """Bars of the files that could not be labelled, by kind of error."""
    plt = _pyplot()
    items = t.errors_by_kind.most_common()
    fig, ax = plt.subplots(figsize=(8, max(2.2, 1.2 + 0.35 * len(items))))
    _hbar(ax, items, f"Files that could not be labelled, by kind (n = {t.errors_by_kind.total()})", "files",
          color="#C44E52")
    fig.tight_layout()
    return _png(fig)


def durations_png(t: Tally) -> bytes:
    """A histogram of the ok files' durations (log scale when they span more than 100x)."""
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


def throughput_png(runs: list[dict]) -> bytes:
    """Bars of each run's windows/s (``run_rates``): whole run, and after start-up where measured."""
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
