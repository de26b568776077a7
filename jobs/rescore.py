"""``das rescore``: re-label the embeddings a ``das label`` run stored, with a drift cache; no audio, no model.

Arguments and Ray wiring only: one Ray task per committed label unit runs ``das_core.rescoring.rescore_unit``;
the plan, watermark, manifest and summary are ``das_core.rescoring``'s (its docstring describes the output).
"""

from __future__ import annotations

import argparse
import sys

from das_core.report import report_after_run
from das_core.rescoring import RescoreConfig, plan_rescore, rescore_unit, start_run
from jobs.common import add_common_options, init_ray, job_main, worker_env


def build_parser(prog: str = "das rescore") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=(
        "Re-label the window embeddings stored by `das label` with a drift cache (another label set, other noise "
        "phrases or lam, or the same cache), without decoding audio or loading the model. Writes "
        "OUT/run_id=ID/segments/, files/ and _manifest.json in the schema of das label. Runs on the Ray cluster "
        "at RAY_ADDRESS, or a local one."))
    p.add_argument("--embeddings", required=True, metavar="URI",
                   help="output folder or s3:// prefix of a `das label` run (its segments/, files/, _manifest.json)")
    p.add_argument("--cache", required=True, metavar="URI",
                   help="drift cache (`das build-cache`) built with the checkpoint the embeddings were made with")
    p.add_argument("--out", required=True, metavar="URI",
                   help="folder or s3:// prefix that holds one run_id=ID/ folder per rescore run")
    p.add_argument("--run-id", metavar="ID",
                   help="name of this run's folder, OUT/run_id=ID/ (letters, digits, '.', '_', '-'); "
                        "default: today's UTC date, YYYY-MM-DD")
    p.add_argument("--since-last-run", action="store_true",
                   help="score only the rows the label output gained since the last complete rescore run of the "
                        "same --embeddings under OUT (its manifest's watermark); everything when there is none")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="classes kept per window and per file (default: the label run's --top-k)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT/run_id=ID/ when it already holds a run (otherwise refused)")
    p.add_argument("--copy-embeddings", action="store_true",
                   help="write the window embeddings into this run's segments/ too (default: the run references "
                        "the label output's, which das readers follow)")
    p.add_argument("--no-report", action="store_true",
                   help="do not write OUT/run_id=ID/report/ (report.md and figures, see `das report`) at the end")
    add_common_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> RescoreConfig:
    return RescoreConfig(embeddings=args.embeddings, cache=args.cache, out=args.out, run_id=args.run_id,
                         since_last_run=args.since_last_run, top_k=args.top_k, overwrite=args.overwrite,
                         copy_embeddings=args.copy_embeddings, report=not args.no_report)


def run(c: RescoreConfig) -> dict:
    """Re-score ``c.embeddings`` into ``c.out/run_id=ID``; returns the run's final manifest."""
    from jobs.pipeline import map_rows

    p = plan_rescore(c)
    tally = start_run(p)
    if p.todo:
        init_ray()
        tally.scoring_started()
        for table in map_rows(p.unit_rows(), rescore_unit, p.cache, env=worker_env(), **p.unit_settings()):
            tally.add(table)
    manifest = tally.finish()
    print(tally.summary(manifest), flush=True)
    if c.report:
        report_after_run(p.run_uri)
    tally.raise_if_failed()
    return manifest.to_dict()


def main(argv: list[str] | None = None, prog: str = "das rescore") -> int:
    return job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.rescore"))
