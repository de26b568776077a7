"""``das compact``: pack the committed, unpacked units of a finished or interrupted output, as ``das label``
packs as it goes (``das_core.output.pack``), so that an output written without packs (format 2, or
``--pack-rows 0``) or left with a staged tail holds large files.

The caller holds the output's lease (one writer at a time): a run still writing is refused before this runs.
"""

from __future__ import annotations

import logging

from das_core.errors import RunRefused
from das_core.label.units import read_unit_table
from das_core.output.format import FORMAT_VERSION, MANIFEST_JOBS
from das_core.output.manifest import MANIFEST, RunManifest
from das_core.output.pack import PackPlanner, committed_rows, pack_units
from das_core.output.store import OutputStore

log = logging.getLogger("das")


def check_compactable(out: str) -> RunManifest:
    """The manifest of the das label output (or das rescore run folder) ``out``; refused (one line) for
    anything else."""
    manifest = RunManifest.read(out)
    if manifest is None or manifest.job not in MANIFEST_JOBS:
        raise RunRefused(f"{out} is not a das label output nor a das rescore run folder (no {MANIFEST} of either); "
                         "give the --out folder of a das label run, or OUT/run_id=ID of a das rescore run")
    return manifest


def compact(out: str, pack_rows: int) -> dict:
    """Pack every committed unit of ``out`` not in a pack yet, the tail included (``PackPlanner`` with
    ``final``), after deleting what an interrupted pack left; ``{"packs": [...], "units": n, "removed": n}``.
    Running it again packs nothing. The manifest's ``format_version`` becomes this das's once packs exist."""
    manifest = check_compactable(out)
    store = OutputStore(out)
    listing = store.listing()
    removed = store.remove_stale(listing) if listing.stale_parts() else 0
    listing = store.listing() if removed else listing
    packed = listing.packed_units()
    table = read_unit_table(out) if manifest.job == "label" else None
    every = table.column("unit").to_pylist() if table is not None else listing.committed_units()
    planner = PackPlanner([u for u in every if u not in packed], pack_rows)
    for unit, rows in committed_rows(store, listing):
        planner.add(unit, rows)
    packs = [pack_units(out, units) for units in planner.ready(final=True)]
    if packs and manifest.format_version != FORMAT_VERSION:
        RunManifest.from_dict({**manifest.to_dict(), "format_version": FORMAT_VERSION}).write(out)
    return {"packs": packs, "units": sum(p["units"] for p in packs), "removed": removed}
