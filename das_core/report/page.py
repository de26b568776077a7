"""``report.html``: the report's figures, playable excerpts of each frequent label's best windows, the longest
files' timelines (click a window to hear it) and the errors by kind with example files (``build_page``).

One self-contained page: relative links only (the figures beside it, the excerpts in ``excerpts/``), inline
CSS and a few lines of inline JavaScript, no server, no external resource, so the folder opens from a local
disk or a static S3 website as it is.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from das_core.report.excerpts import Excerpt
from das_core.report.picks import EXCERPT_LABELS, TIMELINE_DRAWN, TIMELINE_MIN_WINDOWS, TIMELINE_PLAYABLE, Pick
from das_core.report.tally import Tally

PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
           "#64B5CD"]
FIGURE_TITLES = {"label_distribution.png": "Label distribution", "das_vs_zero_shot.png": "DAS against plain zero-shot",
                 "scores.png": "Scores of the top label", "errors.png": "Errors by kind",
                 "durations.png": "Durations", "throughput.png": "Throughput"}

STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border-bottom:1px solid #e3e3e3;padding:.25em .6em;
text-align:left;vertical-align:middle}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%}audio{height:32px;width:260px}.note{color:#a33}.path{font-family:monospace;font-size:12px;
word-break:break-all}.warn{background:#fee;border:1px solid #c44;padding:.5em}
.timeline{display:flex;gap:1px;margin:.4em 0}.timeline button{height:34px;border:0;padding:0;cursor:pointer;
min-width:3px}.timeline button:disabled{cursor:default;opacity:.45}.timeline button.playing{outline:3px solid #000}
.legend span{display:inline-block;margin-right:1em}.legend i{display:inline-block;width:12px;height:12px;
margin-right:4px;vertical-align:middle}"""

SCRIPT = """document.querySelectorAll('.timeline button[data-src]').forEach(function (b) {
  b.addEventListener('click', function () {
    var player = document.getElementById(b.dataset.player);
    document.querySelectorAll('.timeline button.playing').forEach(function (x) { x.classList.remove('playing'); });
    b.classList.add('playing');
    player.src = b.dataset.src;
    player.play();
  });
});"""


@dataclass
class Timeline:
    """A long file's windows in time order, for its timeline."""

    path: str
    duration_s: float
    windows: list[Pick]          # the first TIMELINE_DRAWN windows
    total: int                   # all the file's windows


def _e(text: object) -> str:
    """``text`` escaped for HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def clock(seconds: float) -> str:
    """``seconds`` as ``m:ss.s`` (``h:mm:ss`` from an hour on)."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{seconds % 60:04.1f}"
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _noise(w: Pick) -> str:
    """The window's noise as the run mixed it (the excerpt is the source audio, without it)."""
    if w.snr_db is None:
        return "clean"
    return f"{_e(w.noise_source or 'noise')} at {w.snr_db:g} dB SNR"


def _player(w: Pick, excerpt: Excerpt | None) -> str:
    """The excerpt's ``<audio>`` element, or the note that stands in its place."""
    if excerpt is None or excerpt.data is None:
        note = excerpt.note if excerpt is not None else "not excerpted"
        return f'<p class="note missing">excerpt unavailable: {_e(note)}</p>'
    return (f'<audio controls preload="metadata" src="{_e(w.excerpt_name)}" data-seconds="{w.seconds:.3f}">'
            "</audio>")


def _header(uri: str, manifest: dict, tallied: Tally) -> list[str]:
    n_err = tallied.errors_by_kind.total()
    cache = manifest.get("cache") or {}
    lines = [f"<h1>das report: <span class=\"path\">{_e(uri)}</span></h1>", "<ul>",
             f"<li>job <code>das {_e(manifest.get('job', '?'))}</code>, status <b>{_e(manifest.get('status', '?'))}"
             f"</b>, das {_e(manifest.get('das_version', '?'))}</li>",
             f"<li>files: {tallied.files_ok + n_err} = {tallied.files_ok} ok + {n_err} error; {tallied.windows} "
             f"windows of 10 s; {tallied.units} committed unit(s)</li>",
             f"<li>cache: {_e(cache.get('n_labels', '?'))} classes, lam {_e(cache.get('lam', '?'))}</li>", "</ul>"]
    if (manifest.get("checkpoint") or {}).get("weights") == "random":
        lines.append('<p class="warn">The checkpoint has RANDOM weights: the labels are meaningless.</p>')
    return lines


def _figures(figures: list[str]) -> list[str]:
    lines = ["<h2>Figures</h2>"]
    for name in figures:
        title = FIGURE_TITLES.get(name) or name.removesuffix(".png").replace("_", " ")
        lines += [f"<h3>{_e(title)}</h3>", f'<img src="{_e(name)}" alt="{_e(title)}">']
    return lines


