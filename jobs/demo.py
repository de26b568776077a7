"""``das demo`` / ``make demo``: generate a small archive and label it end to end with ``das label``.

The example and its checkpoint: ``das_core.demo``.
"""

from __future__ import annotations

import argparse
import os
import sys

from jobs.common import add_common_options, run_main


def build_parser(prog: str = "das demo") -> argparse.ArgumentParser:
    """The options of ``das demo``: ``--out`` and the common ones."""
    parser = argparse.ArgumentParser(prog=prog, description="Generate a small example archive and label it with "
                                "das label (build-cache included). Safe to rerun: the output is replaced.")
    parser.add_argument("--out", default="demo-output", help="working folder for the example, cache and results")
    add_common_options(parser)
    return parser


def demo(out: str) -> int:
    """Generate the example under ``out`` (audio, drift cache, checkpoint), label it into ``out/labels``
    (replacing what is there), print how to read the results back; 0."""
    from das_core.demo import prepare_demo
    from das_core.label.config import LabelConfig
    from jobs.label import run

    out = os.path.abspath(out)
    audio_dir, cache_uri, checkpoint = prepare_demo(out)
    results = os.path.join(out, "labels")
    run(LabelConfig(input=audio_dir, cache=cache_uri, checkpoint=checkpoint, out=results, overwrite=True,
                    max_error_fraction=0.5))
    print(f"\nRead the results back with pyarrow:\n"
          f"  python -c \"import pyarrow.parquet as pq; "
          f"print(pq.read_table('{results}/files').to_pandas()[['path','status','label','score','zs_label']])\"")
    return 0


def main(argv: list[str] | None = None, prog: str = "das demo") -> int:
    """``das demo``: parse ``argv`` and run ``demo`` under das's error reporting; the exit status."""
    args = build_parser(prog).parse_args(argv)
    return run_main(prog, lambda: demo(args.out), args)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.demo"))
