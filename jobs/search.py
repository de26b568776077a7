"""``das search``: find the windows (or files) of a labelled archive closest to a text or an audio query.

Input (``--embeddings``) is the output of ``das label`` or one ``das rescore``
run folder (``OUT/run_id=ID``): its committed units and ``_manifest.json``.
Queries are encoded once, on the driver: text with the checkpoint's text tower,
``--like`` audio with the same decoder and encoder as ``das label``. Each
committed unit is one Ray Data task that reads its embeddings and keeps its own
best ``--top`` rows per query; the driver merges those few rows
(``das_core.search``), prints the ranking and optionally writes it to Parquet.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from das_core import storage
from das_core.results import FILES_DIR, MANIFEST, SEGMENTS_DIR, OutputStore, StoreListing, with_embeddings
from das_core.search import (
    FILE_COLUMNS,
    HITS_SCHEMA,
    LEVELS,
    SEGMENT,
    SEGMENT_COLUMNS,
    Queries,
    merge_hits,
    unit_hits,
)
from jobs.common import (
    UsageError,
    add_common_options,
    check_output_file,
    init_ray,
    job_main,
    log,
    read_lines_from,
    worker_env,
)

DEFAULT_TOP = 10
LIKE_BATCH = 16          # windows per encoder call while embedding a --like file


@dataclass
class SearchConfig:
    embeddings: str
    checkpoint: str
    texts: list[str] = field(default_factory=list)
    like: list[str] = field(default_factory=list)
    level: str = SEGMENT
    top: int = DEFAULT_TOP
    min_score: float | None = None
    lam: float = 0.0
    noise_phrases: str | None = None      # file; default: das_core.prompts.DEFAULT_NOISE_PHRASES
    out: str | None = None
    tokenizer_dir: str | None = None
    device: str = "cpu"


def build_parser(prog: str = "das search") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=(
        "Rank the windows (or files) of a `das label` output, or of a `das rescore` run folder, by cosine with "
        "text or audio queries, using the stored embeddings. Prints the best matches per query and optionally "
        "writes them to Parquet. Runs on the Ray cluster at RAY_ADDRESS, or a local one."))
    p.add_argument("--embeddings", required=True, metavar="URI",
                   help="output folder or s3:// prefix of `das label`, or a `das rescore` run folder (run_id=ID)")
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="the CLAP checkpoint the embeddings were made with (refused if it is another one)")
    p.add_argument("--text", action="append", default=[], metavar="QUERY",
                   help="a text query, e.g. 'glass breaking at night' (repeatable)")
    p.add_argument("--text-file", metavar="FILE", help="text queries, one per line (local or s3://)")
    p.add_argument("--like", action="append", default=[], metavar="AUDIO",
                   help="an audio file (local or s3://): find what sounds like it (repeatable)")
    p.add_argument("--level", choices=LEVELS, default=SEGMENT,
                   help="rank 10 s windows (segment) or whole files (file: their mean embedding)")
    p.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="N", help="matches kept per query")
    p.add_argument("--min-score", type=float, metavar="X", help="drop matches scoring below X")
    p.add_argument("--lam", type=float, default=0.0, metavar="X",
                   help="text queries: add X times the cosine with the query's drift direction (DAS-style bonus; "
                        "default 0, plain cosine)")
    p.add_argument("--noise-phrases", metavar="FILE",
                   help="noise phrases of the drift direction, one per line (default: das's 8 urban phrases)")
    p.add_argument("--out", metavar="URI", help="write the matches to this Parquet file (local or s3://)")
    p.add_argument("--tokenizer-dir", metavar="DIR", help="roberta-base tokenizer files (RoBERTa checkpoints)")
    p.add_argument("--device", default="cpu", help="where queries are encoded: cpu or cuda[:N] (default cpu)")
    add_common_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    texts = list(args.text)
    if args.text_file:
        texts += read_lines_from(args.text_file, "queries")
    return SearchConfig(embeddings=args.embeddings, checkpoint=args.checkpoint, texts=texts, like=list(args.like),
                        level=args.level, top=args.top, min_score=args.min_score, lam=args.lam,
                        noise_phrases=args.noise_phrases, out=args.out, tokenizer_dir=args.tokenizer_dir,
                        device=args.device)


def check_config(c: SearchConfig) -> None:
    """Refuse bad arguments before touching storage or the model."""
    if not c.texts and not c.like:
        raise UsageError("no query: give --text QUERY, --text-file FILE or --like AUDIO")
    if any(not t.strip() for t in c.texts):
        raise UsageError("--text: a query is empty")
    if c.top < 1:
        raise UsageError(f"--top must be at least 1, got {c.top}")
    if not math.isfinite(c.lam) or c.lam < 0:
        raise UsageError(f"--lam must be a finite number >= 0, got {c.lam}")
    if c.min_score is not None and not math.isfinite(c.min_score):
        raise UsageError(f"--min-score must be a finite number, got {c.min_score}")
    if c.level not in LEVELS:
        raise UsageError(f"--level must be one of {', '.join(LEVELS)}, got {c.level!r}")
    if c.lam > 0 and not c.texts:
        log.warning("--lam applies to text queries only; --like queries are ranked by plain cosine")
    if c.out:
        check_output_file(c.out)


def check_embeddings(c: SearchConfig) -> dict:
    """The label manifest of ``c.embeddings``, after refusing embeddings made with another checkpoint."""
    from das_core import checkpoint as ckpt

    try:
        manifest = OutputStore(c.embeddings).read_manifest()
    except ValueError as exc:
        raise UsageError(f"{storage.join(c.embeddings, MANIFEST)} is not valid JSON ({exc})") from None
    if manifest is None:
        raise UsageError(f"{c.embeddings} has no {MANIFEST}: it is not the output of `das label` or a `das rescore` "
                         "run folder (for rescore output, give OUT/run_id=ID)")
    recorded = (manifest.get("settings") or {}).get("checkpoint_fingerprint")
    if not recorded:
        raise UsageError(f"{storage.join(c.embeddings, MANIFEST)} records no checkpoint fingerprint")
    mine = ckpt.fingerprint(ckpt.resolve(c.checkpoint))
    if mine != recorded:
        made_with = (manifest.get("checkpoint") or {}).get("uri") or "another checkpoint"
        raise UsageError(f"the embeddings in {c.embeddings} were made with checkpoint {made_with} ({recorded}), "
                         f"but --checkpoint {c.checkpoint} is {mine}: queries from another model do not live in the "
                         f"same space; pass --checkpoint {made_with}")
    return manifest


# ------------------------------------------------------------------ queries (driver)

def embed_like(encoder, uri: str) -> np.ndarray:
    """The window embeddings of an audio file, decoded and encoded as ``das label`` does; ``(n, d)``."""
    from das_core.api import embed_file

    embedded = embed_file(encoder, uri, batch=LIKE_BATCH)
    if not len(embedded.embeddings):
        raise UsageError(f"--like {uri}: no audio window could be decoded from it")
    return embedded.embeddings


def encode_queries(c: SearchConfig, label_settings: dict) -> Queries:
    """Every query as a unit vector, encoded once; ``label_settings``: the label run's (batch size, precision)."""
    from das_core.encoder import ClapEncoder
    from das_core.prompts import DEFAULT_NOISE_PHRASES
    from das_core.search import audio_query, text_queries

    phrases = (read_lines_from(c.noise_phrases, "noise phrases") if c.noise_phrases
               else list(DEFAULT_NOISE_PHRASES))
    if c.lam > 0 and c.texts and not phrases:
        raise UsageError(f"noise phrases file {c.noise_phrases} has no phrases")
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
            raise UsageError(f"--like {exc}") from None
        queries = queries.concat(Queries(like.names, like.vectors, like.drift, c.lam))
    return queries


