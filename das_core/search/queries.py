"""Queries in CLAP's joint space and their ranking: what one unit sends the driver, and the driver's merge.

A query is a unit vector in CLAP's joint space: a text query is the text
tower's embedding of the text, an audio query the normalised mean of a file's
window embeddings (windows decoded and encoded exactly as ``das label`` does).
A window or file scores the cosine of its stored embedding with the query; a
text query may add a DAS-style drift bonus (METHOD.md §2 with the query in the
place of a class)::

    q      = E_t(text)
    dhat_q = normalise( mean_p [ E_t("<text> with <p>") - q ] )
    score  = cos(z, q) + lam * (z . dhat_q)         z: the stored embedding, renormalised

Distributed top-N: each work unit keeps its own ``top`` best rows per query
(``unit_hits``); the driver merges those (``merge_hits``). Since the global
top N of a query is the top N of the union of every unit's top N, the merge
equals a brute-force ranking of the whole archive, while no process holds more
than one unit's embeddings plus N rows per unit and query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from das_core.output.format import FILES_DIR, OK, SEGMENTS_DIR
from das_core.output.tables import embeddings_to_numpy
from das_core.scoring.prompts import NOISY_TEMPLATE

SEGMENT, FILE = "segment", "file"
LEVELS = (SEGMENT, FILE)
ZERO_DRIFT_EPS = 1e-6

HITS_SCHEMA = pa.schema([
    pa.field("query", pa.string()),
    pa.field("rank", pa.int32()),
    pa.field("file_id", pa.string()),
    pa.field("path", pa.string()),
    pa.field("start_s", pa.float64()),
    pa.field("end_s", pa.float64()),
    pa.field("score", pa.float32()),
])
# columns each level reads from its folder
SEGMENT_COLUMNS = ["file_id", "path", "start_s", "end_s", "embedding"]
FILE_COLUMNS = ["file_id", "path", "status", "duration_s", "embedding"]


def level_source(level: str) -> tuple[str, list[str]]:
    """The folder a level ranks and the columns it reads there."""
    return (SEGMENTS_DIR, SEGMENT_COLUMNS) if level == SEGMENT else (FILES_DIR, FILE_COLUMNS)


@dataclass(frozen=True)
class Queries:
    """``m`` queries: their display names, unit vectors ``(m, d)`` and drift directions ``(m, d)`` (0: none)."""

    names: tuple[str, ...]
    vectors: np.ndarray
    drift: np.ndarray
    lam: float = 0.0

    def __post_init__(self):
        if self.vectors.shape != self.drift.shape or self.vectors.shape[0] != len(self.names):
            raise ValueError(f"{len(self.names)} names, vectors {self.vectors.shape}, drift {self.drift.shape}")

    @property
    def dim(self) -> int:
        """The dimension ``d`` of the joint space."""
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.names)

    def weights(self) -> np.ndarray:
        """The folded matrix ``q + lam * dhat_q`` (as DriftCache.weights): one product scores every query."""
        return self.vectors.astype(np.float64) + self.lam * self.drift.astype(np.float64)

    def concat(self, other: Queries) -> Queries:
        """These queries, then ``other``'s; refused (``ValueError``) when both are non-empty with different lam."""
        if self.lam != other.lam and len(self) and len(other):
            raise ValueError("queries with different lam cannot be combined")
        return Queries(self.names + other.names, np.concatenate([self.vectors, other.vectors]),
                       np.concatenate([self.drift, other.drift]), self.lam if len(self) else other.lam)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row of ``x`` scaled to unit norm; a zero row stays zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def text_queries(encode_text: Callable[[list[str]], np.ndarray], texts: Sequence[str],
                 noise_phrases: Sequence[str] = (), lam: float = 0.0,
                 noisy_template: str = NOISY_TEMPLATE) -> Queries:
    """Text queries, encoded in one call; with ``lam > 0`` each gets its drift direction over ``noise_phrases``.

    The query text is used as written (no ``label_text`` normalisation: it is a sentence, not a label).
    """
    texts = list(texts)
    phrases = list(noise_phrases) if lam > 0 else []
    prompts = texts + [noisy_template.format(label=t, noise=p) for t in texts for p in phrases]
    emb = np.asarray(encode_text(prompts), dtype=np.float64)
    q = emb[:len(texts)]
    drift = np.zeros_like(q)
    if phrases:
        noisy = emb[len(texts):].reshape(len(texts), len(phrases), -1)
        mean = (noisy - q[:, None, :]).mean(axis=1)
        drift = np.where(np.linalg.norm(mean, axis=1, keepdims=True) > ZERO_DRIFT_EPS, _unit_rows(mean), 0.0)
    return Queries(tuple(texts), q.astype(np.float32), drift.astype(np.float32), float(lam))


def audio_query(name: str, window_embeddings: np.ndarray) -> Queries:
    """An audio query: the normalised mean of a file's window embeddings (``name``: how it is displayed)."""
    total = np.asarray(window_embeddings, dtype=np.float64).sum(axis=0)
    norm = np.linalg.norm(total)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError(f"{name}: its window embeddings sum to zero; it cannot be a query")
    vector = (total / norm)[None, :]
    return Queries((name,), vector.astype(np.float32), np.zeros_like(vector, dtype=np.float32))


