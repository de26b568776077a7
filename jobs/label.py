"""``das label``: label an audio archive with LAION-CLAP + DAS on Ray Data; Parquet out, nothing lost.

The run is ``das_core.label.run`` (plan, counts, manifest) driven through the Ray
pipeline (``jobs.pipeline``), or in this process for a small job (``das_core.runtime``).
"""

from __future__ import annotations

import argparse
import sys

from das_core.errors import InputError, Refused
from das_core.io.checks import check_output_folder
from das_core.io.inputs import DEFAULT_EXTENSIONS, normalise_extensions
from das_core.label import run as labelrun
from das_core.label.run import (  # noqa: F401
    COMPUTE,
    IO,
    RESUME_KEYS,
    LabelConfig,
    LabelRun,
    plan_run,
    print_dry_run,
)
from das_core.runtime.engine import LOCAL
from jobs.common import HelpFormatter, add_common_options, add_settings, job_main, settings_from_args


def build_parser(prog: str = "das label") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter, description=(
        "Label every audio file under INPUT with zero-shot LAION-CLAP + Drift-Augmented Scoring. Files are "
        "cut into 10 s windows; each window and each file gets a DAS label and the plain zero-shot label, "
        "and window embeddings are stored for re-scoring. Writes OUT/segments/, OUT/files/ and "
        "OUT/_manifest.json. Runs on the Ray cluster at RAY_ADDRESS, or a local one; a small job runs in this "
        "process, without Ray (--local / --ray force either)."))
    groups: dict = {}
    add_settings(p, LabelConfig, groups)
    groups[IO].add_argument("--extensions", default=",".join(e.lstrip(".") for e in DEFAULT_EXTENSIONS),
                            help="audio file extensions to pick up when listing a folder or prefix")
    groups[COMPUTE].add_argument("--unit-mib", type=float, default=LabelConfig.unit_bytes / 2**20,
                                 help="input bytes per work unit, where sizes are known")
    p.add_argument("--no-report", action="store_true",
                   help="do not write OUT/report/ (report.md and figures, see `das report`) at the end")
    add_common_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> LabelConfig:
    try:
        extensions = normalise_extensions(args.extensions)
    except InputError as exc:
        raise Refused(f"--extensions {args.extensions!r}: {exc}") from None
    return settings_from_args(LabelConfig, args, extensions=extensions, unit_bytes=int(args.unit_mib * 2**20),
                              report=not args.no_report)


def run(c: LabelConfig) -> dict:
    """Label ``c.input`` into ``c.out``; the final manifest (the plan's summary with ``dry_run``)."""
    if c.dry_run:                    # no Ray import, no model
        check_output_folder(c.out)
        return print_dry_run(plan_run(c))
    return labelrun.run_label(c, run_units)


def run_units(run: LabelRun) -> None:
    """The units to do, in this process or on Ray, as ``run.engine`` says (Ray is imported only for Ray)."""
    if run.engine == LOCAL:
        from das_core.runtime.local import run_units as run_here

        run_here(run)
        return
    from jobs.pipeline import run_units_on_ray

    run_units_on_ray(run)


def main(argv: list[str] | None = None, prog: str = "das label") -> int:
    return job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.label"))
