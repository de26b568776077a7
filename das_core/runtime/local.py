"""Small jobs without a cluster: ``map_rows`` in this process, for ``das rescore`` and ``das search``.

The same work as ``jobs.pipeline.map_rows`` (one Ray task per row), in a loop; which engine runs a job:
``das_core.runtime.engine``. The label stages in this process are ``das_core.label.local``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa


def map_rows(rows: list[dict], work: Callable[..., pa.Table], shared: object, **settings) -> Iterator[pa.Table]:
    """``jobs.pipeline.map_rows`` in this process: ``work(row, shared, **settings)`` for each row, in order."""
    for row in rows:
        yield work(row, shared, **settings)
