"""Where the per-row tasks of ``das rescore`` and ``das search`` run: here, or on Ray Data (started here)."""

from __future__ import annotations

from collections.abc import Callable

from jobs.common import init_ray, worker_env


def row_mapper(where: str) -> tuple[Callable, dict]:
    """The ``map_rows`` of ``where`` (``engine.LOCAL``: this process; else Ray Data, Ray started here) and the
    keyword arguments it takes besides the rows, the work and the shared object (rescore's and search's tasks)."""
    from das_core.runtime import engine

    if where == engine.LOCAL:
        from das_core.runtime.local import map_rows as map_here

        return map_here, {}
    from jobs.pipeline import map_rows  # Ray is imported only for a run on Ray

    init_ray()
    return map_rows, {"env": worker_env()}
