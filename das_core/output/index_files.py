"""Where ``das index`` keeps an output's index (``OUT/_index/<level>/``) and the names of its files: the only
files an index refresh replaces or ``--overwrite`` removes."""

from __future__ import annotations

import re

from das_core.io import storage

INDEX_DIR = "_index"
INDEX_LEVELS = ("segment", "file")
INDEX_RECORD = "index.json"       # written last: what the index covers (``das_core.index.record``)
INDEX_FILE = "index.faiss"
# the rows' file_id, path, start_s, end_s, one file per ~100 000 ids, named by its first id (the indexes of das
# before this had one file per unit, rows-u<unit>.parquet: still recognised, so a rebuild or --overwrite removes them)
ROWS_FILE = re.compile(r"^rows-(u\d+|\d{12})\.parquet$")


def index_folder(uri: str, level: str) -> str:
    """The folder of ``uri``'s index at ``level``."""
    return storage.join(uri, INDEX_DIR, level)


def rows_name(first_id: int) -> str:
    """The name of the rows file whose first row has the id ``first_id``."""
    return f"rows-{first_id:012d}.parquet"


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