# ------------------------------------------------------------------ per-unit ranking (Ray tasks)

def search_units(batch: pa.Table, embeddings: str, queries_box: list, top: int, min_score: float | None,
                 level: str) -> pa.Table:
    """Ray Data UDF: a group of units in (one row, its units' part lists), the group's best ``top`` rows per
    query out (``HITS_SCHEMA``). Units are read one at a time; only their top rows are kept in between."""
    import ray

    queries = ray.get(queries_box[0])
    store = OutputStore(embeddings)
    folder, columns = (SEGMENTS_DIR, SEGMENT_COLUMNS) if level == SEGMENT else (FILES_DIR, FILE_COLUMNS)
    # a rescore run that references its label output's window embeddings: join them back unit by unit
    source = store.embedding_source() if level == SEGMENT else None
    src = OutputStore(source) if source else None
    src_listing = src.listing() if src else None
    own = [c for c in columns if c != "embedding"] + ["segment"] if src else columns
    out = []
    for units, group in zip(batch.column("units").to_pylist(), batch.column("parts").to_pylist()):
        for unit, parts in zip(units, group):
            tables = [store.read_part(folder, name, own) for name in parts]
            if tables:
                table = pa.concat_tables(tables, promote_options="permissive")
                if src is not None:
                    table = with_embeddings(table, src, src_listing, unit).select(columns)
                out.append(unit_hits(table, queries, top, min_score, level))
    # the top N of a union is the top N of its parts' top N: send the group's, not each unit's
    return merge_hits(out, queries.names, top) if out else HITS_SCHEMA.empty_table()


