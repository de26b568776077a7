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
from collections import Counter

import pyarrow as pa

from das_core.errors import WriteFailed
from das_core.io import storage
from das_core.output.format import FILES_DIR, OK, SEGMENTS_DIR, PartFormat, embedding_layout, pack_name
from das_core.output.pack import write_pack
from das_core.output.store import OutputStore
from das_core.output.tables import FileOutcome, build_tables, count_outcomes, embeddings_to_numpy, labelled_columns
from das_core.scoring.cache import DriftCache
from das_core.scoring.scorer import label_windows, window_scores

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
_LABEL_COLUMNS = ("label", "score", "top_k_labels", "top_k_scores", "zs_label", "zs_score", "top_k_probs")
_FILE_COLUMNS = ("file_id", "path", "status", "error", "error_kind", "n_segments", "duration_s", "sample_rate",
                 "channels", "decoder", "key", "metadata")


def _file_outcomes(files: pa.Table, segments: pa.Table) -> list[FileOutcome]:
    """The label unit's files as outcomes, after checking that each ok file has all its windows."""
    counts = Counter(segments.column("file_id").to_pylist())
    for name in ("decoder", "key", "metadata"):
        if name not in files.column_names:
            files = files.append_column(name, pa.nulls(len(files), pa.string()))
    outcomes = []
    for row in files.select(list(_FILE_COLUMNS)).to_pylist():
        stored = counts.get(row["file_id"], 0)
        if row["status"] == OK and (stored == 0 or stored != row["n_segments"]):
            raise ValueError(f"file {row['path']} has n_segments={row['n_segments']} in files/ but "
                             f"{stored} window(s) in segments/: the label output is damaged")
        outcomes.append(FileOutcome(*(row[name] for name in _FILE_COLUMNS)))
    return outcomes


def rescore_tables(segments: pa.Table, files: pa.Table, cache: DriftCache, top_k: int,
                   logit_scale: float | None = None, part: PartFormat | None = None) -> tuple[pa.Table, pa.Table]:
    """Re-label one committed unit of a label output: the new ``segments`` and ``files`` tables.

    Window labels come from the stored embeddings cast to float32 (exactly what
    das label scored); file labels are the maximum over a file's windows; error
    rows are carried over unchanged, so every input file keeps exactly one row.
    The tables are typed and labelled as ``part`` says; without it, as FixedSizeList embeddings of the
    stored type and the cache's dimension, with no metadata (a format 2 unit's list<...> becomes one too).
    """
    if part is None:
        part = PartFormat(embedding_layout(segments.schema.field("embedding").type)[0], cache.dim)
    if segments.column("embedding").null_count:
        raise ValueError(f"{segments.column('embedding').null_count} window(s) have no embedding")
    outcomes = _file_outcomes(files, segments)
    windows = segments.drop_columns([n for n in _LABEL_COLUMNS if n in segments.column_names])
    lab = scores = None
    if len(segments):
        scores = window_scores(embeddings_to_numpy(segments.column("embedding")), cache)
        lab = label_windows(None, cache, top_k, scores=scores, logit_scale=logit_scale)
    for name, column in labelled_columns(lab, len(segments)).items():
        windows = windows.append_column(name, column)
    return build_tables(outcomes, windows, cache, top_k, part, scores=scores, logit_scale=logit_scale)


def rescore_part(embeddings: str, out_run: str, units: list[str], cache: DriftCache, top_k: int,
                 logit_scale: float | None = None, copy_embeddings: bool = True,
                 part: PartFormat | None = None) -> list[tuple[str, dict]]:
    """Re-score the committed, consecutive label ``units`` of ``embeddings`` (one pack of it, or one staged
    unit: each file read once) and commit them under ``out_run`` as one pack named by their range (segments,
    then files), typed and labelled as ``part`` says (``rescore_tables``); each unit's counts
    (``das_core.output.tables.count_outcomes``)."""
    part = part or PartFormat(dim=cache.dim)
    label = OutputStore(embeddings)
    listing = label.listing()
    files = dict(label.read_by_unit(units, FILES_DIR, listing))
    segments = dict(label.read_by_unit(units, SEGMENTS_DIR, listing))
    new = {}
    for unit in units:
        if files.get(unit) is None:
            raise ValueError(f"unit {unit} has no files rows: it is not committed")
        seg = segments.get(unit)
        seg, fil = rescore_tables(part.segments.empty_table() if seg is None else seg, files[unit], cache, top_k,
                                  logit_scale, part)
        new[unit] = (seg if copy_embeddings else seg.drop_columns(["embedding"]), fil)  # else read back via the label
    out, name = OutputStore(out_run), pack_name(units[0], units[-1])
    write_pack(out, SEGMENTS_DIR, name, [(u, [new[u][0]]) for u in units], skip_empty=True)
    write_pack(out, FILES_DIR, name, [(u, [new[u][1]]) for u in units], skip_empty=False)
    return [(u, count_outcomes(new[u][1])) for u in units]


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
