"""``das label``: label an audio archive with LAION-CLAP + DAS on Ray Data; Parquet out, nothing lost.

The command's loop, around library calls: build the config, plan (``das_core.label.plan``), take the lock on
OUT, start the ledger (``das_core.label.ledger``), run the stages (in this process, ``das_core.label.local``,
or on Ray, ``jobs.pipeline``) feeding each chunk's statistics to the ledger, committing each unit it
makes whole and packing each range of committed units it finds ready (``das_core.output.pack``), then finish
(manifest, summary, report).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from typing import Protocol

from das_core.errors import InputError, Refused
from das_core.io.checks import check_output_folder
from das_core.io.inputs import DEFAULT_EXTENSIONS, normalise_extensions
from das_core.label.config import COMPUTE, IO, LabelConfig
from das_core.label.ledger import LabelRun
from das_core.label.plan import LabelPlan, plan_run
from das_core.label.sink import write_refusal
from das_core.label.summary import print_dry_run
from das_core.output.lease import Lease
from das_core.report.picks import DEFAULT_EXCERPTS, MAX_EXCERPTS
from das_core.report.write import report_after_run
from das_core.runtime.engine import LOCAL
from das_core.runtime.interrupts import sigterm_as_interrupt
from jobs.common import HelpFormatter, add_common_options, add_settings, job_main, settings_from_args
from jobs.monitor import RunMonitor


def build_parser(prog: str = "das label") -> argparse.ArgumentParser:
    """The options of ``das label`` (``LabelConfig``'s settings, plus --extensions, --unit-mib, --no-report)."""
    parser = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter, description=(
        "Label every audio file under INPUT with zero-shot LAION-CLAP + Drift-Augmented Scoring. Files are "
        "cut into 10 s windows; each window and each file gets a DAS label and the plain zero-shot label, "
        "and window embeddings are stored for re-scoring. Writes OUT/segments/, OUT/files/ and "
        "OUT/_manifest.json. Runs on the Ray cluster at RAY_ADDRESS, or a local one; a small job runs in this "
        "process, without Ray (--local / --ray force either)."))
    groups: dict = {}
    add_settings(parser, LabelConfig, groups)
    groups[IO].add_argument("--extensions", default=",".join(e.lstrip(".") for e in DEFAULT_EXTENSIONS),
                            help="audio file extensions to pick up when listing a folder or prefix")
    groups[COMPUTE].add_argument("--unit-mib", type=float, default=LabelConfig.unit_bytes / 2**20,
                                 help="input bytes per work unit, where sizes are known")
    parser.add_argument("--no-report", action="store_true",
                   help="do not write OUT/report/ (report.md and figures, see `das report`) at the end")
    parser.add_argument("--excerpts", type=int, default=DEFAULT_EXCERPTS, metavar="N",
                        help=f"playable excerpts per label in the report's report.html (see `das report`; "
                        f"0..{MAX_EXCERPTS}, default {DEFAULT_EXCERPTS})")
    add_common_options(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> LabelConfig:
    """The ``LabelConfig`` of parsed options; a bad --extensions list is refused."""
    try:
        extensions = normalise_extensions(args.extensions)
    except InputError as exc:
        raise Refused(f"--extensions {args.extensions!r}: {exc}") from None
    return settings_from_args(LabelConfig, args, extensions=extensions, unit_bytes=int(args.unit_mib * 2**20),
                              report=not args.no_report, report_excerpts=args.excerpts)


class Stages(Protocol):
    """The label stages as the loop drives them: ``das_core.label.local.LocalStages`` in this process,
    ``jobs.pipeline.RayStages`` on Ray. Made before the progress line starts; entered once it runs."""

    starting: str               # the progress line's words until the work starts
    pending: str                # what a stall waits for
    first_line: str             # the progress line's words once the work starts, until the first chunk
    nodes: Callable[[], str] | None     # what the nodes offer (free/total), for a stall's warning
    committed: int              # units committed by this invocation so far

    def __enter__(self) -> Stages:
        """Start what the stages need (Ray, the encoder's threads)."""

    def __exit__(self, *exc) -> None:
        """Release it."""

    def chunk_stats(self) -> Iterator[dict]:
        """Run the stages over the units to do; each chunk's statistics dict (``das_core.label.sink.STATS_SCHEMA``)."""

    def commit(self, unit: tuple[str, list[int]]) -> None:
        """Commit a whole unit (its id and the chunks that wrote pieces)."""

    def flush(self) -> None:
        """Wait until every unit handed to ``commit`` is committed."""

    def newly_committed(self) -> list[str]:
        """The units whose commit finished since the last call."""

    def pack(self, units: list[str]) -> None:
        """Pack the committed, consecutive ``units`` (``das_core.output.pack.pack_units``), now or in a task."""

    def flush_packs(self) -> None:
        """Wait for every pack asked for."""


def run(config: LabelConfig) -> dict:
    """Label ``config.input`` into ``config.out``; the final manifest (with --dry-run, the plan's summary with
    ``dry_run``). Refused (exit 2) before any work where the settings or OUT do not allow the run. A worker's
    disk-full or permission error ends the run as one ``RunFailed`` that says what is kept; any other end is
    recorded in the manifest (``LabelRun.abandon``) before it is raised."""
    check_output_folder(config.out)
    if config.dry_run:                    # no Ray import, no model
        return print_dry_run(plan_run(config))
    command = "das label" + (" --resume" if config.resume else " --overwrite" if config.overwrite else "")
    with sigterm_as_interrupt(), Lease(config.out, command) as lease:
        ledger = LabelRun(plan_run(config), run_id=lease.run_id)
        try:
            if not ledger.start():
                return ledger.plan.previous.to_dict()
            if len(ledger.plan.todo):
                label_units(ledger, stages_for(ledger.plan, ledger.engine))
        except BaseException as exc:
            refusal = write_refusal(exc, config.out) if isinstance(exc, Exception) else None
            ledger.abandon(refusal or exc)
            if refusal is None:
                raise
            raise refusal from None
        manifest = ledger.finish()
        if config.report:
            report_after_run(config.out, config.report_excerpts)
    if ledger.failure:
        raise ledger.failure
    return manifest


def stages_for(plan: LabelPlan, engine: str) -> Stages:
    """The stages of ``plan`` on ``engine`` (Ray is imported only for Ray)."""
    if engine == LOCAL:
        from das_core.label.local import LocalStages

        return LocalStages(plan)
    from jobs.pipeline import RayStages

    return RayStages(plan)


def label_units(ledger: LabelRun, stages: Stages) -> None:
    """Run ``stages`` over the units to do: each chunk's statistics to ``ledger``, each unit they make whole
    committed, until the end or an early stop (the error budget); the progress line and the stall watchdog
    watch the loop (a stall ends it as ``RunFailed``)."""
    monitor = RunMonitor(ledger, stages.starting, stages.pending, stages.nodes)
    try:
        with monitor, stages:
            try:
                monitor.started(lambda: stages.committed, stages.first_line)
                for stats in stages.chunk_stats():
                    monitor.check()
                    whole = ledger.observe(stats)
                    monitor.beat()
                    if whole:
                        stages.commit(whole)
                    pack_ready(ledger, stages)
                    if ledger.aborted:
                        break
                stages.flush()
                pack_ready(ledger, stages, final=ledger.aborted is None)
                stages.flush_packs()
                monitor.check()
            finally:
                monitor.stop()          # the stages' clean-up (Ray's shutdown) is never interrupted
    except BaseException as exc:
        stalled = monitor.stall_behind(exc)
        if stalled is not None:
            raise stalled from None
        raise
    ledger.check_whole()


def pack_ready(ledger: LabelRun, stages: Stages, final: bool = False) -> None:
    """Hand the units committed since the last call to the ledger and pack each range it finds ready; with
    ``final`` (every unit of the run committed), the tail too."""
    for units in ledger.packs_ready(stages.newly_committed(), final):
        stages.pack(units)


def main(argv: list[str] | None = None, prog: str = "das label") -> int:
    """``das label`` with ``argv``; the exit code (0, 1 failed, 2 refused)."""
    return job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.label"))
