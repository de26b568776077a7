"""Writing a report into ``OUT/report/``: ``das report``, and the report at the end of a label or rescore run."""

from __future__ import annotations

import logging

from das_core.errors import ReportRefused
from das_core.io import storage
from das_core.output.manifest import RunManifest
from das_core.output.report_files import (
    EXCERPTS_DIR,
    REPORT_DIR,
    REPORT_HTML,
    REPORT_MD,
    REPORT_RECORD,
    recorded_report_files,
    write_record,
)
from das_core.output.store import OutputStore
from das_core.report.excerpts import cut_excerpts
from das_core.report.markdown import build_report
from das_core.report.page import Timeline, build_page
from das_core.report.picks import (
    DEFAULT_EXCERPTS,
    EXCERPT_LABELS,
    PICK_COLUMNS,
    TIMELINE_DRAWN,
    TIMELINE_MIN_WINDOWS,
    check_excerpts,
    picks_of,
    timeline_picks,
)
from das_core.report.tally import Tally, file_windows, tally

log = logging.getLogger("das")
# What a static website (S3) serves each report file as: a page, not a download
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".md": "text/markdown; charset=utf-8", ".png": "image/png",
                 ".ogg": "audio/ogg"}


def _timelines(store: OutputStore, tallied: Tally) -> list[Timeline]:
    """The longest files (``Tally.longest``) with at least ``TIMELINE_MIN_WINDOWS`` windows, longest first."""
    out = []
    for duration, fid, path, unit in sorted(tallied.longest, reverse=True):
        windows = picks_of(file_windows(store, unit, fid, PICK_COLUMNS))
        if len(windows) >= TIMELINE_MIN_WINDOWS:
            out.append(Timeline(path, duration, windows[:TIMELINE_DRAWN], len(windows)))
    return out


def build_html(uri: str, tallied: Tally, figures: list[str]) -> tuple[str, dict[str, bytes]]:
    """report.html's text and its excerpts (name under report/ -> Ogg bytes) for the output at ``uri``:
    ``tallied.top``'s windows of the most frequent labels and the timelines' playable windows."""
    store = OutputStore(uri)
    manifest = RunManifest.read(uri) or {}
    timelines = _timelines(store, tallied)
    wanted = []
    if tallied.top.per_label > 0:
        for label, _ in tallied.windows_by_label.most_common(EXCERPT_LABELS):
            wanted += tallied.top.best(label)
        for t in timelines:
            playable = timeline_picks(t.windows)
            wanted += [w for w in t.windows if w.segment in playable]
    excerpts = cut_excerpts(wanted, (manifest.get("settings") or {}).get("audio_column"))
    audio = {w.excerpt_name: excerpts[(w.file_id, w.segment)].data for w in wanted
             if excerpts[(w.file_id, w.segment)].data is not None}
    return build_page(uri, manifest, tallied, figures, timelines, excerpts), audio


def write_report(uri: str, excerpts: int = DEFAULT_EXCERPTS) -> str:
    """Write ``uri/report/report.md``, ``report.html`` with up to ``excerpts`` playable windows per frequent
    label (in ``report/excerpts/``), and their figures (local or s3://); returns report.md's URI.

    Only das's own files are replaced or removed: those of the previous report, named by its record
    (``report/_report.json``). A file of the same name that is not on the record is refused
    (``ReportRefused``), and any other file in the folder is left as it is.
    """
    check_excerpts(excerpts)
    uri = storage.absolute(uri)
    tallied = tally(OutputStore(uri), excerpts)
    text, figures = build_report(uri, tallied)
    page, audio = build_html(uri, tallied, list(figures))
    new = {**figures, **audio, REPORT_MD: text.encode(), REPORT_HTML: page.encode()}
    old = recorded_report_files(uri)
    foreign = [n for n in sorted(new) if n not in old and storage.exists(storage.join(uri, REPORT_DIR, n))]
    if foreign:
        folder = storage.join(uri, REPORT_DIR)
        raise ReportRefused(f"cannot write the report in {folder} ({foreign[0]} is there and das did not write "
                            f"it: {REPORT_RECORD} does not name it); move that file elsewhere and run "
                            f"`das report {uri}` again")
    write_record(uri, set(old) | set(new))       # first: whatever happens next, every das file is on record
    for name, data in new.items():
        storage.write_bytes_atomic(storage.join(uri, REPORT_DIR, name), data,
                                   CONTENT_TYPES.get(name[name.rfind("."):]))
    for name in old:
        if name not in new:                       # a figure of the earlier report that this one has not
            storage.remove(storage.join(uri, REPORT_DIR, name))
    storage.remove_empty_folder(storage.join(uri, REPORT_DIR, EXCERPTS_DIR))    # only if no excerpt is left
    write_record(uri, set(new))
    return storage.join(uri, REPORT_DIR, REPORT_MD)


def report_after_run(out: str, excerpts: int = DEFAULT_EXCERPTS) -> None:
    """The report written at the end of das label / das rescore (``excerpts`` per label in report.html): a
    failure is a warning, never the run's."""
    try:
        target = write_report(out, excerpts)
    except Exception as exc:  # noqa: BLE001 - the labels are written; a report problem must not fail the run
        log.warning("could not write the report of %s (%s: %s); run `das report %s` to retry",
                    out, type(exc).__name__, exc, out)
        return
    print(f"das report: written to {target} (and report.html beside it, to listen to)", flush=True)
