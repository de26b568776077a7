"""Where ``das index`` keeps an output's index (``OUT/_index/<level>/``) and the names of its files: the only
files an index refresh replaces or ``--overwrite`` removes."""

from __future__ import annotations

import re

from das_core.io import storage

INDEX_DIR = "_index"
INDEX_LEVELS = ("segment", "file")
INDEX_RECORD = "index.json"       # written last: what the index covers (``das_core.index.record``)
INDEX_FILE = "index.faiss"
ROWS_FILE = re.compile(r"^rows-u\d+\.parquet$")      # one per unit: its rows' file_id, path, start_s, end_s


def index_folder(uri: str, level: str) -> str:
    """The folder of ``uri``'s index at ``level``."""
    return storage.join(uri, INDEX_DIR, level)


def rows_name(unit: str) -> str:
    """The name of the file that holds ``unit``'s rows in the index folder."""
    return f"rows-{unit}.parquet"


def is_index_file(name: str) -> bool:
    """Whether ``name`` (a file name in an index folder) is one das index writes."""
    return name in (INDEX_RECORD, INDEX_FILE) or bool(ROWS_FILE.match(name))


def remove_index(uri: str, level: str | None = None) -> int:
    """Delete das's index files of ``uri`` (at ``level``, or every level) and their writers' temporaries; how many
    files were deleted. Anything else stays, and the folders with it."""
    removed = 0
    for each in (level,) if level else INDEX_LEVELS:
        folder = index_folder(uri, each)
        if not storage.exists(folder):
            continue
        root = folder.rstrip("/") + "/"
        for found in storage.list_files(folder):
            name = found[len(root):]
            if "/" not in name and is_index_file(name):
                storage.remove(found)
                removed += 1
        removed += storage.remove_temporaries(folder)
        storage.remove_empty_folder(folder)
    storage.remove_empty_folder(storage.join(uri, INDEX_DIR))
    return removed
