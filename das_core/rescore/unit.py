"""Re-scoring one committed label unit: the work of one Ray task of ``das rescore`` (or one local call).

Input (``--embeddings``) is the output of ``das label``: its committed units
(``files/part-<unit>-end.parquet`` exists; see ``das_core.output.store``).
Each unit is written under the run's folder::

    OUT/run_id=<ID>/segments/part-<unit>-all.parquet   das label's schema (format 3, the label output's
                                                       format 2 included); the embedding column only with
                                                       --copy-embeddings (readers follow the manifest's
                                                       "embeddings" to the label output otherwise)
    OUT/run_id=<ID>/files/part-<unit>-end.parquet      one row per input file, error rows included (commit mark)

``rescore_unit`` reads the unit's parts with pyarrow, scores every window from
its stored embedding (cast to float32 exactly as ``das label`` did, so the
same cache reproduces its scores), pools files by the maximum over all their
windows (a long file's pieces included) and writes the unit's two output
parts, files last. Names derive from the unit, so a retried task overwrites
instead of duplicating.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pyarrow as pa

from das_core.errors import WriteFailed
from das_core.io import storage
from das_core.output.format import END_TAG, FILES_DIR, OK, SEGMENTS_DIR, PartFormat, embedding_layout, part_name
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


def _read_parts(store: OutputStore, folder: str, names: list[str]) -> pa.Table | None:
    """The parts ``names`` of ``folder`` in ``store`` as one table (None when there is none)."""
    tables = [store.read_part(folder, name) for name in names]
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def rescore_part(embeddings: str, out_run: str, unit: str, segment_parts: list[str], file_parts: list[str],
                 cache: DriftCache, top_k: int, logit_scale: float | None = None, copy_embeddings: bool = True,
                 part: PartFormat | None = None) -> dict:
    """Re-score committed label unit ``unit`` of ``embeddings`` (its parts) and commit it under ``out_run``,
    typed and labelled as ``part`` says (``rescore_tables``); returns its counts
    (``das_core.output.store.count_outcomes``)."""
    part = part or PartFormat(dim=cache.dim)
    label = OutputStore(embeddings)
    files = _read_parts(label, FILES_DIR, file_parts)
    segments = _read_parts(label, SEGMENTS_DIR, segment_parts)
    if segments is None:
        segments = part.segments.empty_table()
    new_segments, new_files = rescore_tables(segments, files, cache, top_k, logit_scale, part)
    out = OutputStore(out_run)
    if not copy_embeddings:
        new_segments = new_segments.drop_columns(["embedding"])   # read back through the label output
    if len(new_segments):
        out.write_part(SEGMENTS_DIR, part_name(unit, "all"), new_segments)
    out.write_part(FILES_DIR, part_name(unit, END_TAG), new_files)
    return count_outcomes(new_files)


def rescore_unit(row: dict, cache: DriftCache, *, embeddings: str, out_run: str, top_k: int,
                 logit_scale: float | None = None, copy_embeddings: bool = True,
                 part: PartFormat | None = None) -> pa.Table:
    """The task of one label unit (``row``: ``RescorePlan.unit_rows``): one ``PART_STATS_SCHEMA`` row.

    A unit that cannot be re-scored (unreadable, damaged) is reported in
    ``failure``; it never fails the task, so every other unit still gets done. A write that fails
    (``WriteFailed``: disk full, read-only) ends the run.
    """
    unit, start = row["unit"], time.monotonic()
    counts, failure = {"files": 0, "ok": 0, "error": 0, "segments": 0, "errors_by_kind": {}}, None
    try:
        counts = rescore_part(embeddings, out_run, unit, row["segments"], row["files"], cache, top_k, logit_scale,
                              copy_embeddings, part)
    except WriteFailed:
        raise                                # the output's disk, not this unit: the run stops with its line
    except Exception as exc:  # noqa: BLE001 - reported per unit, counted by the driver
        failure = f"{storage.join(embeddings, FILES_DIR, part_name(unit, END_TAG))} (unit {unit}): " \
                  f"{type(exc).__name__}: {exc}"
    stats = {"part": unit, **{key: int(counts[key]) for key in ("files", "ok", "error", "segments")},
             "errors_by_kind": json.dumps(counts["errors_by_kind"]), "seconds": time.monotonic() - start,
             "failure": failure}
    return pa.Table.from_pylist([stats], schema=PART_STATS_SCHEMA)

