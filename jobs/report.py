"""``das report OUT``: a Markdown report with figures of a ``das label`` output or a ``das rescore`` run folder.

Writes ``OUT/report/report.md`` and its PNG figures (``das_core.report``): no Ray, no model."""

from __future__ import annotations

import argparse
import sys

from das_core.io import storage
from das_core.output.manifest import RunManifest
from das_core.report.picks import DEFAULT_EXCERPTS, MAX_EXCERPTS, check_excerpts
from das_core.report.write import write_report
from jobs.common import add_common_options, job_main


def build_parser(prog: str = "das report") -> argparse.ArgumentParser:
    """The options of ``das report``: OUT, --excerpts and the common ones."""
    parser = argparse.ArgumentParser(prog=prog, description=(
        "Write OUT/report/report.md with PNG figures: label distribution, DAS against plain zero-shot, score "
        "histograms, errors by kind, durations, throughput of each run, and the top label along time of the "
        "longest files; and OUT/report/report.html, the same with playable excerpts (OUT/report/excerpts/) of the "
        "best windows of the most frequent labels and clickable timelines. OUT is the output of `das label` or a "
        "`das rescore` run folder (run_id=ID), local or s3://."))
    parser.add_argument("out", metavar="OUT",
                        help="output folder or s3:// prefix of das label, or a das rescore run folder")
    parser.add_argument("--excerpts", type=int, default=DEFAULT_EXCERPTS, metavar="N",
                        help=f"playable excerpts per label in report.html (the N highest-scoring windows of each of "
                        f"the most frequent labels; 0..{MAX_EXCERPTS}, 0 writes none; default {DEFAULT_EXCERPTS}, "
                        "about 31 KB each)")
    add_common_options(parser)
    return parser


def require_output(out: str) -> None:
    """Refuse a folder that is not a das output, saying what was given and what to give instead."""
    from das_core.errors import ManifestError
    from das_core.io import storage
    from das_core.output.manifest import MANIFEST
    from das_core.rescore.config import RUN_PREFIX
    from das_core.rescore.plan import list_runs

    if RunManifest.read(out) is not None:
        return
    runs = list_runs(out)
    if runs:
        example = storage.join(out, RUN_PREFIX + str(runs[-1].get("run_id")))
        raise ManifestError(f"{out} holds das rescore runs, not one run (it has no {MANIFEST} of its own); give one "
                            f"run folder, e.g. das report {example}")
    what = "does not exist" if not storage.exists(out) else f"is not a das label or das rescore output (no {MANIFEST})"
    raise ManifestError(f"{out} {what}; give the --out folder of a das label run, or a das rescore run folder "
                        f"OUT/{RUN_PREFIX}ID")


def run(out: str, excerpts: int = DEFAULT_EXCERPTS) -> str:
    """Write the report of ``out`` with ``excerpts`` excerpts per label; returns the URI of report.md."""
    check_excerpts(excerpts)
    out = storage.absolute(out)
    require_output(out)
    target = write_report(out, excerpts)
    print(f"das report: written to {target} (and report.html beside it, to listen to)", flush=True)
    return target


def main(argv: list[str] | None = None, prog: str = "das report") -> int:
    """``das report``: parse ``argv``, write the report, and return the exit status."""
    return job_main(argv, prog, build_parser, lambda args: (args.out, args.excerpts), lambda a: run(*a))


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.report"))
