"""What an index covers, on record in ``OUT/_index/<level>/index.json`` (``IndexRecord``): written last, so an
index whose record is missing or names other units is never used for them."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field

from das_core.io import storage
from das_core.output.index_files import INDEX_RECORD, index_folder

LIBRARY = "faiss"


@dataclass
class IndexRecord:
    """An index's record: the library and its parameters, the level, the committed units it covers (each with
    the id of its first row and its row count: ids are given in unit order, rows within a unit by file_id and
    start), the total rows, the label run's checkpoint fingerprint, the das version, and when it was built and
    last refreshed."""

    level: str
    checkpoint: str
    parameters: dict
    units: dict[str, list[int]] = field(default_factory=dict)      # unit -> [first id, rows]
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

    def unit_of(self, row_id: int) -> str:
        """The unit that holds the row ``row_id``."""
        for unit, (first, rows) in self.units.items():
            if first <= row_id < first + rows:
                return unit
        raise KeyError(f"row {row_id} is in no unit of the index (it holds {self.rows})")

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
