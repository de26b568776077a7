"""Where a job runs: in this process (``local``) or on Ray (``ray``); the threshold between them, in one place.

Starting Ray, planning a Ray Data pipeline and starting an encoder actor cost about 20 s on a laptop, more
than labelling a few clips takes. Small jobs therefore run in the das process itself, through the same
library stages (``das_core.label.local``; ``das_core.runtime.local`` for rescore and search), and give the
same rows bit for bit. ``--local`` / ``--ray`` force either; without them the choice is automatic:

- ``RAY_ADDRESS`` set (a cluster, ``ray job submit``), or Ray already started in this process: Ray;
- ``das label``: local when the units to do hold at most ``LOCAL_MAX_FILES`` files and
  ``LOCAL_MAX_BYTES`` bytes, no shard of unknown size, ``--num-gpus`` <= 1 and one encoder actor;
- ``das rescore`` / ``das search``: local when the run read holds at most ``LOCAL_MAX_SEGMENTS`` windows.
"""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import pyarrow.compute as pc

from das_core.errors import EngineRefused

LOCAL, RAY = "local", "ray"
ENGINES = (LOCAL, RAY)

LOCAL_MAX_FILES = 64                  # das label: input files to do
LOCAL_MAX_BYTES = 256 * 2**20         # das label: their bytes, where the listing knows sizes
LOCAL_MAX_SEGMENTS = 50_000           # das rescore / das search: stored windows (about 100 MiB of float32 at d=512)


def check_forced(local: bool, ray: bool, *, num_gpus: float = 0.0, actors: int | None = None) -> None:
    """Refuse ``--local`` with ``--ray``, and ``--local`` with more than one GPU or encoder actor."""
    if local and ray:
        raise EngineRefused("--local and --ray exclude each other (both were given); give one of them, or neither "
                            "for the automatic choice")
    if local and (num_gpus > 1 or (actors or 1) > 1):
        asked = f"--num-gpus {num_gpus:g}" if num_gpus > 1 else f"--actors {actors}"
        raise EngineRefused(f"--local runs one encoder in this process ({asked} asks for more); use --ray, or "
                            f"--num-gpus 1 (or 0) and one actor with --local")


def ray_in_this_process() -> bool:
    """Ray was already started in this process (a notebook, a test, a driver script): das then uses it."""
    ray = sys.modules.get("ray")
    is_initialized = getattr(ray, "is_initialized", None)
    return bool(is_initialized and is_initialized())


def choose(local: bool, ray: bool, small: str | None) -> tuple[str, str]:
    """The engine and why. ``small``: None when the job is small enough to run here, else why it is not."""
    if local:
        return LOCAL, "--local"
    if ray:
        return RAY, "--ray"
    if os.environ.get("RAY_ADDRESS"):
        return RAY, "RAY_ADDRESS is set"
    if ray_in_this_process():
        return RAY, "Ray is already running in this process"
    return (LOCAL, "small job") if small is None else (RAY, small)


def label_too_big(todo: pa.Table, num_gpus: float, actors: int) -> str | None:
    """Why the units ``todo`` of a label run are not run in this process (None: they are, automatically)."""
    if num_gpus > 1 or actors > 1:
        return f"{actors} encoder actor(s), {num_gpus:g} GPU(s)"
    files = int(pc.sum(pc.list_value_length(todo.column("file_ids"))).as_py() or 0)
    if files > LOCAL_MAX_FILES:
        return f"{files} files to do (> {LOCAL_MAX_FILES})"
    size = int(pc.sum(todo.column("bytes")).as_py() or 0)
    if size > LOCAL_MAX_BYTES:
        return f"{size / 2**20:.0f} MiB to do (> {LOCAL_MAX_BYTES // 2**20} MiB)"
    shards = pc.is_valid(todo.column("shard"))
    unknown = pc.and_(shards, pc.equal(pc.fill_null(todo.column("bytes"), 0), 0))
    if pc.any(unknown).as_py():
        return "shards of unknown size"
    return None


def segments_too_many(segments: int | None) -> str | None:
    """Why a rescore or search over ``segments`` stored windows is not run in this process (None: it is)."""
    if segments is None:
        return "the number of stored windows is unknown"
    if segments > LOCAL_MAX_SEGMENTS:
        return f"{segments} stored windows (> {LOCAL_MAX_SEGMENTS})"
    return None
