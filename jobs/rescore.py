"""``das rescore``: re-label the embeddings a ``das label`` run stored, with a drift cache; no audio, no model.
Arguments and Ray wiring (one task per committed unit, or a loop in this process for a small output:
``das_core.runtime.engine``) only; the rest, and the output, is ``das_core.rescore.run``."""

from __future__ import annotations

import argparse
import sys

from das_core.io.checks import check_output_folder
from das_core.output.lease import Lease, sigterm_as_interrupt
from das_core.report.run import report_after_run
from das_core.rescore.run import RescoreConfig, plan_rescore, rescore_unit, start_run
from das_core.runtime import engine
from das_core.runtime import local as localrun
from jobs import common


def build_parser(prog: str = "das rescore") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, formatter_class=common.HelpFormatter, description=(
        "Re-label the window embeddings stored by `das label` with a drift cache (another label set, other noise "
        "phrases or lam, or the same cache), without decoding audio or loading the model. Writes "
        "OUT/run_id=ID/segments/, files/ and _manifest.json in the schema of das label. Runs on the Ray cluster "
        "at RAY_ADDRESS, or a local one; a small job runs "
        "in this process, without Ray (--local / --ray force either)."))
    common.add_settings(p, RescoreConfig)
    p.add_argument("--no-report", action="store_true",
                   help="do not write OUT/run_id=ID/report/ (report.md and figures, see `das report`) at the end")
    common.add_common_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> RescoreConfig:
    return common.settings_from_args(RescoreConfig, args, report=not args.no_report)


def run(c: RescoreConfig) -> dict:
    """Re-score ``c.embeddings`` into ``c.out/run_id=ID``; returns the run's final manifest."""
    check_output_folder(c.out)
    with sigterm_as_interrupt(), Lease(c.out, "das rescore"):       # one writer per OUT at a time
        p = plan_rescore(c)
        where, why = engine.choose(c.local, c.ray, engine.segments_too_many(p.label.counts.get("segments")))
        tally = start_run(p)
        tally.this_run["engine"] = where
        try:
            if p.todo:
                common.log.info("engine: %s (%s)", where, why)
                if where == engine.LOCAL:
                    map_rows, env = localrun.map_rows, {}
                else:
                    from jobs.pipeline import map_rows

                    common.init_ray()
                    env = {"env": common.worker_env()}
                tally.scoring_started()
                for table in map_rows(p.unit_rows(), rescore_unit, p.cache, **env, **p.unit_settings()):
                    tally.add(table)
            manifest = tally.finish()
        except BaseException as exc:
            tally.abandon(exc)
            raise
        print(tally.summary(manifest), flush=True)
        if c.report:
            report_after_run(p.run_uri)
    tally.raise_if_failed()
    return manifest.to_dict()


def main(argv: list[str] | None = None, prog: str = "das rescore") -> int:
    return common.job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.rescore"))