def _label_sections(tallied: Tally, excerpts: dict, per_label: int) -> list[str]:
    labels = [lb for lb, _ in tallied.windows_by_label.most_common(EXCERPT_LABELS)]
    lines = ["<h2>Listen: the best windows of the most frequent labels</h2>",
             f"<p>Up to {per_label} highest-scoring windows per label, for the {len(labels)} most frequent DAS top "
             f"label(s) (at most {EXCERPT_LABELS}). Each excerpt is the window cut from the <b>source</b> audio with "
             "das's decoder (mono, 48 kHz, Opus): noise that the run mixed in is not in it.</p>"]
    if per_label <= 0 or not labels:
        return lines + ["<p>No excerpt was asked for (<code>--excerpts 0</code>) or no window was labelled.</p>"]
    for label in labels:
        lines += [f'<h3 class="label">{_e(label)} <small>({tallied.windows_by_label[label]} windows)</small></h3>',
                  "<table><tr><th>excerpt</th><th>file</th><th>time</th><th>DAS score</th><th>zero-shot</th>"
                  "<th>noise</th></tr>"]
        for w in tallied.top.best(label):
            zero_shot = f"{_e(w.zs_label)} {_score(w.zs_score)}" if w.zs_label else ""
            lines.append(f"<tr><td>{_player(w, excerpts.get((w.file_id, w.segment)))}</td>"
                         f'<td class="path">{_e(w.path)}</td><td>{clock(w.start_s)} – {clock(w.end_s)}</td>'
                         f'<td class="num">{_score(w.score)}</td><td>{zero_shot}</td><td>{_noise(w)}</td></tr>')
        lines.append("</table>")
    return lines


def _timeline(index: int, t: Timeline, excerpts: dict, colours: dict) -> list[str]:
    player = f"timeline-player-{index}"
    buttons = []
    for w in t.windows:
        excerpt = excerpts.get((w.file_id, w.segment))
        colour = colours.setdefault(w.label, PALETTE[len(colours) % len(PALETTE)])
        title = _e(f"{clock(w.start_s)} – {clock(w.end_s)}: {w.label} (DAS {_score(w.score)})")
        style = f"flex:{max(w.seconds, 0.01):.2f};background:{colour}"
        if excerpt is not None and excerpt.data is not None:
            buttons.append(f'<button style="{style}" title="{title}" data-player="{player}" '
                           f'data-src="{_e(w.excerpt_name)}"></button>')
        else:
            why = excerpt.note if excerpt is not None else "not excerpted"
            buttons.append(f'<button style="{style}" title="{title} ({_e(why)})" disabled></button>')
    used = dict.fromkeys(w.label for w in t.windows)
    legend = "".join(f'<span><i style="background:{colours[lb]}"></i>{_e(lb)}</span>' for lb in used)
    notes = dict.fromkeys(x.note for x in (excerpts.get((w.file_id, w.segment)) for w in t.windows)
                          if x is not None and x.note)
    drawn = "" if t.total == len(t.windows) else f", the first {len(t.windows)} drawn (the whole file: figures)"
    return [f'<h3><span class="path">{_e(t.path)}</span> <small>({clock(t.duration_s)}, {t.total} windows{drawn})'
            "</small></h3>", f'<div class="timeline" id="timeline-{index}">{"".join(buttons)}</div>',
            f'<div class="legend">{legend}</div>', *(f'<p class="note">not playable: {_e(n)}</p>' for n in notes),
            f'<audio id="{player}" controls preload="none"></audio>']


def _timelines(timelines: list[Timeline], excerpts: dict) -> list[str]:
    lines = ["<h2>The longest files along time</h2>",
             f"<p>The DAS top label of each 10 s window of the longest files (those with at least "
             f"{TIMELINE_MIN_WINDOWS} windows, the first {TIMELINE_DRAWN} drawn). Click a window to hear it; beyond "
             f"{TIMELINE_PLAYABLE} windows, an evenly spaced {TIMELINE_PLAYABLE} of them are playable.</p>"]
    if not timelines:
        return lines + ["<p>No file has that many windows.</p>"]
    colours: dict = {}
    for i, t in enumerate(timelines, start=1):
        lines += _timeline(i, t, excerpts, colours)
    return lines


def _errors(tallied: Tally) -> list[str]:
    lines = ["<h2>Errors by kind</h2>"]
    if not tallied.errors_by_kind:
        return lines + ["<p>No file failed.</p>"]
    lines.append("<table><tr><th>kind</th><th>files</th><th>examples</th></tr>")
    for kind, n in tallied.errors_by_kind.most_common():
        examples = "".join(f'<li><span class="path">{_e(path)}</span>: {_e(error)}</li>'
                           for path, error in tallied.error_examples.get(kind, []))
        lines.append(f'<tr><td>{_e(kind)}</td><td class="num">{n}</td><td><ul>{examples}</ul></td></tr>')
    return lines + ["</table>"]


def build_page(uri: str, manifest: dict, tallied: Tally, figures: list[str], timelines: list[Timeline],
               excerpts: dict[tuple[str, int], Excerpt]) -> str:
    """The text of report.html: ``figures`` are the names of the PNGs beside it, ``excerpts`` the cut windows
    by (file id, segment) (those with data are in ``excerpts/``, the others show their note)."""
    body = _header(uri, manifest, tallied)
    body += _label_sections(tallied, excerpts, tallied.top.per_label)
    body += _timelines(timelines, excerpts)
    body += _errors(tallied)
    body += _figures(figures)
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>das report: {_e(uri)}</title>", f"<style>{STYLE}</style></head><body>", *body,
                      f"<script>{SCRIPT}</script>", "</body></html>", ""])
