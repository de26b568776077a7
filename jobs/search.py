"""``das search``: find the windows (or files) of a labelled archive closest to a text or an audio query.
Arguments and Ray wiring only (one task per group of committed units, or a loop in this process for a small
output: ``das_core.runtime.engine``); the search is in ``das_core.search``."""

from __future__ import annotations

import argparse
import sys

import pyarrow as pa

from das_core.index.lookup import index_hits, open_for_search
from das_core.io.checks import check_output_file
from das_core.output.manifest import RunManifest
from das_core.runtime import engine
from das_core.scoring.prompts import read_lines_from
from das_core.search.config import SearchConfig
from das_core.search.plan import plan_search, unit_groups, units_per_task
from das_core.search.results import finish_search
from das_core.search.task import search_group
from jobs import common
from jobs.rows import row_mapper


def build_parser(prog: str = "das search") -> argparse.ArgumentParser:
    """The options of ``das search``: one per ``SearchConfig`` setting, the query files and the common ones."""
    parser = argparse.ArgumentParser(prog=prog, formatter_class=common.HelpFormatter, description=(
        "Rank the windows (or files) of a `das label` output, or of a `das rescore` run folder, by cosine with "
        "text or audio queries, using the stored embeddings. Prints the best matches per query and optionally "
        "writes them to Parquet. Runs on the Ray cluster at RAY_ADDRESS, or a local one; a small job runs "
        "in this process, without Ray (--local / --ray force either)."))
    common.add_settings(parser, SearchConfig)
    parser.add_argument("--text-file", metavar="FILE", help="text queries, one per line (local or s3://)")
    parser.add_argument("--noise-phrases", metavar="FILE", help="noise phrases of the drift direction, one per line "
                        "(default: das's 8 urban phrases)")
    common.add_common_options(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    """The ``SearchConfig`` of the parsed options, with the queries of ``--text-file`` and ``--noise-phrases``."""
    texts = list(args.texts) + (read_lines_from(args.text_file, "queries") if args.text_file else [])
    phrases = tuple(read_lines_from(args.noise_phrases, "noise phrases")) if args.noise_phrases else None
    return common.settings_from_args(SearchConfig, args, texts=texts, noise_phrases=phrases)


def searched_segments(embeddings: str) -> int | None:
    """The windows the output searched holds, as its manifest counts them (None if it does not say)."""
    manifest = RunManifest.read(embeddings)
    return manifest.counts.get("segments") if manifest is not None else None


def run(config: SearchConfig) -> pa.Table:
    """Search ``config.embeddings``: through its index where ``das index`` built one for the level (and not
    ``--exact``), plus one task (or, local, one call here) per group of the committed units it does not cover
    (all of them without an index), each sending its few hits to the driver; returns the ranked matches
    (``HITS_SCHEMA``), printed and written to ``config.out``."""
    if config.out:
        check_output_file(config.out)
    plan = plan_search(config)
    opened = None if config.exact else open_for_search(config.embeddings, config.level, plan.units)
    parts, scanned = [], plan.units
    if opened is not None:
        common.log.info("index: %s over %d row(s) (--exact for the exact scan)",
                        opened.record.parameters["factory"], opened.record.rows)
        parts.append(index_hits(opened, plan.queries, config.top, config.min_score))
        scanned = opened.uncovered
    if scanned:
        where, why = engine.choose(config.local, config.ray,
                                   engine.segments_too_many(scanned_segments(config.embeddings, opened)))
        common.log.info("engine: %s (%s)", where, why)
        map_rows, env = row_mapper(where)
        groups = unit_groups(scanned, plan.listing, config.level, units_per_task(len(scanned), cluster_cpus(where)))
        parts += list(map_rows(groups, search_group, plan.queries, **env, **plan.task_settings()))
    return finish_search(plan, parts)


def scanned_segments(embeddings: str, opened) -> int | None:
    """The windows the exact scan ranks: all the output's, less those the index covers (None if unknown)."""
    total = searched_segments(embeddings)
    return None if total is None else max(0, total - (opened.record.rows if opened is not None else 0))


def cluster_cpus(where: str) -> float:
    """The CPUs the tasks share: one in this process, the Ray cluster's otherwise."""
    if where == engine.LOCAL:
        return 1
    import ray

    return ray.cluster_resources().get("CPU", 1)


def main(argv: list[str] | None = None, prog: str = "das search") -> int:
    """``das search``: parse ``argv``, run, and return the exit status."""
    return common.job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.search"))
