"""The text of ``report.md`` and the figures it links (``build_report``): header, label distribution, DAS
against zero-shot, scores, errors, durations, throughput, timelines."""

from __future__ import annotations

from das_core.io import storage
from das_core.output.manifest import RunManifest
from das_core.output.store import OutputStore
from das_core.report.figures import (
    changes_png,
    durations_png,
    errors_png,
    label_distribution_png,
    score_hist_png,
    throughput_png,
    timeline_png,
)
from das_core.report.tally import TOP_LABELS, Tally, file_windows, run_rates, tally


def _pct(part: int, whole: int) -> str:
    """``part`` as a percentage of ``whole``, "n/a" for none."""
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


def _header(uri: str, manifest: dict, tallied: Tally) -> list[str]:
    counts = manifest.get("counts") or {}
    cache = manifest.get("cache") or {}
    weights = (manifest.get("checkpoint") or {}).get("weights")
    n_err = tallied.errors_by_kind.total()
    lines = [f"# das report: {uri}", "",
             f"- job: `das {manifest.get('job', '?')}`, status **{manifest.get('status', '?')}**, das "
             f"{manifest.get('das_version', '?')}",
             f"- files: {tallied.files_ok + n_err} = {tallied.files_ok} ok + {n_err} error; "
             f"{tallied.windows} windows of 10 s; {tallied.units} committed unit(s)"
             + (f" (the manifest counts {counts.get('files')} files)" if counts.get("files") not in
                (None, tallied.files_ok + n_err) else ""),
             f"- cache: {cache.get('n_labels', '?')} classes, lam {cache.get('lam', '?')}, "
             f"`{cache.get('fingerprint', '?')}`",
             f"- checkpoint: `{(manifest.get('checkpoint') or {}).get('uri', '?')}`"
             + (" — **RANDOM weights: the labels are meaningless**" if weights == "random" else ""),
             "- listen: [report.html](report.html), the best windows of the most frequent labels as playable "
             "excerpts, and the longest files' timelines", ""]
    return lines


def _changes_md(tallied: Tally) -> list[str]:
    changed_w, changed_f = sum(tallied.window_changes.values()), sum(tallied.file_changes.values())
    lines = ["## DAS against plain zero-shot", "",
             f"DAS changes the top label of **{changed_w} of {tallied.windows} windows** "
             f"({_pct(changed_w, tallied.windows)}) "
             f"and **{changed_f} of {tallied.files_ok} files** ({_pct(changed_f, tallied.files_ok)}) relative to plain "
             "zero-shot with the same prompts (`zs_label`).", "", "![DAS against zero-shot](das_vs_zero_shot.png)", ""]
    if tallied.window_changes:
        lines += ["| zero-shot → DAS | windows |", "|---|---:|"]
        lines += [f"| {a} → {b} | {n} |" for (a, b), n in tallied.window_changes.most_common(10)]
        lines.append("")
    return lines


def _errors_md(tallied: Tally, figures: dict) -> list[str]:
    lines = ["## Errors by kind", ""]
    if not tallied.errors_by_kind:
        return lines + ["No file failed.", ""]
    figures["errors.png"] = errors_png(tallied)
    lines += ["![errors by kind](errors.png)", "", "| kind | files |", "|---|---:|"]
    lines += [f"| {k} | {n} |" for k, n in tallied.errors_by_kind.most_common()]
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


def _timelines_md(store: OutputStore, tallied: Tally, figures: dict) -> list[str]:
    lines = ["## The longest files along time", ""]
    longest = sorted(tallied.longest, reverse=True)
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


def build_report(uri: str, tallied: Tally | None = None) -> tuple[str, dict[str, bytes]]:
    """The Markdown text and the PNG figures (name -> bytes) of the output at ``uri``; ``tallied``: its
    ``tally``, when the caller has it already."""
    uri = storage.absolute(uri)
    store = OutputStore(uri)
    manifest = RunManifest.read(uri) or {}
    tallied = tally(store) if tallied is None else tallied
    figures: dict[str, bytes] = {}
    lines = _header(uri, manifest, tallied)
    lines += ["## Label distribution", ""]
    if tallied.windows:
        figures["label_distribution.png"] = label_distribution_png(tallied)
        figures["das_vs_zero_shot.png"] = changes_png(tallied)
        figures["scores.png"] = score_hist_png(tallied)
        lines += [f"DAS top label counted over files and over 10 s windows ({TOP_LABELS} most frequent labels, "
                  "the rest as \"other\").", "", "![label distribution](label_distribution.png)", ""]
        lines += _changes_md(tallied)
        lines += ["## Scores of the top label", "", "DAS score of each window's top label, for the most frequent "
                  "labels: a label whose windows mostly score low is a weak match.", "", "![scores](scores.png)", ""]
    else:
        lines += ["No window was labelled.", ""]
    lines += _errors_md(tallied, figures)
    if tallied.files_ok:
        figures["durations.png"] = durations_png(tallied)
        lines += ["## Durations", "", "![durations](durations.png)", ""]
    lines += _throughput_md(manifest, figures)
    lines += _timelines_md(store, tallied, figures)
    return "\n".join(lines), figures