def units_per_task(n_units: int, cpus: float) -> int:
    """Units one task ranks: enough tasks to keep every CPU busy (4 per CPU), no more, since each task costs
    Ray Data tens of milliseconds whatever it holds."""
    return max(1, math.ceil(n_units / max(1, int(4 * cpus))))


def run_stages(units: list[str], listing: StoreListing, embeddings: str, queries: Queries, top: int,
               min_score: float | None, level: str, env: dict[str, str] | None = None) -> Iterator[pa.Table]:
    """One Ray Data row (and task) per group of committed units; streams each group's few hits to the driver."""
    import ray
    import ray.data

    remote = {"runtime_env": {"env_vars": env}} if env else {}
    folder = SEGMENTS_DIR if level == SEGMENT else FILES_DIR
    size = units_per_task(len(units), ray.cluster_resources().get("CPU", 1))
    items = [{"units": units[i:i + size], "parts": [listing.parts_of(u, folder) for u in units[i:i + size]]}
             for i in range(0, len(units), size)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(search_units, fn_kwargs={"embeddings": embeddings, "queries_box": [ray.put(queries)],
                                                 "top": top, "min_score": min_score, "level": level},
                        batch_size=1, batch_format="pyarrow", num_cpus=1, **remote)
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def check_columns(store: OutputStore, listing: StoreListing, units: list[str], level: str) -> None:
    """Refuse, before any task, an output whose parts lack what ``level`` ranks (one part's schema is read)."""
    folder, columns = (SEGMENTS_DIR, SEGMENT_COLUMNS) if level == SEGMENT else (FILES_DIR, FILE_COLUMNS)
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
        raise UsageError(f"{uri} has no column {', '.join(missing)} (needed by --level {level}); {hint}")


def run(c: SearchConfig) -> pa.Table:
    """Search ``c.embeddings``; returns the ranked matches (``HITS_SCHEMA``), printed and written to ``c.out``."""
    from das_core.search import format_hits

    check_config(c)
    manifest = check_embeddings(c)
    listing = OutputStore(c.embeddings).listing()
    units = listing.committed_units()
    if not units:
        raise UsageError(f"{c.embeddings} has no committed unit yet: nothing to search")
    check_columns(OutputStore(c.embeddings), listing, units, c.level)
    start = time.monotonic()
    queries = encode_queries(c, manifest.get("settings") or {})
    log.info("searching %d unit(s) of %s at %s level for %d quer%s", len(units), c.embeddings, c.level,
             len(queries), "y" if len(queries) == 1 else "ies")
    init_ray()
    parts = list(run_stages(units, listing, c.embeddings, queries, c.top, c.min_score, c.level, env=worker_env()))
    hits = merge_hits(parts, queries.names, c.top)
    print(format_hits(hits), flush=True)
    if c.out:
        buf = io.BytesIO()
        pq.write_table(hits, buf)
        storage.write_bytes_atomic(c.out, buf.getvalue())
    print(f"das search: {len(hits)} match(es) for {len(queries)} quer{'y' if len(queries) == 1 else 'ies'} over "
          f"{len(units)} unit(s) in {time.monotonic() - start:.1f} s" + (f"; written to {c.out}" if c.out else ""),
          flush=True)
    return hits


def main(argv: list[str] | None = None, prog: str = "das search") -> int:
    return job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.search"))