def score_embeddings(embeddings: np.ndarray, queries: Queries) -> np.ndarray:
    """``(n, m)`` float32 scores: cosine of each (renormalised) row with each query, plus the drift bonus.

    float32 products (about 1e-7 from float64; stored embeddings are float16 anyway): ranking is the whole
    cost of a search, and float32 halves it (README, Performance).
    """
    z = np.asarray(embeddings, dtype=np.float32)
    if z.ndim != 2 or (len(z) and z.shape[1] != queries.dim):
        raise ValueError(f"embeddings have shape {z.shape}, the queries dimension {queries.dim}")
    # stored float16 embeddings are unit norm only to ~1e-3: renormalise so that a score is a true cosine
    return _unit_rows(z) @ np.ascontiguousarray(queries.weights().astype(np.float32).T)


def top_rows(scores: np.ndarray, top: int, min_score: float | None = None) -> list[np.ndarray]:
    """Per query (column), the row indices of its ``top`` best scores, best first.

    Equal scores are ordered by row; when a tie straddles the ``top``-th place, which tied row is kept is
    arbitrary (as ``scoring.top_k``).
    """
    n, m = scores.shape
    # every query at once: the best `top` of each column, unordered, then ordered by score and row
    cand = (np.broadcast_to(np.arange(n)[:, None], (n, m)) if top >= n
            else np.argpartition(-scores, top - 1, axis=0)[:top])
    vals = np.take_along_axis(scores, cand, axis=0)
    order = np.lexsort((cand, -vals), axis=0)
    cand, vals = np.take_along_axis(cand, order, axis=0), np.take_along_axis(vals, order, axis=0)
    if min_score is None:
        return [cand[:, j] for j in range(m)]
    return [cand[vals[:, j] >= min_score, j] for j in range(m)]


def level_table(table: pa.Table, level: str) -> pa.Table:
    """The rows of a ``segments`` or ``files`` table that can be ranked, as file_id, path, start_s, end_s,
    embedding (a file spans 0 to its duration; error rows and rows without an embedding are dropped)."""
    if level == SEGMENT:
        table = table.select(SEGMENT_COLUMNS)
    else:
        table = table.filter(pc.equal(table.column("status"), OK))
        table = pa.table({"file_id": table.column("file_id"), "path": table.column("path"),
                          "start_s": pa.array(np.zeros(len(table)), pa.float64()),
                          "end_s": table.column("duration_s").cast(pa.float64()),
                          "embedding": table.column("embedding")})
    embedding = table.column("embedding")
    return table.filter(pc.is_valid(embedding)) if embedding.null_count else table


def unit_hits(table: pa.Table, queries: Queries, top: int, min_score: float | None = None,
              level: str = SEGMENT) -> pa.Table:
    """One unit's best ``top`` rows per query (``HITS_SCHEMA``, rank still 0): what a unit sends the driver."""
    rows = level_table(table, level)
    if not len(rows):
        return HITS_SCHEMA.empty_table()
    scores = score_embeddings(embeddings_to_numpy(rows.column("embedding")), queries)
    picks = top_rows(scores, top, min_score)
    index = np.concatenate(picks).astype(np.int64)
    query_of = np.repeat(np.arange(len(queries)), [len(p) for p in picks])
    meta = rows.select(["file_id", "path", "start_s", "end_s"]).take(pa.array(index))
    return pa.table({
        "query": pa.array([queries.names[j] for j in query_of], pa.string()),
        "rank": pa.array(np.zeros(len(index), dtype=np.int32)),
        "file_id": meta.column("file_id"), "path": meta.column("path"),
        "start_s": meta.column("start_s"), "end_s": meta.column("end_s"),
        "score": pa.array(scores[index, query_of].astype(np.float32), pa.float32()),
    }, schema=HITS_SCHEMA)


def merge_hits(parts: Sequence[pa.Table], queries: Sequence[str], top: int) -> pa.Table:
    """The global ``top`` per query from the units' own top lists: ranked 1..top, in the order of ``queries``.

    Order within a query: score, then path and start (so equal scores rank the same way every run).
    """
    hits = pa.concat_tables([HITS_SCHEMA.empty_table(), *parts]).combine_chunks() if parts else \
        HITS_SCHEMA.empty_table()
    out = []
    for name in dict.fromkeys(queries):
        mine = hits.filter(pc.equal(hits.column("query"), name))
        mine = mine.sort_by([("score", "descending"), ("path", "ascending"), ("start_s", "ascending")]).slice(0, top)
        out.append(mine.set_column(1, "rank", pa.array(np.arange(1, len(mine) + 1, dtype=np.int32))))
    return pa.concat_tables(out) if out else HITS_SCHEMA.empty_table()


def format_hits(hits: pa.Table) -> str:
    """A plain-text table: query, rank, path, start-end, score."""
    rows = [("query", "rank", "path", "start-end (s)", "score")]
    for h in hits.to_pylist():
        rows.append((h["query"], str(h["rank"]), h["path"], f"{h['start_s']:.1f}-{h['end_s']:.1f}",
                     f"{h['score']:.4f}"))
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     .rstrip() for r in rows)

