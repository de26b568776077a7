"""``das index``: build or refresh the nearest-neighbour index that ``das search`` uses, over a ``das label``
output's stored window (or file) embeddings. Arguments only; the work is ``das_core.index``'s (no Ray)."""

from __future__ import annotations

import argparse
import sys
import time

from das_core.index.build import build_index
from das_core.search.queries import LEVELS, SEGMENT
from jobs import common


def build_parser(prog: str = "das index") -> argparse.ArgumentParser:
    """The options of ``das index``."""
    parser = argparse.ArgumentParser(prog=prog, formatter_class=common.HelpFormatter, description=(
        "Build an approximate nearest-neighbour index (FAISS IVF, inner product) over the embeddings a `das label` "
        "output stores, in OUT/_index/<level>/, for `das search` to use. Run again after more units are "
        "committed (a --resume, a larger archive): it adds only their rows. Reads the committed units one at a "
        "time; runs in this process, on the CPU."))
    parser.add_argument("out", metavar="OUT", help="output folder or s3:// prefix of `das label` (or of a `das "
                        "rescore` run that copied its embeddings)")
    parser.add_argument("--level", default=SEGMENT, choices=LEVELS,
                        help="index the 10 s windows (segment) or whole files (file: their mean embedding)")
    parser.add_argument("--rebuild", action="store_true", help="build it anew instead of adding the units "
                        "committed since it was built")
    common.add_common_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Build or refresh the index of ``args.out``; prints one line saying what it did; 0."""
    started = time.monotonic()
    record, added, rebuilt = build_index(args.out, args.level, args.rebuild)
    what = (f"built ({rebuilt})" if rebuilt else
            f"refreshed: {len(added)} unit(s) added" if added else "already covers every committed unit")
    print(f"das index: {args.out} at --level {args.level}: {what}; {record.rows} row(s) of {len(record.units)} "
          f"unit(s), {record.parameters['factory']}, nprobe {record.parameters['nprobe']}, in "
          f"{time.monotonic() - started:.1f} s", flush=True)
    return 0


def main(argv: list[str] | None = None, prog: str = "das index") -> int:
    """``das index``: parse ``argv``, run, and return the exit status."""
    args = build_parser(prog).parse_args(argv)
    return common.run_main(prog, lambda: run(args), args)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.index"))
