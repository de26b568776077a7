"""``das compact OUT``: rewrite an output's small parts into packs (``das_core.label.compact``); no Ray, no model."""

from __future__ import annotations

import argparse
import sys

from das_core.io import storage
from das_core.io.checks import check_output_folder
from das_core.label.compact import check_compactable, compact
from das_core.output.lease import Lease
from das_core.output.pack import PACK_ROWS
from das_core.runtime.interrupts import sigterm_as_interrupt
from jobs.common import add_common_options, job_main


def build_parser(prog: str = "das compact") -> argparse.ArgumentParser:
    """The options of ``das compact``: OUT, --pack-rows and the common ones."""
    parser = argparse.ArgumentParser(prog=prog, description=(
        "Pack the committed units of a das label output (or a das rescore run folder) that are not in a pack yet "
        "into files of at least --pack-rows window rows, the tail included: what das label does as it goes, for "
        "outputs written without it (older das, --pack-rows 0) or left with a staged tail. Each pack appears "
        "atomically, before the small parts it replaces are deleted: readers may read meanwhile. A run still "
        "writing OUT is refused; running it again does nothing."))
    parser.add_argument("out", metavar="OUT", help="output folder or s3:// prefix of das label, or a das rescore "
                        "run folder (run_id=ID)")
    parser.add_argument("--pack-rows", type=int, default=PACK_ROWS, metavar="N",
                        help="window rows a pack holds at least (the last one may hold fewer)")
    add_common_options(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    """Compact ``args.out`` under its lease; what was packed (``das_core.label.compact.compact``)."""
    from das_core.errors import RunRefused

    out = storage.absolute(args.out)
    if args.pack_rows < 1:
        raise RunRefused("--pack-rows must be at least 1 for das compact")
    check_output_folder(out, "OUT")
    manifest = check_compactable(out)           # before the lease: a folder that is not das's is left untouched
    # the lock das label takes on OUT; a rescore run folder is written under the lock of its parent OUT
    locked = out.rstrip("/").rsplit("/", 1)[0] if manifest.job == "rescore" else out
    with sigterm_as_interrupt(), Lease(locked, "das compact"):
        done = compact(out, args.pack_rows)
    if done["packs"]:
        print(f"das compact: packed {done['units']} unit(s) of {out} into {len(done['packs'])} pack(s)"
              + (f"; removed {done['removed']} part(s) left by an interrupted pack" if done["removed"] else ""),
              flush=True)
    else:
        print(f"das compact: nothing to pack in {out}: every committed unit is in a pack", flush=True)
    return done


def main(argv: list[str] | None = None, prog: str = "das compact") -> int:
    """``das compact``: parse ``argv``, compact, and return the exit status."""
    return job_main(argv, prog, build_parser, lambda args: args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.compact"))
