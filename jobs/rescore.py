"""``das rescore``: re-label the embeddings a ``das label`` run stored, with a drift cache; no audio, no model.
Arguments and Ray wiring (one task per committed unit, or a loop in this process for a small output:
``das_core.runtime.engine``) only; the rest, and the output, is ``das_core.rescore``."""

from __future__ import annotations

import argparse
import sys

from das_core.io.checks import check_output_folder
from das_core.output.lease import Lease
from das_core.report.picks import DEFAULT_EXCERPTS, MAX_EXCERPTS
from das_core.report.write import report_after_run
from das_core.rescore.config import RescoreConfig
from das_core.rescore.ledger import start_run
from das_core.rescore.plan import plan_rescore
from das_core.rescore.unit import rescore_unit
from das_core.runtime import engine
from das_core.runtime.interrupts import sigterm_as_interrupt
from jobs import common
from jobs.rows import row_mapper


def build_parser(prog: str = "das rescore") -> argparse.ArgumentParser:
    """The options of ``das rescore``: one per ``RescoreConfig`` setting, ``--no-report`` and the common ones."""
    parser = argparse.ArgumentParser(prog=prog, formatter_class=common.HelpFormatter, description=(
        "Re-label the window embeddings stored by `das label` with a drift cache (another label set, other noise "
        "phrases or lam, or the same cache), without decoding audio or loading the model. Writes "
        "OUT/run_id=ID/segments/, files/ and _manifest.json in the schema of das label. Runs on the Ray cluster "
        "at RAY_ADDRESS, or a local one; a small job runs "
        "in this process, without Ray (--local / --ray force either)."))
    common.add_settings(parser, RescoreConfig)
    parser.add_argument("--no-report", action="store_true",
                        help="do not write OUT/run_id=ID/report/ (report.md and figures, see `das report`) at the end")
    parser.add_argument("--excerpts", type=int, default=DEFAULT_EXCERPTS, metavar="N",
                        help=f"playable excerpts per label in the report's report.html (see `das report`; "
                        f"0..{MAX_EXCERPTS}, default {DEFAULT_EXCERPTS})")
    common.add_common_options(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> RescoreConfig:
    """The ``RescoreConfig`` of the parsed options."""
    return common.settings_from_args(RescoreConfig, args, report=not args.no_report, report_excerpts=args.excerpts)


def run(config: RescoreConfig) -> dict:
    """Re-score ``config.embeddings`` into ``config.out/run_id=ID``; returns the run's final manifest."""
    check_output_folder(config.out)
    with sigterm_as_interrupt(), Lease(config.out, "das rescore"):       # one writer per OUT at a time
        plan = plan_rescore(config)
        segments = plan.label.counts.get("segments")
        where, why = engine.choose(config.local, config.ray, engine.segments_too_many(segments))
        tally = start_run(plan)
        tally.this_run["engine"] = where
        try:
            if plan.todo:
                common.log.info("engine: %s (%s)", where, why)
                map_rows, env = row_mapper(where)
                tally.scoring_started()
                for table in map_rows(plan.unit_rows(), rescore_unit, plan.cache, **env, **plan.unit_settings()):
                    tally.add(table)
            manifest = tally.finish()
        except BaseException as exc:
            tally.abandon(exc)
            raise
        print(tally.summary(manifest), flush=True)
        if config.report:
            report_after_run(plan.run_uri, config.report_excerpts)
    tally.raise_if_failed()
    return manifest.to_dict()


def main(argv: list[str] | None = None, prog: str = "das rescore") -> int:
    """``das rescore``: parse ``argv``, run, and return the exit status."""
    return common.job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.rescore"))
