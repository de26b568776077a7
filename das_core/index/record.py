"""What an index covers, on record in ``OUT/_index/<level>/index.json`` (``IndexRecord``): written last, so an
index whose record is missing or names other units is never used for them."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from das_core.io import storage
from das_core.output.index_files import INDEX_RECORD, index_folder

LIBRARY = "faiss"


@dataclass
class IndexRecord:
    """An index's record: the library and its parameters, the level, the committed units it covers (each with
    the id of its first row and its row count: ids are given in unit order, rows within a unit by file_id and
    start), the rows files (the first id and row count of each), the total rows, the label run's checkpoint
    fingerprint, the das version, and when it was built and last refreshed."""

    level: str
    checkpoint: str
    parameters: dict
    units: dict[str, list[int]] = field(default_factory=dict)      # unit -> [first id, rows]
    rows_files: list[list[int]] = field(default_factory=list)      # [first id, rows] of each rows file
    rows: int = 0
    library: str = LIBRARY
    library_version: str = ""
    das_version: str = ""
    built: str = ""
    refreshed: str = ""

    def add_unit(self, unit: str, rows: int) -> None:
        """Record ``unit``'s ``rows`` as the next ids."""
        self.units[unit] = [self.rows, rows]
        self.rows += rows

    def rows_file_of(self, ids: np.ndarray) -> np.ndarray:
        """For each row id in ``ids``, the position in ``rows_files`` of the file that holds its row."""
        firsts = np.array([first for first, _ in self.rows_files], dtype=np.int64)
        return np.searchsorted(firsts, np.asarray(ids, dtype=np.int64), side="right") - 1

    def to_json(self) -> bytes:
        """The record as written."""
        return (json.dumps(asdict(self), indent=2) + "\n").encode()

    def write(self, uri: str) -> None:
        """Write the record into ``uri``'s index folder at its level, atomically."""
        storage.write_bytes_atomic(storage.join(index_folder(uri, self.level), INDEX_RECORD), self.to_json())

    @classmethod
    def read(cls, uri: str, level: str) -> IndexRecord | None:
        """The record of ``uri``'s index at ``level``; None where there is none or it cannot be read as one."""
        path = storage.join(index_folder(uri, level), INDEX_RECORD)
        if not storage.exists(path):
            return None
        try:
            data = json.loads(storage.read_bytes(path))
            return cls(**data) if isinstance(data, dict) and data.get("library") == LIBRARY else None
        except (ValueError, TypeError):
            return None


def now() -> str:
    """The current UTC time as the record writes it."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
