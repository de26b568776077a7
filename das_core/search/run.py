"""Search stored embeddings: rank windows or files of a label output against text or audio queries.

The library half of ``das search`` (no Ray here): its settings, the checks on
the output searched, query encoding and the work of one Ray task. The output
searched (``--embeddings``) is a ``das label`` output or one ``das rescore``
run folder (``OUT/run_id=ID``): its committed units and ``_manifest.json``. A query is a unit vector in
CLAP's joint space: a text query is the text tower's embedding of the text, an
audio query the normalised mean of a file's window embeddings (windows decoded
and encoded exactly as ``das label`` does). A window or file scores the cosine
of its stored embedding with the query; a text query may add a DAS-style drift
bonus (METHOD.md §2 with the query in the place of a class)::

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

import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from das_core.errors import ConfigError, Refused
from das_core.io import storage
from das_core.output.format import FILES_DIR, OK, SEGMENTS_DIR
from das_core.output.manifest import RunManifest
from das_core.output.store import OutputStore, StoreListing, open_embeddings, with_embeddings
from das_core.output.tables import embeddings_to_numpy
from das_core.runtime import engine
from das_core.scoring.prompts import NOISY_TEMPLATE
from das_core.settings import setting

log = logging.getLogger("das.search")

SEGMENT, FILE = "segment", "file"
LEVELS = (SEGMENT, FILE)
ZERO_DRIFT_EPS = 1e-6
DEFAULT_TOP = 10
LIKE_BATCH = 16          # windows per encoder call while embedding a --like file

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
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.names)

    def weights(self) -> np.ndarray:
        """The folded matrix ``q + lam * dhat_q`` (as DriftCache.weights): one product scores every query."""
        return self.vectors.astype(np.float64) + self.lam * self.drift.astype(np.float64)

    def concat(self, other: Queries) -> Queries:
        if self.lam != other.lam and len(self) and len(other):
            raise ValueError("queries with different lam cannot be combined")
        return Queries(self.names + other.names, np.concatenate([self.vectors, other.vectors]),
                       np.concatenate([self.drift, other.drift]), self.lam if len(self) else other.lam)


def _unit_rows(x: np.ndarray) -> np.ndarray:
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


@dataclass(frozen=True)
class SearchConfig:
    """The settings of one search, checked when made (``ConfigError``), before storage or the model is used."""

    embeddings: str = setting(metavar="URI", help="output folder or s3:// prefix of `das label`, or a `das rescore` "
                              "run folder (run_id=ID)")
    checkpoint: str = setting(metavar="CKPT", help="the CLAP checkpoint the embeddings were made with (refused if it "
                              "is another one)")
    texts: list[str] = setting([], flag="--text", repeat=True, metavar="QUERY",
                               help="a text query, e.g. 'glass breaking at night' (repeatable)")
    like: list[str] = setting([], repeat=True, metavar="AUDIO",
                              help="an audio file (local or s3://): find what sounds like it (repeatable)")
    level: str = setting(SEGMENT, choices=LEVELS,
                         help="rank 10 s windows (segment) or whole files (file: their mean embedding)")
    top: int = setting(DEFAULT_TOP, metavar="N", help="matches kept per query")
    min_score: float | None = setting(None, metavar="X", help="drop matches scoring below X")
    lam: float = setting(0.0, metavar="X", help="text queries: add X times the cosine with the query's drift "
                         "direction (DAS-style bonus; 0: plain cosine)")
    noise_phrases: tuple[str, ...] | None = None     # of the drift direction (--noise-phrases FILE, jobs.search)
    out: str | None = setting(None, metavar="URI", help="write the matches to this Parquet file (local or s3://)")
    tokenizer_dir: str | None = setting(None, metavar="DIR", help="roberta-base tokenizer files (RoBERTa "
                                        "checkpoints)")
    device: str = setting("cpu", help="where queries are encoded: cpu or cuda[:N]")
    local: bool = setting(False, help="search in this process, without Ray (the same matches). Default: automatic, "
                          "local when the output holds few windows (see README)")
    ray: bool = setting(False, help="search on Ray (RAY_ADDRESS, or a private local Ray) even a small output")

    def __post_init__(self) -> None:
        self._absolute_paths()
        engine.check_forced(self.local, self.ray)
        if not self.texts and not self.like:
            raise ConfigError("no query: give --text QUERY, --text-file FILE or --like AUDIO")
        if any(not t.strip() for t in self.texts):
            raise ConfigError("--text: a query is empty")
        if self.top < 1:
            raise ConfigError(f"--top must be at least 1, got {self.top}")
        if not math.isfinite(self.lam) or self.lam < 0:
            raise ConfigError(f"--lam must be a finite number >= 0, got {self.lam}")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise ConfigError(f"--min-score must be a finite number, got {self.min_score}")
        if self.level not in LEVELS:
            raise ConfigError(f"--level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.lam > 0 and self.texts and self.noise_phrases is not None and not self.noise_phrases:
            raise ConfigError("--noise-phrases: the file holds no phrase, and --lam needs at least one")
        if self.lam > 0 and not self.texts:
            log.warning("--lam applies to text queries only; --like queries are ranked by plain cosine")


    def _absolute_paths(self) -> None:
        """Every local path made absolute once, here; ``--out`` inside ``--embeddings`` refused (it could replace
        one of das's parts there)."""
        def put(name: str, value) -> None:
            object.__setattr__(self, name, value)

        put("embeddings", storage.absolute(self.embeddings))
        put("like", [storage.absolute(u) for u in self.like])
        put("checkpoint", storage.absolute_if_local(self.checkpoint))
        if self.out:
            put("out", storage.absolute(self.out))
            if storage.overlap(self.out, self.embeddings) in ("inside", "the same location as"):
                raise ConfigError(f"--out {self.out} is inside --embeddings {self.embeddings} (the matches could "
                                  f"replace das's own files there); write them outside {self.embeddings}")
        if self.tokenizer_dir:
            put("tokenizer_dir", storage.absolute(self.tokenizer_dir))


def check_embeddings(c: SearchConfig) -> RunManifest:
    """The manifest of ``c.embeddings``, after refusing embeddings made with another checkpoint."""
    from das_core.clap import checkpoint as ckpt

    mine = ckpt.fingerprint(ckpt.resolve(c.checkpoint))
    return open_embeddings(c.embeddings, mine, f"--checkpoint {c.checkpoint} is",
                           "das search; for rescore output, give OUT/run_id=ID",
                           remedy="queries from another model do not live in the same space; "
                                  "pass --checkpoint {made_with}")


def _level_source(level: str) -> tuple[str, list[str]]:
    """The folder a level ranks and the columns it reads there."""
    return (SEGMENTS_DIR, SEGMENT_COLUMNS) if level == SEGMENT else (FILES_DIR, FILE_COLUMNS)


def check_columns(store: OutputStore, listing: StoreListing, units: list[str], level: str) -> None:
    """Refuse, before any task, an output whose parts lack what ``level`` ranks (one part's schema is read)."""
    folder, columns = _level_source(level)
    if level == SEGMENT and store.embedding_source():
        columns = [c for c in columns if c != "embedding"]      # joined back from the label output
    parts = next((p for u in units if (p := listing.parts_of(u, folder))), None)
    if parts is None:
        return
    uri = store.path(folder, parts[0])
    have = set(pq.read_schema(io.BytesIO(storage.read_bytes(uri))).names)
    missing = [c for c in columns if c not in have]
    if missing:
        hint = ("it was written by a das without file embeddings: use --level segment, or relabel it"
                if level != SEGMENT and missing == ["embedding"] else "it is not a das label or rescore output")
        raise Refused(f"{uri} has no column {', '.join(missing)} (needed by --level {level}); {hint}")


def searchable_units(c: SearchConfig) -> tuple[StoreListing, list[str]]:
    """The listing and committed units of ``c.embeddings``, refused when there is none or they lack a column."""
    store = OutputStore(c.embeddings)
    listing = store.listing()
    units = listing.committed_units()
    if not units:
        raise Refused(f"{c.embeddings} has no committed unit yet: nothing to search")
    check_columns(store, listing, units, c.level)
    return listing, units


def embed_like(encoder, uri: str) -> np.ndarray:
    """The window embeddings of an audio file, decoded and encoded as ``das label`` does; ``(n, d)``."""
    from das_core.api import embed_file

    embedded = embed_file(encoder, uri, batch=LIKE_BATCH)
    if not len(embedded.embeddings):
        raise Refused(f"--like {uri}: no audio window could be decoded from it")
    return embedded.embeddings


def check_like_files(uris: Sequence[str]) -> None:
    """Refuse a ``--like`` file that is missing, unreadable or not audio, before the model is loaded: only its
    header is read."""
    from das_core.audio.decode import AudioDecodeError, AudioStream

    for uri in uris:
        try:
            with storage.open_input(uri) as f, AudioStream(f, uri):
                pass
        except AudioDecodeError as exc:
            raise Refused(f"--like {uri}: not audio das can decode ({exc.kind}: {exc.cause}); "
                          "give an audio file") from None
        except OSError as exc:
            cause = exc.strerror or str(exc)
            raise Refused(f"--like {uri}: cannot read it ({cause[:1].lower() + cause[1:]}); "
                          "give an existing audio file you can read") from None


def encode_queries(c: SearchConfig, label_settings: dict) -> Queries:
    """Every query as a unit vector, encoded once; ``label_settings``: the label run's (batch size, precision)."""
    from das_core.clap.encoder import ClapEncoder
    from das_core.scoring.prompts import DEFAULT_NOISE_PHRASES

    phrases = list(DEFAULT_NOISE_PHRASES if c.noise_phrases is None else c.noise_phrases)
    # the label run's batch shape and precision: a --like clip of the archive gets the embeddings das label gave it
    encoder = ClapEncoder.from_checkpoint(c.checkpoint, device=c.device,
                                          precision=label_settings.get("precision") or "fp32",
                                          tokenizer_dir=c.tokenizer_dir,
                                          max_batch_size=label_settings.get("batch_size") or LIKE_BATCH,
                                          batch_invariant=True)
    queries = Queries((), np.zeros((0, encoder.dim), np.float32), np.zeros((0, encoder.dim), np.float32), c.lam)
    if c.texts:
        queries = queries.concat(text_queries(encoder.embed_text, c.texts, phrases, c.lam))
    for uri in c.like:
        try:
            like = audio_query(uri, embed_like(encoder, uri))
        except ValueError as exc:          # silence: no direction to search along
            raise Refused(f"--like {exc}") from None
        queries = queries.concat(Queries(like.names, like.vectors, like.drift, c.lam))
    return queries


# ------------------------------------------------------------------ groups of units (one Ray task each)

def units_per_task(n_units: int, cpus: float) -> int:
    """Units one task ranks: enough tasks to keep every CPU busy (4 per CPU), no more, since each task costs
    Ray Data tens of milliseconds whatever it holds."""
    return max(1, math.ceil(n_units / max(1, int(4 * cpus))))


def unit_groups(units: list[str], listing: StoreListing, level: str, size: int) -> list[dict]:
    """Rows of ``size`` units each, with their part lists in the level's folder: what ``search_group`` reads."""
    folder = _level_source(level)[0]
    return [{"units": units[i:i + size], "parts": [listing.parts_of(u, folder) for u in units[i:i + size]]}
            for i in range(0, len(units), size)]


def search_group(row: dict, queries: Queries, *, embeddings: str, top: int, min_score: float | None,
                 level: str) -> pa.Table:
    """The task of one group of units (``row``: see ``unit_groups``): the group's best ``top`` rows per query
    (``HITS_SCHEMA``). Units are read one at a time; only their top rows are kept in between."""
    store = OutputStore(embeddings)
    folder, columns = _level_source(level)
    # a rescore run that references its label output's window embeddings: join them back unit by unit
    source = store.embedding_source() if level == SEGMENT else None
    src = OutputStore(source) if source else None
    src_listing = src.listing() if src else None
    own = [c for c in columns if c != "embedding"] + ["segment"] if src else columns
    out = []
    for unit, parts in zip(row["units"], row["parts"]):
        tables = [store.read_part(folder, name, own) for name in parts]
        if tables:
            table = pa.concat_tables(tables, promote_options="permissive")
            if src is not None:
                table = with_embeddings(table, src, src_listing, unit).select(columns)
            out.append(unit_hits(table, queries, top, min_score, level))
    # the top N of a union is the top N of its parts' top N: send the group's, not each unit's
    return merge_hits(out, queries.names, top) if out else HITS_SCHEMA.empty_table()


@dataclass
class SearchPlan:
    listing: StoreListing
    units: list[str]                 # the committed units searched
    queries: Queries
    start: float                     # time.monotonic() when query encoding began

    def task_settings(self, c: SearchConfig) -> dict:
        """The keyword arguments of ``search_group`` (the same for every group)."""
        return {"embeddings": c.embeddings, "top": c.top, "min_score": c.min_score, "level": c.level}


def plan_search(c: SearchConfig) -> SearchPlan:
    """Check the output searched (manifest, checkpoint, columns), then encode the queries; before any task."""
    check_like_files(c.like)
    manifest = check_embeddings(c)
    listing, units = searchable_units(c)
    start = time.monotonic()
    queries = encode_queries(c, manifest.settings)
    log.info("searching %d unit(s) of %s at %s level for %d query(ies)", len(units), c.embeddings, c.level,
             len(queries))
    return SearchPlan(listing, units, queries, start)


def finish_search(c: SearchConfig, p: SearchPlan, parts: Sequence[pa.Table]) -> pa.Table:
    """Merge the groups' hits into the ranking, print it, write it to ``c.out`` if given, and return it."""
    hits = merge_hits(parts, p.queries.names, c.top)
    print(format_hits(hits), flush=True)
    if c.out:
        write_hits(hits, c.out)
    print(summary_line(hits, len(p.queries), len(p.units), time.monotonic() - p.start, c.out), flush=True)
    return hits


def write_hits(hits: pa.Table, uri: str) -> None:
    buf = io.BytesIO()
    pq.write_table(hits, buf)
    storage.write_bytes_atomic(uri, buf.getvalue())


def summary_line(hits: pa.Table, n_queries: int, n_units: int, seconds: float, out: str | None) -> str:
    """The last line ``das search`` prints."""
    return (f"das search: {len(hits)} match(es) for {n_queries} quer{'y' if n_queries == 1 else 'ies'} over "
            f"{n_units} unit(s) in {seconds:.1f} s" + (f"; written to {out}" if out else ""))
