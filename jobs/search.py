"""``das search``: find the windows (or files) of a labelled archive closest to a text or an audio query.
Arguments and Ray wiring only (one task per group of committed units, or a loop in this process for a small
output: ``das_core.runtime.engine``); the search is in ``das_core.search.run``."""

from __future__ import annotations

import argparse
import sys

import pyarrow as pa

from das_core.io.checks import check_output_file
from das_core.output.manifest import RunManifest
from das_core.runtime import engine
from das_core.runtime import local as localrun
from das_core.scoring.prompts import read_lines_from
from das_core.search import run as search
from das_core.search.run import SearchConfig, units_per_task
from jobs import common


def build_parser(prog: str = "das search") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, formatter_class=common.HelpFormatter, description=(
        "Rank the windows (or files) of a `das label` output, or of a `das rescore` run folder, by cosine with "
        "text or audio queries, using the stored embeddings. Prints the best matches per query and optionally "
        "writes them to Parquet. Runs on the Ray cluster at RAY_ADDRESS, or a local one; a small job runs "
        "in this process, without Ray (--local / --ray force either)."))
    common.add_settings(p, SearchConfig)
    p.add_argument("--text-file", metavar="FILE", help="text queries, one per line (local or s3://)")
    p.add_argument("--noise-phrases", metavar="FILE", help="noise phrases of the drift direction, one per line "
                   "(default: das's 8 urban phrases)")
    common.add_common_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    texts = list(args.texts) + (read_lines_from(args.text_file, "queries") if args.text_file else [])
    phrases = tuple(read_lines_from(args.noise_phrases, "noise phrases")) if args.noise_phrases else None
    return common.settings_from_args(SearchConfig, args, texts=texts, noise_phrases=phrases)


def run_stages(units: list[str], listing, embeddings: str, queries: search.Queries, top: int,
               min_score: float | None, level: str, env: dict[str, str] | None = None, where: str = engine.RAY):
    """One Ray task (or, ``where`` local, one call here) per group of committed units; streams each group's few
    hits to the driver."""
    if where == engine.LOCAL:
        rows = search.unit_groups(units, listing, level, units_per_task(len(units), 1))
        return localrun.map_rows(rows, search.search_group, queries, embeddings=embeddings, top=top,
                                 min_score=min_score, level=level)
    import ray

    from jobs.pipeline import map_rows

    rows = search.unit_groups(units, listing, level, units_per_task(len(units), ray.cluster_resources().get("CPU", 1)))
    return map_rows(rows, search.search_group, queries, env=env, embeddings=embeddings, top=top,
                    min_score=min_score, level=level)


def searched_segments(embeddings: str) -> int | None:
    """The windows the output searched holds, as its manifest counts them (None if it does not say)."""
    manifest = RunManifest.read(embeddings)
    return manifest.counts.get("segments") if manifest is not None else None


def run(c: SearchConfig) -> pa.Table:
    """Search ``c.embeddings``; returns the ranked matches (``HITS_SCHEMA``), printed and written to ``c.out``."""
    if c.out:
        check_output_file(c.out)
    p = search.plan_search(c)
    where, why = engine.choose(c.local, c.ray, engine.segments_too_many(searched_segments(c.embeddings)))
    common.log.info("engine: %s (%s)", where, why)
    if where == engine.RAY:
        common.init_ray()
    parts = run_stages(p.units, p.listing, c.embeddings, p.queries, c.top, c.min_score, c.level,
                       env=common.worker_env(), where=where)
    return search.finish_search(c, p, list(parts))


def main(argv: list[str] | None = None, prog: str = "das search") -> int:
    return common.job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.search"))
