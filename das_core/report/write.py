"""Writing a report into ``OUT/report/``: ``das report``, and the report at the end of a label or rescore run."""

from __future__ import annotations

import logging

from das_core.errors import ReportRefused
from das_core.io import storage
from das_core.output.report_files import REPORT_DIR, REPORT_MD, REPORT_RECORD, recorded_report_files, write_record
from das_core.report.markdown import build_report

log = logging.getLogger("das")


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
    write_record(uri, set(old) | set(new))       # first: whatever happens next, every das file is on record
    for name, data in new.items():
        storage.write_bytes_atomic(storage.join(uri, REPORT_DIR, name), data)
    for name in old:
        if name not in new:                       # a figure of the earlier report that this one has not
            storage.remove(storage.join(uri, REPORT_DIR, name))
    write_record(uri, set(new))
    return storage.join(uri, REPORT_DIR, REPORT_MD)


def report_after_run(out: str) -> None:
    """The report written at the end of das label / das rescore: a failure is a warning, never the run's."""
    try:
        target = write_report(out)
    except Exception as exc:  # noqa: BLE001 - the labels are written; a report problem must not fail the run
        log.warning("could not write the report of %s (%s: %s); run `das report %s` to retry",
                    out, type(exc).__name__, exc, out)
        return
    print(f"das report: written to {target}", flush=True)
