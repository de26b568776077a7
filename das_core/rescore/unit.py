"""Re-scoring one physical part of a label output: the work of one Ray task of ``das rescore`` (or one local call).

Input (``--embeddings``) is the output of ``das label``: its committed units
(an ``end`` part or a pack covers them; see ``das_core.output.store``). A task
takes one pack of it, or one unit still staged, and writes one pack per
folder under the run's folder, named by the range of its units (the layout
of a packed label output, ``das_core.output.pack``)::

    OUT/run_id=<ID>/segments/part-<A>-<B>.parquet   das label's schema (format 3, whatever the label
                                                    output's format); the embedding column only with
                                                    --copy-embeddings (readers follow the manifest's
                                                    "embeddings" to the label output otherwise)
    OUT/run_id=<ID>/files/part-<A>-<B>.parquet      one row per input file, error rows included (commit mark)

``rescore_unit`` reads the parts with pyarrow, scores every window from its
stored embedding (cast to float32 exactly as ``das label`` did, so the same
cache reproduces its scores), pools files by the maximum over all their
windows (a long file's pieces included) and writes the two output packs,
files last. Names derive from the units, so a retried task overwrites instead
of duplicating. Outputs of earlier das versions (``part-<unit>-all`` /
``part-<unit>-end``) read as staged units.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from das_core.errors import WriteFailed
from das_core.io import storage
from das_core.output.format import (
    FILES_DIR,
    OK,
    SEGMENTS_DIR,
    PartFormat,
    embedding_layout,
    label_column_names,
    pack_name,
    segments_schema,
)
from das_core.output.pack import write_pack
from das_core.output.store import OutputStore
from das_core.output.tables import build_tables, count_outcomes, outcome_table, window_owners
from das_core.scoring.cache import DriftCache

# What a unit's task reports back to the driver (one row per label unit).
PART_STATS_SCHEMA = pa.schema([
    pa.field("part", pa.string()),
    pa.field("files", pa.int64()),
    pa.field("ok", pa.int64()),
    pa.field("error", pa.int64()),
    pa.field("segments", pa.int64()),
    pa.field("errors_by_kind", pa.string()),     # JSON object: kind -> count
    pa.field("seconds", pa.float64()),
    pa.field("failure", pa.string()),            # null when the unit was re-scored and committed
])

_WINDOW_COLUMNS = [f.name for f in segments_schema() if f.name not in label_column_names()]


def _checked(outcomes: pa.Table, owner: np.ndarray) -> None:
    """Refuse a damaged label output: every ok file must have all its windows (``n_segments`` of them)."""
    stored = np.bincount(owner[owner >= 0], minlength=len(outcomes))
    ok = pc.equal(outcomes.column("status"), OK).to_numpy(zero_copy_only=False).astype(bool)
    expected = outcomes.column("n_segments").fill_null(0).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(ok & ((stored == 0) | (stored != expected)))
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"file {outcomes.column('path')[i].as_py()} has n_segments={expected[i]} in files/ but "
                         f"{stored[i]} window(s) in segments/: the label output is damaged")


def rescore_tables(segments: pa.Table, files: pa.Table, cache: DriftCache, top_k: int,
                   logit_scale: float | None = None, part: PartFormat | None = None) -> tuple[pa.Table, pa.Table]:
    """Re-label one committed unit of a label output: the new ``segments`` and ``files`` tables
    (``rescore_units`` of that one unit)."""
    return rescore_units([("u", segments, files)], cache, top_k, logit_scale, part)[0][1:]


def rescore_units(units: list[tuple[str, pa.Table | None, pa.Table]], cache: DriftCache, top_k: int,
                  logit_scale: float | None = None, part: PartFormat | None = None
                  ) -> list[tuple[str, pa.Table, pa.Table]]:
    """Re-label committed units of a label output (``(unit, its segments or None, its files)``, in order), all
    at once: ``(unit, new segments, new files)`` each.

    Window labels come from the stored embeddings cast to float32 (exactly what das label scored: a row's
    scores do not depend on the rows scored with it); file labels are the maximum over a file's windows; error
    rows are carried over unchanged, so every input file keeps exactly one row. The tables are typed and
    labelled as ``part`` says; without it, as FixedSizeList embeddings of the stored type and the cache's
    dimension, with no metadata (a format 2 unit's list<...> becomes one too).
    """
    present = [seg for _, seg, _ in units if seg is not None and len(seg)]
    if part is None:
        stored = present[0].schema.field("embedding").type if present else None
        part = PartFormat(embedding_layout(stored)[0] if stored is not None else "float16", cache.dim)
    empty = (present[0] if present else part.segments.empty_table()).select(_WINDOW_COLUMNS).slice(0, 0)
    segments = [seg.select(_WINDOW_COLUMNS) if seg is not None else empty for _, seg, _ in units]
    outcomes = [outcome_table(files) for _, _, files in units]
    spans = [_spans([len(t) for t in segments]), _spans([len(t) for t in outcomes])]
    windows = pa.concat_tables(segments, promote_options="permissive") if len(segments) > 1 else segments[0]
    outcome = pa.concat_tables(outcomes) if len(outcomes) > 1 else outcomes[0]
    if windows.column("embedding").null_count:
        raise ValueError(f"{windows.column('embedding').null_count} window(s) have no embedding")
    owner = window_owners(windows, outcome, *spans)
    _checked(outcome, owner)
    group = np.repeat(np.arange(len(units)), [len(t) for t in outcomes])
    new_segments, new_files = build_tables(outcome, windows, cache, top_k, part, logit_scale, owner, group)
    out, s0, f0 = [], 0, 0
    for (unit, _, _), n_files in zip(units, [len(t) for t in outcomes]):
        files_of = new_files.slice(f0, n_files)
        n_seg = int(pc.sum(files_of.column("n_segments")).as_py() or 0)
        out.append((unit, new_segments.slice(s0, n_seg), files_of))
        s0, f0 = s0 + n_seg, f0 + n_files
    return out


def _spans(lengths: list[int]) -> list[tuple[int, int]]:
    """``(first row, rows)`` of consecutive tables of ``lengths`` rows."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int) if lengths else []
    return [(int(a), int(n)) for a, n in zip(starts, lengths)]


def rescore_part(embeddings: str, out_run: str, units: list[str], cache: DriftCache, top_k: int,
                 logit_scale: float | None = None, copy_embeddings: bool = True,
                 part: PartFormat | None = None) -> list[tuple[str, dict]]:
    """Re-score the committed, consecutive label ``units`` of ``embeddings`` (one pack of it, or one staged
    unit: each file read once) and commit them under ``out_run`` as one pack named by their range (segments,
    then files), typed and labelled as ``part`` says (``rescore_units``); each unit's counts
    (``das_core.output.tables.count_outcomes``)."""
    part = part or PartFormat(dim=cache.dim)
    label = OutputStore(embeddings)
    listing = label.listing()
    files = dict(label.read_by_unit(units, FILES_DIR, listing))
    segments = dict(label.read_by_unit(units, SEGMENTS_DIR, listing))
    for unit in units:
        if files.get(unit) is None:
            raise ValueError(f"unit {unit} has no files rows: it is not committed")
    new = rescore_units([(u, segments.get(u), files[u]) for u in units], cache, top_k, logit_scale, part)
    out, name = OutputStore(out_run), pack_name(units[0], units[-1])
    write_pack(out, SEGMENTS_DIR, name, [(u, [seg if copy_embeddings else seg.drop_columns(["embedding"])])
                                         for u, seg, _ in new], skip_empty=True)   # else read via the label
    write_pack(out, FILES_DIR, name, [(u, [fil]) for u, _, fil in new], skip_empty=False)
    return [(u, count_outcomes(fil)) for u, _, fil in new]


def rescore_unit(row: dict, cache: DriftCache, *, embeddings: str, out_run: str, top_k: int,
                 logit_scale: float | None = None, copy_embeddings: bool = True,
                 part: PartFormat | None = None) -> pa.Table:
    """The task of one physical part of the label output (``row``: ``RescorePlan.unit_rows``, its consecutive
    ``units``): one ``PART_STATS_SCHEMA`` row per label unit.

    Units that cannot be re-scored (unreadable, damaged) are reported in
    ``failure``; that never fails the task, so every other part still gets done. A write that fails
    (``WriteFailed``: disk full, read-only) ends the run.
    """
    units, start = row["units"], time.monotonic()
    empty = {"files": 0, "ok": 0, "error": 0, "segments": 0, "errors_by_kind": {}}
    failure = None
    try:
        counts = rescore_part(embeddings, out_run, units, cache, top_k, logit_scale, copy_embeddings, part)
    except WriteFailed:
        raise                                # the output's disk, not this unit: the run stops with its line
    except Exception as exc:  # noqa: BLE001 - reported per unit, counted by the driver
        where = f"unit {units[0]}" if len(units) == 1 else f"units {units[0]}..{units[-1]}"
        failure = f"{storage.join(embeddings, FILES_DIR, row.get('source', ''))} ({where}): {type(exc).__name__}: {exc}"
        counts = [(u, empty) for u in units]
    seconds = (time.monotonic() - start) / len(units)
    return pa.Table.from_pylist([
        {"part": unit, **{key: int(c[key]) for key in ("files", "ok", "error", "segments")},
         "errors_by_kind": json.dumps(c["errors_by_kind"]), "seconds": seconds, "failure": failure}
        for unit, c in counts], schema=PART_STATS_SCHEMA)
