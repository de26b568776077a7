"""``das search``: find the windows (or files) of a labelled archive closest to a text or an audio query.
Arguments and Ray wiring only (one task per group of committed units); the search is in ``das_core.search``."""

from __future__ import annotations

import argparse
import sys

import pyarrow as pa

from das_core import search
from das_core.search import DEFAULT_TOP, LEVELS, SEGMENT, SearchConfig, units_per_task
from jobs.common import add_common_options, check_output_file, init_ray, job_main, read_lines_from, worker_env


def build_parser(prog: str = "das search") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=(
        "Rank the windows (or files) of a `das label` output, or of a `das rescore` run folder, by cosine with "
        "text or audio queries, using the stored embeddings. Prints the best matches per query and optionally "
        "writes them to Parquet. Runs on the Ray cluster at RAY_ADDRESS, or a local one."))
    p.add_argument("--embeddings", required=True, metavar="URI", help="output folder or s3:// prefix of `das label`, "
                   "or a `das rescore` run folder (run_id=ID)")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="the CLAP checkpoint the embeddings were "
                   "made with (refused if it is another one)")
    p.add_argument("--text", action="append", default=[], metavar="QUERY", help="a text query, e.g. "
                   "'glass breaking at night' (repeatable)")
    p.add_argument("--text-file", metavar="FILE", help="text queries, one per line (local or s3://)")
    p.add_argument("--like", action="append", default=[], metavar="AUDIO", help="an audio file (local or s3://): "
                   "find what sounds like it (repeatable)")
    p.add_argument("--level", choices=LEVELS, default=SEGMENT, help="rank 10 s windows (segment) or whole files "
                   "(file: their mean embedding)")
    p.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="N", help="matches kept per query")
    p.add_argument("--min-score", type=float, metavar="X", help="drop matches scoring below X")
    p.add_argument("--lam", type=float, default=0.0, metavar="X", help="text queries: add X times the cosine with "
                   "the query's drift direction (DAS-style bonus; default 0, plain cosine)")
    p.add_argument("--noise-phrases", metavar="FILE", help="noise phrases of the drift direction, one per line "
                   "(default: das's 8 urban phrases)")
    p.add_argument("--out", metavar="URI", help="write the matches to this Parquet file (local or s3://)")
    p.add_argument("--tokenizer-dir", metavar="DIR", help="roberta-base tokenizer files (RoBERTa checkpoints)")
    p.add_argument("--device", default="cpu", help="where queries are encoded: cpu or cuda[:N] (default cpu)")
    add_common_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    texts = list(args.text) + (read_lines_from(args.text_file, "queries") if args.text_file else [])
    phrases = tuple(read_lines_from(args.noise_phrases, "noise phrases")) if args.noise_phrases else None
    return SearchConfig(embeddings=args.embeddings, checkpoint=args.checkpoint, texts=texts, like=list(args.like),
                        level=args.level, top=args.top, min_score=args.min_score, lam=args.lam,
                        noise_phrases=phrases, out=args.out, tokenizer_dir=args.tokenizer_dir, device=args.device)


def run_stages(units: list[str], listing, embeddings: str, queries: search.Queries, top: int,
               min_score: float | None, level: str, env: dict[str, str] | None = None):
    """One Ray task per group of committed units; streams each group's few hits to the driver."""
    import ray

    from jobs.pipeline import map_rows

    rows = search.unit_groups(units, listing, level, units_per_task(len(units), ray.cluster_resources().get("CPU", 1)))
    return map_rows(rows, search.search_group, queries, env=env, embeddings=embeddings, top=top,
                    min_score=min_score, level=level)


def run(c: SearchConfig) -> pa.Table:
    """Search ``c.embeddings``; returns the ranked matches (``HITS_SCHEMA``), printed and written to ``c.out``."""
    if c.out:
        check_output_file(c.out)
    p = search.plan_search(c)
    init_ray()
    parts = run_stages(p.units, p.listing, c.embeddings, p.queries, c.top, c.min_score, c.level, env=worker_env())
    return search.finish_search(c, p, list(parts))


def main(argv: list[str] | None = None, prog: str = "das search") -> int:
    return job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.search"))
