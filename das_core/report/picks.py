"""The windows report.html plays: the highest-scoring windows of each label, picked while the report tallies
unit by unit (``TopWindows``), and a long file's windows for its timeline (``timeline_windows``).

Memory stays bounded whatever the run's size: at most ``per_label`` windows per label are kept (a label
count is the cache's class count), never an embedding.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from das_core.errors import ReportRefused
from das_core.output.report_files import EXCERPTS_DIR

PICK_COLUMNS = ["file_id", "path", "segment", "start_s", "end_s", "label", "score", "zs_label", "zs_score",
                "snr_db", "noise_source"]
DEFAULT_EXCERPTS = 10          # windows per label (das report --excerpts N)
MAX_EXCERPTS = 50              # the largest --excerpts accepted (README: the size arithmetic)
EXCERPT_LABELS = 20            # labels with excerpts: the most frequent (as many as the label chart's bars)
TIMELINE_MIN_WINDOWS = 2       # a file gets a playable timeline from this many windows on ("a long file")
TIMELINE_PLAYABLE = 60         # at most this many windows of one timeline are excerpted (evenly spaced)
TIMELINE_DRAWN = 2000          # a timeline draws at most this many windows (5.5 h): report.html stays small


def check_excerpts(per_label: int) -> None:
    """Refuse an ``--excerpts`` outside 0..``MAX_EXCERPTS`` (``ReportRefused``), before any work."""
    if isinstance(per_label, bool) or not isinstance(per_label, int) or not 0 <= per_label <= MAX_EXCERPTS:
        raise ReportRefused(f"--excerpts {per_label} is outside 0..{MAX_EXCERPTS} (excerpts per label; 0 writes "
                            f"none, the default {DEFAULT_EXCERPTS} keeps report/ small: README, report.html)")


@dataclass(frozen=True)
class Pick:
    """One window of the output, with what report.html says about it."""

    file_id: str
    path: str
    segment: int
    start_s: float
    end_s: float
    label: str | None
    score: float | None
    zs_label: str | None
    zs_score: float | None
    snr_db: float | None
    noise_source: str | None

    @property
    def excerpt_name(self) -> str:
        """The excerpt's file name under ``report/``: ``excerpts/<hash of file id and window>.ogg``, the same
        for the same window in every report (a window in two sections is one file)."""
        digest = hashlib.sha1(f"{self.file_id}\0{self.segment}".encode()).hexdigest()[:20]
        return f"{EXCERPTS_DIR}/{digest}.ogg"

    @property
    def seconds(self) -> float:
        """The window's length (s): 10, or less for a file's short tail."""
        return self.end_s - self.start_s


def picks_of(table: pa.Table) -> list[Pick]:
    """The rows of a table with ``PICK_COLUMNS`` (missing ``noise_source``, ``snr_db``: None) as ``Pick``s."""
    names = [c for c in PICK_COLUMNS if c in table.column_names]
    columns = {c: table.column(c).to_pylist() for c in names}
    n = table.num_rows
    return [Pick(**{c: (columns[c][i] if c in columns else None) for c in PICK_COLUMNS}) for i in range(n)]


class TopWindows:
    """The ``per_label`` highest-scoring windows of each DAS top label, folded one table at a time.

    Ties are broken by file id and window, so the picks do not depend on the order units are read in.
    """

    def __init__(self, per_label: int):
        self.per_label = per_label
        self._heaps: dict[str, list[tuple]] = {}

    def add(self, table: pa.Table) -> None:
        """Fold in a ``segments`` table with ``PICK_COLUMNS``; windows without a label or score are left out."""
        if self.per_label <= 0 or not table.num_rows:
            return
        table = table.filter(pc.and_(pc.is_valid(table.column("label")), pc.is_valid(table.column("score"))))
        labels = table.column("label").to_pylist()
        scores = table.column("score").to_pylist()
        keep = []
        for i, (label, score) in enumerate(zip(labels, scores)):
            heap = self._heaps.get(label)
            if heap is None or len(heap) < self.per_label or score >= heap[0][0]:
                keep.append(i)
        if not keep:                      # nothing beats what is kept (an empty list would take as nulls)
            return
        for pick in picks_of(table.take(pa.array(keep, pa.int64()))):
            item = (pick.score, _descending(pick.file_id), -pick.segment, pick)
            heap = self._heaps.setdefault(pick.label, [])
            if len(heap) < self.per_label:
                heapq.heappush(heap, item)
            elif item[:3] > heap[0][:3]:
                heapq.heapreplace(heap, item)

    def best(self, label: str) -> list[Pick]:
        """The kept windows of ``label``, highest score first."""
        return [item[-1] for item in sorted(self._heaps.get(label, []), key=lambda it: it[:3], reverse=True)]


def _descending(text: str) -> tuple[int, ...]:
    """A key that orders strings in reverse (ties between equal scores go to the smaller file id)."""
    return tuple(-ord(ch) for ch in text) + (1,)


def timeline_picks(windows: list[Pick]) -> set[int]:
    """The segments of a file's timeline that get an excerpt: every window up to ``TIMELINE_PLAYABLE``, beyond
    that an evenly spaced ``TIMELINE_PLAYABLE`` of them (the first and the last included)."""
    n = len(windows)
    if n <= TIMELINE_PLAYABLE:
        return {w.segment for w in windows}
    step = (n - 1) / (TIMELINE_PLAYABLE - 1)
    return {windows[round(k * step)].segment for k in range(TIMELINE_PLAYABLE)}
