"""The files a report wrote, on record in ``OUT/report/_report.json``: the only files a report replaces or
``--overwrite`` removes."""

from __future__ import annotations

import json
import re

from das_core.io import storage

REPORT_DIR = "report"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
EXCERPTS_DIR = "excerpts"          # report/excerpts/: the playable excerpts of report.html
REPORT_RECORD = "_report.json"      # the files the last report wrote: the only ones a report or --overwrite removes


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.(md|png|html)")
_EXCERPT_NAME = re.compile(rf"{EXCERPTS_DIR}/[0-9a-f]{{8,64}}\.ogg")


def _is_report_name(name: object) -> bool:
    """A name das report writes: a plain ``.md``, ``.png`` or ``.html`` file name, or ``excerpts/<hex>.ogg``
    (a record can never name anything else: no other folder, no ``..``, no hidden file)."""
    return isinstance(name, str) and bool(_PLAIN_NAME.fullmatch(name) or _EXCERPT_NAME.fullmatch(name))


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


def write_record(uri: str, names: set[str]) -> None:
    """Record ``names`` as the files of ``uri``'s report folder that das wrote."""
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
    storage.remove_empty_folder(storage.join(uri, REPORT_DIR, EXCERPTS_DIR))
    storage.remove_empty_folder(storage.join(uri, REPORT_DIR))
    return len(names) + int(had_record)
